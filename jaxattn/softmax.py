"""Masked softmax: attention weights from energies (Bahdanau et al. 2014 eq. 6,
alpha_ij = exp(e_ij) / sum_k exp(e_ik); Vaswani et al. 2017 eq. 1).

Masked positions get weight exactly 0. A row with no visible key (a padded
query, an empty segment) gets all-zero weights -- not NaN, and not the uniform
distribution that a `where(mask, x, -1e9)` softmax silently produces -- and its
gradient is finite (zero). The arithmetic is float32 for bf16/f16 inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from jaxattn import _checks

__all__ = ["masked_softmax"]


def masked_softmax(logits: Float[Array, "... S"],
                   mask: Bool[Array, "..."] | None = None,
                   axis: int = -1) -> Float[Array, "... S"]:
    """Softmax over `axis` that gives masked positions exactly zero weight.

    Masked logits may hold anything, NaN and Inf included: they are selected
    away before the exponential, so neither the weights nor the gradient with
    respect to the visible logits see them.

    Args:
      logits: [..., S] energies (any float dtype; typically [B, N, T, S] or
        [B, T, S]).
      mask: bool array broadcastable to `logits.shape` (True = may attend), or
        None. Must not have more axes than `logits`.
      axis: the axis to normalise over (the key axis). An empty axis (S = 0:
        nothing to attend) gives an empty result of the logits' shape.

    Returns:
      Weights with the shape and dtype of `logits`; rows sum to 1 where any
      position is visible and to 0 where none is.
    """
    dtype = jnp.result_type(logits)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"logits: expected a floating dtype, got {dtype} with shape "
            f"{_checks.fmt(jnp.shape(logits))}")
    ndim = jnp.ndim(logits)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis: expected an axis of logits with shape "
            f"{_checks.fmt(jnp.shape(logits))}, got {axis}")
    x = jnp.asarray(logits, jnp.promote_types(dtype, jnp.float32))
    if mask is not None:
        _checks.check_bool(mask, "mask")
        _checks.check_broadcastable(mask, "mask", x.shape,
                                    ["..."] * (x.ndim - 1) + ["S"])
    if x.shape[axis] == 0:  # a sum over nothing: no weights (max would fail)
        return jnp.zeros(jnp.shape(logits), dtype)
    if mask is None:
        return jax.nn.softmax(x, axis=axis).astype(dtype)
    mask = _checks.to_rank(mask, x.ndim)
    x = jnp.where(mask, x, -jnp.inf)
    x_max = jnp.max(x, axis=axis, keepdims=True)
    # A fully masked row has max -inf; shifting by 0 keeps exp(-inf) = 0 and
    # avoids inf - inf = NaN. The shift is a constant for differentiation.
    x_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(x_max), x_max, 0.0))
    unnormalized = jnp.exp(x - x_max)  # masked -> exactly 0
    total = jnp.sum(unnormalized, axis=axis, keepdims=True)
    weights = unnormalized / jnp.where(total > 0, total, 1.0)
    return weights.astype(dtype)
