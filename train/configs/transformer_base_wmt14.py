"""Transformer base on WMT14 English -> German (Vaswani et al. 2017, Table 3 "base").

For GPU/TPU hosts. The data (wmt14_translate/de-en from TFDS, ~4.5M pairs) is
downloaded and prepared as array_record once into data.data_dir; the shared
SentencePiece vocabulary (32k) is trained once into <workdir>/vocab.

    python -m train.translate --config=train/configs/transformer_base_wmt14.py \
        --workdir=runs/wmt14_base --config.data.data_dir=/path/to/tensorflow_datasets

Paper settings: D 512, N 8, F 2048, 6+6 layers, P_drop 0.1, label smoothing 0.1,
Adam(0.9, 0.98, 1e-9) with 4000 warmup steps and rsqrt decay (eq. 3), ~25k
source + 25k target tokens per batch, 100k steps, beam 4 with alpha 0.6.
Set data.tokens_per_batch for your accelerators (it is per host and per side)
and data.batch_size_multiple to the local device count.
"""

import ml_collections
from ml_collections.config_dict import placeholder  # a None default that --config.<field> can set

from train.configs import base


def get_config() -> ml_collections.ConfigDict:
    """The base model on WMT14 en->de."""
    config = base.get_base_config()

    config.model = ml_collections.ConfigDict()
    config.model.family = "transformer"  # jaxattn.models.Transformer / TransformerConfig
    config.model.emb_dim = 512  # D
    config.model.num_heads = 8  # N
    config.model.num_kv_heads = placeholder(int)  # K; None = N (multi-head, as in the paper)
    config.model.num_encoder_layers = 6  # encoder layers
    config.model.num_decoder_layers = 6  # decoder layers
    config.model.mlp_dim = 2048  # F
    config.model.max_len = 256  # longest position
    config.model.positional = "sinusoidal"  # sec. 3.5
    config.model.norm = "post"  # the paper's post-LayerNorm
    config.model.dropout_rate = 0.1  # P_drop (sec. 5.4)
    config.model.attention_dropout_rate = 0.0  # not used in the paper
    config.model.share_embeddings = True  # shared source/target vocabulary and table
    config.model.tie_output = True  # output projection = embedding^T (sec. 3.4)
    config.model.attention_implementation = placeholder(str)  # None = auto: cuDNN / XLA fused attention

    config.data.dataset = "wmt14_translate/de-en"  # TFDS; train = WMT14 train, test = newstest2014
    config.data.source_lang = "en"
    config.data.target_lang = "de"
    config.data.vocab_size = 32768  # shared SentencePiece (the paper: 37k shared BPE)
    config.data.vocab_model_type = "unigram"
    config.data.vocab_max_sentences = 2_000_000  # sentences per side to train the vocabulary
    config.data.character_coverage = 0.9995  # large alphabets: drop the rarest characters
    config.data.max_source_length = 256
    config.data.max_target_length = 256
    config.data.packing = True  # pack pairs into fixed [rows, 256] rows: one compiled shape
    config.data.pack_length = 256
    config.data.tokens_per_batch = 32768  # per host and per side (8 accelerators x 4096)
    config.data.batch_size_multiple = 8  # = local accelerator count
    config.data.eval_batch_size = 64  # rows per eval/decoding batch (multiple of devices)
    config.data.read_threads = 8
    config.data.eval_max_examples = 0  # the whole validation (newstest2013) and test sets

    config.num_train_steps = 100_000
    config.compute_dtype = "bfloat16"  # activations in bf16 on GPU/TPU; params float32
    config.schedule = "noam"
    config.learning_rate = 512**-0.5 * 4000**-0.5  # = 7.0e-4, the peak of eq. 3
    config.warmup_steps = 4000
    config.grad_clip_norm = 0.0  # the paper does not clip
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.eval_decode_examples = 1000  # in-loop BLEU on the first 1000 validation pairs
    config.checkpoint_every_steps = 5000
    config.keep_checkpoints = 3
    config.decode.strategy = "beam"
    config.decode.beam_size = 4
    config.decode.alpha = 0.6
    config.decode.max_length = 256
    return config
