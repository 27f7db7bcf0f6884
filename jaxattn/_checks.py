"""Input checks shared by the primitives: one-line `ValueError`s that name the
argument, the shape got and the shape expected.

Checks run at trace time on static shapes and dtypes only, so they cost nothing
under `jax.jit` and never look at array values.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

__all__: list[str] = []  # private helpers; not re-exported


def fmt(shape: Sequence[int | str]) -> str:
    """Formats a shape as `[3, 5, 7]` or a symbolic `[B, T, N, H]`."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_rank(x, name: str, expected: Sequence[str]) -> tuple[int, ...]:
    """Checks `x.ndim == len(expected)` and returns the shape."""
    shape = tuple(jnp.shape(x))
    if len(shape) != len(expected):
        raise ValueError(
            f"{name}: expected shape {fmt(expected)}, got {fmt(shape)}")
    return shape


def check_shape(x, name: str, expected: Sequence[int | None],
                symbolic: Sequence[str] | None = None) -> tuple[int, ...]:
    """Checks `x.shape` against `expected` (`None` = any size on that axis)."""
    shape = tuple(jnp.shape(x))
    ok = len(shape) == len(expected) and all(
        e is None or e == g for e, g in zip(expected, shape))
    if not ok:
        want = [s if e is None else e for e, s in
                zip(expected, symbolic or ["?"] * len(expected))]
        raise ValueError(f"{name}: expected shape {fmt(want)}, got {fmt(shape)}")
    return shape


def check_bool(x, name: str) -> None:
    """Rejects non-boolean masks (an int or float mask is almost always a bug)."""
    dtype = jnp.result_type(x)
    if dtype != np.dtype(bool):
        raise ValueError(
            f"{name}: expected a boolean mask (True = may attend), got dtype "
            f"{dtype} with shape {fmt(jnp.shape(x))}")


def check_float(x, name: str) -> None:
    """Rejects non-floating queries, keys and values (int32 attention silently
    rounds its weights to 0 or 1)."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name}: expected a floating dtype (float32, bfloat16, ...), got dtype "
            f"{dtype} with shape {fmt(jnp.shape(x))}")


def check_int(x, name: str) -> None:
    """Rejects non-integer token ids, lengths and segment ids."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"{name}: expected an integer array, got dtype {dtype} with shape "
            f"{fmt(jnp.shape(x))}")


def check_broadcastable(x, name: str, target: Sequence[int],
                        symbolic: Sequence[str]) -> None:
    """Checks that `x` broadcasts to `target` without adding leading axes beyond
    `len(target)`; each axis must be 1 or equal to the target size."""
    shape = tuple(jnp.shape(x))
    ok = len(shape) <= len(target) and all(
        g in (1, t) for g, t in zip(shape[::-1], tuple(target)[::-1]))
    if not ok:
        raise ValueError(
            f"{name}: expected a shape broadcastable to {fmt(symbolic)} = "
            f"{fmt(target)}, got {fmt(shape)}")


def to_rank(x, ndim: int):
    """Prepends unit axes up to `ndim` (the suite forbids implicit rank promotion)."""
    return jnp.reshape(x, (1,) * (ndim - jnp.ndim(x)) + tuple(jnp.shape(x)))


def check_qkv(query, key, value, mask=None, bias=None,
              names: Sequence[str] = ("query", "key", "value"),
              ) -> tuple[int, int, int, int, int, int]:
    """Validates [B, T, N, H] query, [B, S, K, H] key/value (K divides N, one
    floating dtype), mask, bias; errors use the caller's `names` for q, k, v.

    Returns:
      (B, T, N, H, S, K).
    """
    q_name, k_name, v_name = names
    b, t, n, h = check_rank(query, q_name, "BTNH")
    _, s, k, _ = check_shape(key, k_name, (b, None, None, h), "BSKH")
    check_shape(value, v_name, key.shape, "BSKH")
    if k == 0 or n % k:
        raise ValueError(
            f"{k_name}: expected a number of kv heads K dividing the query heads "
            f"N={n}, got shape {fmt(key.shape)}")
    for x, name in zip((query, key, value), names):
        check_float(x, name)
    if len({jnp.result_type(x) for x in (query, key, value)}) != 1:
        raise ValueError(
            f"{', '.join(names)}: expected one dtype, got {jnp.result_type(query)}, "
            f"{jnp.result_type(key)}, {jnp.result_type(value)}")
    if mask is not None:
        check_bool(mask, "mask")
        check_broadcastable(mask, "mask", (b, n, t, s), "BNTS")
    if bias is not None:
        check_broadcastable(bias, "bias", (b, n, t, s), "BNTS")
    return b, t, n, h, s, k
