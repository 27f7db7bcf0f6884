"""Frozen hyperparameter dataclasses for every model family.

Derive eval / decode variants with `dataclasses.replace` (or `config.replace(...)`)
instead of threading keyword arguments (as the Flax WMT example's `TransformerConfig`).
Invalid values raise a one-line `ValueError` naming the field at construction.

Presets follow the papers: `TransformerConfig.base` / `.big` are Vaswani et al. 2017
Table 3 (base: D 512, N 8, F 2048, 6+6 layers; big: D 1024, N 16, F 4096); `.tiny` is
a CPU-sized variant for tests and notebooks. `RNNConfig.bahdanau` follows Bahdanau et
al. 2014 (bidirectional GRU encoder, additive attention) and `RNNConfig.luong`
follows Luong et al. 2015 (stacked LSTM, global attention, input feeding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxattn.attention import IMPLEMENTATIONS
from jaxattn.models.positional import POSITIONS
from jaxattn.models.rnn_attention import ATTENTIONS
from jaxattn.models.rnn_encoder import CELLS
from jaxattn.scores import LUONG_SCORES
from jaxattn.tokens import BOS_ID, EOS_ID, PAD_ID

# The string-valued fields name entries of these registries (dicts of callables), so
# the accepted names are their keys and a new entry needs no edit here:
# `CELLS` (rnn_encoder.py), `ATTENTIONS` (rnn_attention.py), `LUONG_SCORES`
# (jaxattn/scores.py), `POSITIONS` (positional.py), `IMPLEMENTATIONS` (jaxattn/attention.py).
NORM_PLACEMENTS = ("post", "pre")


def _check_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def _check_choice(config: Any, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {tuple(choices)}, "
                         f"got {value!r}")


def _check_rate(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{type(config).__name__}.{name} must be in [0, 1), got {value!r}")


def _check_special_ids(config: Any) -> None:
    for name in ("pad_id", "bos_id", "eos_id"):
        value = getattr(config, name)
        if not 0 <= value < config.vocab_size:
            raise ValueError(
                    f"{type(config).__name__}.{name} must be in [0, vocab_size={config.vocab_size}), got {value}")


@dataclasses.dataclass(frozen=True)
class RNNConfig:
    """RNN encoder-decoder (Sutskever 2014 / Cho 2014, Bahdanau 2014, Luong 2015).

    Attributes:
        vocab_size: V, shared by source and target (one SentencePiece model).
        embed_dim: E, token embedding size (source and target tables are separate).
        hidden_size: encoder state size per direction.
        num_layers: stacked layers in the encoder and in the decoder.
        cell: "lstm" or "gru".
        bidirectional: bidirectional encoder (Bahdanau 2014 §3.2); the bridge maps
            its final forward/backward states to the decoder's initial state.
        attention: "none" (fixed context vector fed at every step, Cho 2014),
            "bahdanau" (additive, from s_{t-1}, Bahdanau 2014 eq. 5-6) or "luong"
            (global, from h_t, with input feeding, Luong 2015 §3.1, §3.3).
        score: Luong score, a key of `jaxattn.LUONG_SCORES` (Luong 2015 eq. 8): "dot",
            "general", "concat" or "location". Ignored unless attention == "luong".
        attention_dim: A, hidden size of the additive / concat score; None = the
            decoder hidden size.
        decoder_hidden_size: decoder state size; None = encoder output size
            (hidden_size * 2 if bidirectional). The "dot" score needs them equal.
        max_source_length: L, the longest source (in tokens) the "location" score
            has weights for (W_a is [decoder hidden, L]; shorter sources use its
            first S columns, longer ones raise). Unused by the other scores.
        dropout_rate: dropout on embeddings, between layers and before the output.
        pad_id, bos_id, eos_id: special token ids (default `jaxattn.tokens`: pad 0,
            <sos> 2, <eos> 3, the ids of the trainer's vocabularies); decoding and the
            trainer read them from here.
        dtype: compute dtype (e.g. jnp.bfloat16); recurrent carries and logits stay float32.
        param_dtype: parameter dtype.
        capture_attention: sow per-step alignments [B, T, S] into "intermediates".
    """

    vocab_size: int
    embed_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = True
    attention: str = "bahdanau"
    score: str = "general"
    attention_dim: int | None = None
    decoder_hidden_size: int | None = None
    max_source_length: int = 256
    dropout_rate: float = 0.1
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    capture_attention: bool = False

    def __post_init__(self):
        _check_positive(self, "vocab_size", "embed_dim", "hidden_size", "num_layers",
                        "max_source_length")
        _check_choice(self, "cell", CELLS)
        _check_choice(self, "attention", ATTENTIONS)
        _check_choice(self, "score", LUONG_SCORES)
        if self.attention_dim is not None:
            _check_positive(self, "attention_dim")
        if self.decoder_hidden_size is not None:
            _check_positive(self, "decoder_hidden_size")
        _check_rate(self, "dropout_rate")
        _check_special_ids(self)
        ATTENTIONS[self.attention].check_config(self)  # e.g. Luong "dot" needs equal widths

    @property
    def enc_output_size(self) -> int:
        """Size of each encoder output vector h_j (both directions concatenated)."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @property
    def dec_hidden(self) -> int:
        """Decoder state size (resolved default)."""
        return self.decoder_hidden_size or self.enc_output_size

    @property
    def attn_dim(self) -> int:
        """Additive / concat score hidden size A (resolved default)."""
        return self.attention_dim or self.dec_hidden

    def replace(self, **changes) -> RNNConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def tiny(cls, vocab_size: int, **overrides) -> RNNConfig:
        """CPU-sized Bahdanau model for tests and notebooks."""
        fields = dict(embed_dim=32, hidden_size=32, num_layers=1, cell="gru",
                                    attention="bahdanau", dropout_rate=0.0)
        return cls(vocab_size=vocab_size, **{**fields, **overrides})

    @classmethod
    def bahdanau(cls, vocab_size: int, **overrides) -> RNNConfig:
        """RNNsearch (Bahdanau 2014 §A.2): bi-GRU 1000 units, embeddings 620, A = 1000."""
        fields = dict(embed_dim=620, hidden_size=1000, num_layers=1, cell="gru",
                                    bidirectional=True, attention="bahdanau", decoder_hidden_size=1000,
                                    attention_dim=1000)
        return cls(vocab_size=vocab_size, **{**fields, **overrides})

    @classmethod
    def luong(cls, vocab_size: int, **overrides) -> RNNConfig:
        """Luong 2015 §4.1: 4-layer LSTM, 1000 units, global attention, input feeding."""
        fields = dict(embed_dim=1000, hidden_size=1000, num_layers=4, cell="lstm",
                                    bidirectional=False, attention="luong", score="general",
                                    dropout_rate=0.2)
        return cls(vocab_size=vocab_size, **{**fields, **overrides})


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Transformer encoder-decoder (Vaswani et al. 2017).

    Attributes:
        vocab_size: V, shared by source and target.
        emb_dim: D, model dimension.
        num_heads: N, query heads.
        num_kv_heads: K, key/value heads (grouped-query attention when K < N; None = N).
        num_encoder_layers, num_decoder_layers: layer counts.
        mlp_dim: F, feed-forward hidden size.
        max_len: longest position of learned positions (the other schemes have no
            bound; the decode cache is sized by the decoding call's max_len).
        positional: a key of `positional.POSITIONS`: "sinusoidal" (§3.5), "learned",
            "alibi" (Press 2022), "t5" (relative buckets, Raffel 2020) or "rotary"
            (Su 2021).
        norm: "post" (the paper: LayerNorm(x + Sublayer(x))) or "pre"
            (x + Sublayer(LayerNorm(x)), plus a final LayerNorm per stack).
            The dataclass keeps the paper's post-LN as its default (and a
            512-position bound that only learned positions use); experiment
            config files choose their own and say why (the default run's
            train/configs/transformer.py: pre-LN, which trains faster at small scale).
        dropout_rate: residual and embedding dropout (P_drop, §5.4).
        attention_dropout_rate: dropout on attention weights (only the reference
            implementation applies it: needs attention_implementation None or
            "reference").
        share_embeddings: one table for source and target tokens.
        tie_output: output projection = target embedding transposed (§3.4).
        attention_implementation: forwarded to `jaxattn.dot_product_attention`.
        pad_id, bos_id, eos_id: special token ids (default `jaxattn.tokens`: pad 0,
            <sos> 2, <eos> 3, the ids of the trainer's vocabularies); decoding and the
            trainer read them from here.
        dtype: compute dtype; logits are returned float32.
        param_dtype: parameter dtype.
        capture_attention: sow encoder self / decoder self / cross weights
            [B, N, T, S] per layer into "intermediates".
    """

    vocab_size: int
    emb_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int | None = None
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    mlp_dim: int = 2048
    max_len: int = 512
    positional: str = "sinusoidal"
    norm: str = "post"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    share_embeddings: bool = True
    tie_output: bool = True
    attention_implementation: str | None = None
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    capture_attention: bool = False

    def __post_init__(self):
        _check_positive(self, "vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                                        "num_decoder_layers", "mlp_dim", "max_len")
        if self.emb_dim % self.num_heads:
            raise ValueError(
                    f"TransformerConfig.num_heads={self.num_heads} must divide emb_dim={self.emb_dim}")
        if self.num_kv_heads is not None:
            _check_positive(self, "num_kv_heads")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(f"TransformerConfig.num_kv_heads={self.num_kv_heads} must divide "
                                                  f"num_heads={self.num_heads}")
        _check_choice(self, "positional", POSITIONS)
        _check_choice(self, "norm", NORM_PLACEMENTS)
        _check_choice(self, "attention_implementation", IMPLEMENTATIONS)
        _check_rate(self, "dropout_rate", "attention_dropout_rate")
        _check_special_ids(self)
        if self.attention_dropout_rate > 0 and self.attention_implementation not in (None, "reference"):
            raise ValueError(
                    f"TransformerConfig.attention_implementation={self.attention_implementation!r} "
                    f"cannot apply attention_dropout_rate={self.attention_dropout_rate}; expected None "
                    f"or 'reference'")
        POSITIONS[self.positional].check_config(self)  # e.g. sinusoidal needs an even D

    @property
    def head_dim(self) -> int:
        """H = D // N."""
        return self.emb_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        """K (resolved default)."""
        return self.num_kv_heads or self.num_heads

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def tiny(cls, vocab_size: int, **overrides) -> TransformerConfig:
        """CPU-sized preset: D 32, N 4, F 64, 2+2 layers."""
        fields = dict(emb_dim=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                                    mlp_dim=64, max_len=512, dropout_rate=0.0)
        return cls(vocab_size=vocab_size, **{**fields, **overrides})

    @classmethod
    def base(cls, vocab_size: int, **overrides) -> TransformerConfig:
        """Vaswani 2017 Table 3 "base": D 512, N 8, F 2048, 6+6 layers, P_drop 0.1."""
        fields = dict(emb_dim=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
                                    mlp_dim=2048, dropout_rate=0.1)
        return cls(vocab_size=vocab_size, **{**fields, **overrides})

    @classmethod
    def big(cls, vocab_size: int, **overrides) -> TransformerConfig:
        """Vaswani 2017 Table 3 "big": D 1024, N 16, F 4096, 6+6 layers, P_drop 0.3."""
        fields = dict(emb_dim=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6,
                                    mlp_dim=4096, dropout_rate=0.3)
        return cls(vocab_size=vocab_size, **{**fields, **overrides})
