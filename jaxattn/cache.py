"""Decode-time key/value cache for autoregressive attention.

At decoding step i the decoder's self-attention (Vaswani et al. 2017, sec.
3.2.3: a position attends to positions <= i) needs the keys and values of
every earlier step. Instead of recomputing them, each step writes its own
key/value into a fixed-size buffer `[B, L, K, H]` at index i (fixed shapes, so
one compiled step serves every i) and attends over the valid prefix 0..i.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from jaxattn import _checks
from jaxattn.attention import dot_product_attention

__all__ = ["init_kv_cache", "update_kv_cache", "cached_attention"]


def init_kv_cache(batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                  dtype=jnp.float32) -> dict[str, Float[Array, "B L K H"]]:
    """An empty (all-zero) cache.

    Args:
      batch: B.
      max_len: L, the most decoding steps the cache holds.
      num_kv_heads: K.
      head_dim: H.
      dtype: dtype of the cached keys/values.

    Returns:
      {"key": [B, L, K, H], "value": [B, L, K, H]} zeros.
    """
    for name, value in (("batch", batch), ("max_len", max_len),
                        ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    shape = (batch, max_len, num_kv_heads, head_dim)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}


def _check_cache(cache):
    if not isinstance(cache, dict) or set(cache) != {"key", "value"}:
        got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache: expected keys ['key', 'value'], got {got}")
    shape = _checks.check_rank(cache["key"], "cache['key']", "BLKH")
    _checks.check_shape(cache["value"], "cache['value']", shape, "BLKH")
    return shape


def _check_index(index):
    if jnp.ndim(index) != 0 or not jnp.issubdtype(jnp.result_type(index), jnp.integer):
        raise ValueError(
            f"index: expected an integer scalar, got dtype {jnp.result_type(index)} "
            f"with shape {_checks.fmt(jnp.shape(index))}")


def update_kv_cache(cache: dict[str, Float[Array, "B L K H"]],
                    key_step: Float[Array, "B 1 K H"],
                    value_step: Float[Array, "B 1 K H"],
                    index: Int[ArrayLike, ""]) -> dict[str, Float[Array, "B L K H"]]:
    """Writes one step of keys/values at position `index`.

    Args:
      cache: {"key": [B, L, K, H], "value": [B, L, K, H]}.
      key_step: [B, 1, K, H] this step's keys.
      value_step: [B, 1, K, H] this step's values.
      index: integer scalar (may be traced), 0 <= index < L. Out-of-range
        indices are clamped by `lax.dynamic_update_slice`.

    Returns:
      The updated cache (same shapes and dtype).
    """
    b, _, k, h = _check_cache(cache)
    _checks.check_shape(key_step, "key_step", (b, 1, k, h), "B1KH")
    _checks.check_shape(value_step, "value_step", (b, 1, k, h), "B1KH")
    _check_index(index)
    dtype = cache["key"].dtype
    return {
        "key": jax.lax.dynamic_update_slice_in_dim(
            cache["key"], key_step.astype(dtype), index, axis=1),  # [B, L, K, H]
        "value": jax.lax.dynamic_update_slice_in_dim(
            cache["value"], value_step.astype(dtype), index, axis=1),  # [B, L, K, H]
    }


def cached_attention(query_step: Float[Array, "B 1 N H"],
                     cache: dict[str, Float[Array, "B L K H"]],
                     index: Int[ArrayLike, ""],
                     key_valid: Bool[Array, "B L"] | None = None,
                     bias: Float[Array, "#B #N 1 #L"] | None = None, *,
                     scale: float | None = None,
                     implementation: str | None = None) -> Float[Array, "B 1 N H"]:
    """Attends one query step over cache positions 0..index.

    Args:
      query_step: [B, 1, N, H] this step's queries; K divides N.
      cache: {"key": [B, L, K, H], "value": [B, L, K, H]} already updated
        with this step (see `update_kv_cache`).
      index: integer scalar, the position of this step.
      key_valid: [B, L] bool, extra per-position validity (e.g. a left-padded
        prompt), or None.
      bias: float broadcastable to [B, N, 1, L] added to the energies of query
        `index` against cache positions 0..L-1 (ALiBi, relative positions), or
        None. Positions after `index` are masked whatever their bias.
      scale: energy multiplier, default 1/sqrt(H).
      implementation: see `dot_product_attention`.

    Returns:
      [B, 1, N, H].
    """
    b, length, _, h = _check_cache(cache)
    _checks.check_shape(query_step, "query_step", (b, 1, None, h), "B1NH")
    _checks.check_qkv(query_step, cache["key"], cache["value"], bias=bias,
                      names=("query_step", "cache['key']", "cache['value']"))
    _check_index(index)
    mask = jnp.arange(length)[None, :] <= index  # [1, L]
    if key_valid is not None:
        _checks.check_shape(key_valid, "key_valid", (b, length), "BL")
        _checks.check_bool(key_valid, "key_valid")
        mask = mask & key_valid  # [B, L]
    mask = _checks.to_rank(mask, 2)[:, None, None, :]  # [B|1, 1, 1, L]
    return dot_product_attention(query_step, cache["key"], cache["value"], mask, bias,
                                 scale=scale, implementation=implementation)
