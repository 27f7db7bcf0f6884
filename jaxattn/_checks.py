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
