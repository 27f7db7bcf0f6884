"""Luong et al. 2015 global attention (general score, input feeding) on number words.

    python -m train.translate --config=train/configs/rnn_luong.py --workdir=runs/luong
"""

import ml_collections
from ml_collections.config_dict import placeholder  # a None default that --config.<field> can set

from train.configs import rnn_bahdanau


def get_config() -> ml_collections.ConfigDict:
    """Stacked LSTM with Luong attention, scaled down for CPU."""
    config = rnn_bahdanau.get_config()
    config.model.cell = "lstm"  # the paper's LSTM
    config.model.num_layers = 2  # stacked layers (4 in the paper)
    config.model.bidirectional = False  # unidirectional encoder, as in the paper
    config.model.hidden_size = 256  # encoder state size
    config.model.decoder_hidden_size = placeholder(int)  # None = encoder output size
    config.model.attention = "luong"  # global attention from h_t, input feeding (sec. 3.1, 3.3)
    config.model.score = "general"  # "dot", "general" or "concat" (eq. 8)
    return config
