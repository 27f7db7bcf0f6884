"""RNNsearch (Bahdanau et al. 2014): bi-GRU encoder, additive attention, on number words.

    python -m train.translate --config=train/configs/rnn_bahdanau.py --workdir=runs/bahdanau
"""

import ml_collections
from ml_collections.config_dict import placeholder  # a None default that --config.<field> can set

from train.configs import base


def get_config() -> ml_collections.ConfigDict:
    """Bahdanau attention, scaled down for CPU."""
    config = base.get_base_config()

    config.model = ml_collections.ConfigDict()
    config.model.family = "rnn"  # jaxattn.models.RNNSeq2Seq / RNNConfig
    config.model.embed_dim = 128  # E, token embedding size
    config.model.hidden_size = 128  # encoder state size per direction
    config.model.num_layers = 1  # stacked RNN layers (encoder and decoder)
    config.model.cell = "gru"  # "gru" as in the paper, or "lstm"
    config.model.bidirectional = True  # bidirectional encoder (sec. 3.2)
    config.model.attention = "bahdanau"  # additive attention from s_{t-1} (eq. 5-6)
    config.model.score = "general"  # unused with Bahdanau attention
    config.model.attention_dim = placeholder(int)  # A, additive score size; None = decoder size
    config.model.decoder_hidden_size = 256  # decoder state size
    config.model.dropout_rate = 0.1  # dropout on embeddings, between layers, before output

    config.data.dataset = "number_words/medium"  # English -> German number words
    config.data.source_lang = "en"
    config.data.target_lang = "de"
    config.data.vocab_size = 256
    config.data.max_source_length = 32
    config.data.max_target_length = 32
    config.data.bucket_lengths = (16, 24, 32)
    config.data.tokens_per_batch = 2048

    config.num_train_steps = 3000
    config.schedule = "constant"  # warmup, then constant: the RNN papers' setting (Adam)
    config.learning_rate = 2e-3
    config.warmup_steps = 100
    config.label_smoothing = 0.0
    config.scheduled_sampling.kind = "none"  # "linear" / "inverse_sigmoid" (Bengio et al. 2015)
    config.decode.max_length = 40
    return config
