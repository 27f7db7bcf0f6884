"""Luong et al. 2015 global attention with the location score (eq. 8), on number words.

a_t = softmax(W_a h_t): the alignment comes from the decoder state alone, never
from what the source words are, so the model must learn where to look from the
position in the output (a weak baseline for the content-based scores).

    python -m train.translate --config=train/configs/rnn_luong_location.py --workdir=runs/location
"""

import ml_collections

from train.configs import rnn_luong


def get_config() -> ml_collections.ConfigDict:
    """The Luong config of rnn_luong.py with the location score."""
    config = rnn_luong.get_config()
    config.model.score = "location"  # a_t = softmax(W_a h_t) (eq. 8)
    # L: W_a has one column per source position, so it must cover the longest source the
    # data pipeline lets through (longer sources raise); a reference follows --config.data.*.
    config.model.max_source_length = config.data.get_ref("max_source_length")
    return config
