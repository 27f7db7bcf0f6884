"""Position information for the Transformer, chosen through `POSITIONS`.

Absolute, added to the token embeddings (Vaswani et al. 2017 §3.5):

* "sinusoidal": PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) =
  cos(pos / 10000^(2i/D)), interleaved as in the paper's formula;
* "learned": a learned table (the paper's Table 3 row (E) finds the two nearly
  identical); positions must stay below `TransformerConfig.max_len`.

Relative, in self-attention only (cross-attention compares a target and a
source position, which share no axis):

* "alibi" (Press et al. 2022, §3): energies get -m_n |i - j|, a fixed slope
  m_n per head (the geometric sequence 2^(-8/N), 2^(-16/N), ...); no
  parameters, no embeddings. Through the attention `bias`.
* "t5" (Raffel et al. 2020, §2.1): a learned scalar per head and relative
  distance bucket (exact up to 8 (bidirectional) / 16 (causal) positions,
  logarithmic up to 128, one bucket beyond), shared by the layers of a stack,
  one table for the encoder and one for the decoder. Through the attention `bias`.
* "rotary" (Su et al. 2021, eq. 34): queries and keys rotated pair by pair by
  angles pos * 10000^(-2i/H), so q_i . k_j depends on i - j only. Through the
  multi-head attention's `process_heads` hook.

Every entry is a module with the same five calls, so the Transformer calls them
all and never asks which one it has; they take explicit positions, so packed
rows restart at 0 in every segment and a decode step asks for position t alone:

    embed(x [B, T, D], positions [B, T]) -> [B, T, D]
    self_bias(query_positions [B, T], key_positions [B|1, S], causal) -> [B, N, T, S] or None
    process_heads(query_positions, key_positions) -> hook(q, k) -> (q, k), or None
    check_length(length, name)                      raises past the longest position
    check_config(config)                            static; raises ValueError

A new scheme is one module here and one `POSITIONS` entry.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxattn import _checks

if TYPE_CHECKING:  # configs.py imports this module for the names of the registry
    from jaxattn.models.configs import TransformerConfig

__all__ = [
    "POSITIONS",
    "sinusoidal_positions",
    "alibi_slopes",
    "alibi_bias",
    "relative_position_buckets",
    "rotary_embedding",
    "SinusoidalPositions",
    "LearnedPositions",
    "ALiBiPositions",
    "T5Positions",
    "RotaryPositions",
]


def sinusoidal_positions(positions: Int[Array, "B T"], features: int,
                         max_timescale: float = 10_000.0) -> Float[Array, "B T D"]:
    """Sinusoidal position encodings (Vaswani 2017 §3.5).

    Args:
      positions: [B, T] integer positions (0-based).
      features: D, even.
      max_timescale: the 10000 of the paper.

    Returns:
      [B, T, D] float32; channel 2i is sin, channel 2i+1 is cos.
    """
    _checks.check_rank(positions, "positions", "BT")
    if features % 2:
        raise ValueError(f"features: expected an even D for sinusoidal positions, got {features}")
    exponents = jnp.arange(0, features, 2, dtype=jnp.float32) / features  # [D/2]
    inv_timescales = max_timescale ** -exponents  # [D/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_timescales[None, None, :]  # [B, T, D/2]
    pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [B, T, D/2, 2]
    return pe.reshape(positions.shape + (features,))  # [B, T, D]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al. 2022, §3).

    For N a power of two, m_n = 2^(-8n/N), n = 1..N. Otherwise the slopes of
    the largest power of two P < N, then every other slope of 2P, up to N
    heads (the paper's recipe).

    Args:
      num_heads: N.

    Returns:
      [N] float32 NumPy array (a constant of the model).
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")

    def geometric(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(power) + geometric(2 * power)[0::2][:num_heads - power]
    return np.asarray(slopes, np.float32)


def alibi_bias(query_positions: Int[Array, "#B T"], key_positions: Int[Array, "#B S"],
               slopes: Float[Array, "N"]) -> Float[Array, "#B N T S"]:
    """ALiBi energies -m_n |i - j| (Press et al. 2022, eq. in §3).

    The paper's decoder sees only j <= i, where |i - j| = i - j; the encoder's
    bidirectional attention uses the same symmetric distance.

    Args:
      query_positions: [B, T] integer positions i.
      key_positions: [B, S] integer positions j (B may be 1 in either).
      slopes: [N] per-head slopes (`alibi_slopes`).

    Returns:
      [B, N, T, S] float32 biases.
    """
    distance = _distance(query_positions, key_positions)  # [B, T, S] = j - i
    (n,) = _checks.check_rank(slopes, "slopes", "N")
    return -jnp.abs(distance).astype(jnp.float32)[:, None] * jnp.reshape(slopes, (1, n, 1, 1))


def _distance(query_positions, key_positions):
    """key position - query position: [B, T], [B, S] -> [B, T, S] int."""
    _checks.check_rank(query_positions, "query_positions", "BT")
    _checks.check_rank(key_positions, "key_positions", "BS")
    _checks.check_int(query_positions, "query_positions")
    _checks.check_int(key_positions, "key_positions")
    return key_positions[:, None, :] - query_positions[:, :, None]  # [B, T, S]


def relative_position_buckets(distance: Int[Array, "*shape"], *, bidirectional: bool,
                              num_buckets: int = 32,
                              max_distance: int = 128) -> Int[Array, "*shape"]:
    """T5 relative-position buckets (Raffel et al. 2020, §2.1).

    Half the buckets (all but the sign bucket when causal) hold the small
    distances one by one; the rest cover distances up to `max_distance` on a
    log scale, and every larger distance shares the last bucket. Bidirectional
    attention gives keys before and after the query separate halves; causal
    attention only sees keys at or before the query (j - i <= 0).

    Args:
      distance: integer key position - query position (j - i), any shape.
      bidirectional: encoder (True) or causal decoder (False) bucketing.
      num_buckets: buckets in total.
      max_distance: the distance from which on all share one bucket.

    Returns:
      int32 bucket ids in [0, num_buckets), the shape of `distance`.
    """
    _checks.check_int(distance, "distance")
    offset = jnp.zeros_like(distance)
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(distance > 0, num_buckets, 0)  # keys after the query: upper half
        n = jnp.abs(distance)
    else:
        n = jnp.maximum(-distance, 0)  # how far back the key is
    exact = num_buckets // 2
    # Log-spaced buckets for exact <= n < max_distance; max(n, 1) keeps log finite where unused.
    log_ratio = jnp.log(jnp.maximum(n, 1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return (offset + jnp.where(n < exact, n, large)).astype(jnp.int32)


def rotary_embedding(x: Float[Array, "B T N H"], positions: Int[Array, "#B T"],
                     max_timescale: float = 10_000.0) -> Float[Array, "B T N H"]:
    """Rotates channel pairs (2i, 2i+1) by angle pos * max_timescale^(-2i/H) (Su et al. 2021, eq. 34).

    (R_i q) . (R_j k) = q . R_(j-i) k, so rotated dot products depend on the
    relative position j - i only. The angles are those of `sinusoidal_positions`.

    Args:
      x: [B, T, N, H] queries or keys (H even).
      positions: [B, T] integer positions (B may be 1).
      max_timescale: the 10000 of the paper.

    Returns:
      [B, T, N, H] in the dtype of `x` (rotated in float32).
    """
    _, t, _, h = _checks.check_rank(x, "x", "BTNH")
    _checks.check_shape(positions, "positions", (None, t), "BT")
    pe = sinusoidal_positions(positions, h, max_timescale)[:, :, None, :]  # [B, T, 1, H]
    sin, cos = pe[..., 0::2], pe[..., 1::2]  # [B, T, 1, H/2] each
    x32 = x.astype(jnp.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]  # [B, T, N, H/2] each
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)  # [B, T, N, H/2, 2]
    return rotated.reshape(x.shape).astype(x.dtype)  # [B, T, N, H]


# -- modules --------------------------------------------------------------------------


class _Positions(nn.Module):
    """Defaults: nothing added to the embeddings, no bias, no hook, no length limit."""

    config: TransformerConfig

    @staticmethod
    def check_config(config: TransformerConfig) -> None:
        """Raises ValueError if `config` cannot use this scheme (called by `TransformerConfig`)."""
        del config

    def embed(self, x, positions):
        del positions
        return x

    def self_bias(self, query_positions, key_positions, causal: bool):
        del query_positions, key_positions, causal
        return None

    def process_heads(self, query_positions, key_positions):
        del query_positions, key_positions
        return None

    def check_length(self, length: int, name: str) -> None:
        del length, name


def _check_even(width: int, what: str, scheme: str) -> None:
    """Sines and cosines (and rotations) come in channel pairs."""
    if width % 2:
        raise ValueError(f"TransformerConfig.{what} must be even for {scheme} positions, got {width}")


class SinusoidalPositions(_Positions):
    """x + PE(pos) (Vaswani 2017 §3.5)."""

    @staticmethod
    def check_config(config: TransformerConfig) -> None:
        _check_even(config.emb_dim, "emb_dim", "sinusoidal")

    def embed(self, x, positions):
        pe = sinusoidal_positions(positions, self.config.emb_dim)  # [B, T, D]
        return (x + pe.astype(x.dtype)).astype(self.config.dtype)


class LearnedPositions(_Positions):
    """x + P[pos], a learned [max_len, D] table."""

    def setup(self):
        cfg = self.config
        self.table = nn.Embed(cfg.max_len, cfg.emb_dim,
                              embedding_init=nn.initializers.normal(stddev=0.02),
                              param_dtype=cfg.param_dtype)

    def embed(self, x, positions):
        self.check_length(x.shape[1], "tokens")
        pe = self.table(positions)  # [B, T, D]
        return (x + pe.astype(x.dtype)).astype(self.config.dtype)

    def check_length(self, length: int, name: str) -> None:
        if length > self.config.max_len:
            raise ValueError(f"{name}: length {length} exceeds TransformerConfig.max_len="
                             f"{self.config.max_len} of learned positions")


class _BiasPositions(_Positions):
    """A relative scheme that enters through the attention bias."""

    @staticmethod
    def check_config(config: TransformerConfig) -> None:
        if config.attention_implementation == "chunked":
            raise ValueError(f"TransformerConfig.attention_implementation='chunked' takes no bias; "
                             f"positional={config.positional!r} needs another implementation")


class ALiBiPositions(_BiasPositions):
    """-m_n |i - j| added to self-attention energies (Press et al. 2022)."""

    def self_bias(self, query_positions, key_positions, causal: bool):
        del causal  # future keys are masked: |i - j| = i - j where it matters
        slopes = alibi_slopes(self.config.num_heads)  # [N]
        return alibi_bias(query_positions, key_positions, slopes).astype(self.config.dtype)


class T5Positions(_BiasPositions):
    """A learned scalar per head and relative-distance bucket (Raffel et al. 2020)."""

    num_buckets: int = 32
    max_distance: int = 128

    def setup(self):
        cfg = self.config
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
        shape = (self.num_buckets, cfg.num_heads)
        self.encoder_bias = self.param("encoder_bias", init, shape, cfg.param_dtype)  # [32, N]
        self.decoder_bias = self.param("decoder_bias", init, shape, cfg.param_dtype)  # [32, N]

    def self_bias(self, query_positions, key_positions, causal: bool):
        buckets = relative_position_buckets(
            _distance(query_positions, key_positions), bidirectional=not causal,
            num_buckets=self.num_buckets, max_distance=self.max_distance)  # [B, T, S]
        table = self.decoder_bias if causal else self.encoder_bias  # [32, N]
        bias = jnp.take(table, buckets, axis=0)  # [B, T, S, N]
        return jnp.transpose(bias, (0, 3, 1, 2)).astype(self.config.dtype)  # [B, N, T, S]


class RotaryPositions(_Positions):
    """Queries and keys rotated by their positions (Su et al. 2021)."""

    @staticmethod
    def check_config(config: TransformerConfig) -> None:
        _check_even(config.head_dim, "emb_dim / num_heads (the head dimension H)", "rotary")

    def process_heads(self, query_positions, key_positions):
        def rotate(query, key):  # [B, T, N, H], [B, S, K, H]
            return rotary_embedding(query, query_positions), rotary_embedding(key, key_positions)
        return rotate


# `TransformerConfig.positional` -> module class; `TransformerConfig` calls its
# `check_config` at construction.
POSITIONS = {
    "sinusoidal": SinusoidalPositions,
    "learned": LearnedPositions,
    "alibi": ALiBiPositions,
    "t5": T5Positions,
    "rotary": RotaryPositions,
}
