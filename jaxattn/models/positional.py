"""Position information for the Transformer (Vaswani et al. 2017 §3.5).

Sinusoidal encodings, PE(pos, 2i) = sin(pos / 10000^(2i/D)) and
PE(pos, 2i+1) = cos(pos / 10000^(2i/D)), interleaved as in the paper's formula,
or a learned table (the paper's Table 3 row (E) finds them nearly identical).
Both take explicit positions so packed batches restart at 0 in every segment,
and a decode step can ask for position t alone.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxattn import _checks

__all__ = ["sinusoidal_positions", "PositionalEmbedding"]


def sinusoidal_positions(positions, features: int, max_timescale: float = 10_000.0):
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


class PositionalEmbedding(nn.Module):
    """Adds position information to token embeddings.

    Attributes:
      features: D.
      max_len: positions must be < max_len (size of the learned table).
      kind: "sinusoidal" or "learned".
      dtype: output dtype.
      param_dtype: dtype of the learned table.
    """

    features: int
    max_len: int
    kind: str = "sinusoidal"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, positions):
        """Adds encodings.

        Args:
          x: [B, T, D] embeddings.
          positions: [B, T] integer positions.

        Returns:
          [B, T, D] in `dtype`.
        """
        _checks.check_shape(x, "x", (None, None, self.features), "BTD")
        _checks.check_shape(positions, "positions", x.shape[:2], "BT")
        if self.kind == "sinusoidal":
            pe = sinusoidal_positions(positions, self.features)  # [B, T, D]
        elif self.kind == "learned":
            table = nn.Embed(self.max_len, self.features,
                             embedding_init=nn.initializers.normal(stddev=0.02),
                             param_dtype=self.param_dtype, name="table")
            pe = table(positions)  # [B, T, D]
        else:
            raise ValueError(f"kind: expected 'sinusoidal' or 'learned', got {self.kind!r}")
        return (x + pe.astype(x.dtype)).astype(self.dtype)
