"""Default experiment: a small Transformer on English -> German number words, on CPU.

Runs end to end on a laptop CPU in minutes: builds the number-words data,
trains a SentencePiece vocabulary, trains, evaluates, decodes, plots attention.

    python -m train.translate                                   # this config, runs/default
    python -m train.translate --config=train/configs/transformer.py --workdir=runs/tf \
        --config.num_train_steps=2000 --config.model.emb_dim=256
"""

import ml_collections
from ml_collections.config_dict import placeholder  # a None default that --config.<field> can set

from train.configs import base


def get_config() -> ml_collections.ConfigDict:
    """The default config (Vaswani et al. 2017, scaled down)."""
    config = base.get_base_config()

    config.model = ml_collections.ConfigDict()
    config.model.family = "transformer"  # jaxattn.models.Transformer / TransformerConfig
    config.model.emb_dim = 128  # D, model width
    config.model.num_heads = 4  # N, attention heads (must divide D)
    config.model.num_kv_heads = placeholder(int)  # K < N: grouped-query attention; None = N
    config.model.num_encoder_layers = 3  # encoder layers
    config.model.num_decoder_layers = 3  # decoder layers
    config.model.mlp_dim = 256  # F, feed-forward hidden size
    config.model.max_len = 256  # longest position of learned positions (the other schemes have no bound)
    config.model.positional = "sinusoidal"  # jaxattn.models.POSITIONS: sinusoidal (sec. 3.5), learned, alibi, t5, rotary
    config.model.norm = "pre"  # "pre" LayerNorm trains faster at small scale; "post" = paper
    config.model.dropout_rate = 0.1  # residual/embedding dropout P_drop
    config.model.attention_dropout_rate = 0.0  # dropout on attention weights
    config.model.share_embeddings = True  # one table for source and target (shared vocab)
    config.model.tie_output = True  # output projection = target embedding^T (sec. 3.4)
    config.model.attention_implementation = placeholder(str)  # None = auto; "xla", "cudnn", "chunked", ...

    config.data.dataset = "number_words/medium"  # 30k / 1k / 1k pairs, numbers below 10^5
    config.data.source_lang = "en"
    config.data.target_lang = "de"
    config.data.vocab_size = 256  # small subword vocabulary, trained in seconds
    config.data.max_source_length = 32
    config.data.max_target_length = 32
    config.data.bucket_lengths = (16, 24, 32)  # few shapes = few compilations
    config.data.tokens_per_batch = 2048  # rows = 2048 // bucket length
    config.data.eval_max_examples = 0  # decode the whole test split at the end

    config.num_train_steps = 600  # 100% exact match on validation already at step 500
    config.schedule = "noam"
    config.learning_rate = 2e-3  # peak, after warmup
    config.warmup_steps = 200
    config.label_smoothing = 0.1
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.decode.strategy = "greedy"
    config.decode.max_length = 40
    return config
