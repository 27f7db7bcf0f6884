"""Attention = softmax(energies) applied to values.

* RNN-style (Bahdanau et al. 2014 eq. 5-6; Luong et al. 2015 eq. 7-8):
  alpha_t = softmax(e_t), context c_t = sum_s alpha_ts h_s.
* Transformer (Vaswani et al. 2017 eq. 1):
  Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, per head, with
  grouped-query heads (K < N) as in Ainslie et al. 2023.

`dot_product_attention` has one reference implementation (explicit einsum +
`masked_softmax`, the only one that can return weights or apply dropout) and
dispatches to `jax.nn.dot_product_attention` when weights are not needed (XLA
on CPU/TPU, cuDNN flash attention on NVIDIA GPUs for bf16/f16) or to the
memory-efficient `chunked_dot_product_attention`. All agree on fully masked
query rows: their output is exactly zero.

Masked positions are inert in every implementation, even when they hold NaN or
Inf: a weight of exactly 0 is not enough (0 * NaN = NaN in the weighted sum and
in the gradients dQ = dS K, dK = dS^T Q), so when a mask is given the query
rows that see no key and the key/value positions that no query sees are
replaced by zeros first. A position that some query may see is an input of
that query's row and is used as it is.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from jaxattn import _checks
from jaxattn.backend import platform_of
from jaxattn.chunked import chunked_dot_product_attention
from jaxattn.scores import additive_score, dot_score, scaled_dot_product_score
from jaxattn.softmax import masked_softmax

__all__ = [
    "weighted_context",
    "additive_attention",
    "luong_attention",
    "dot_product_attention",
    "IMPLEMENTATIONS",
]

# Accepted values of `dot_product_attention(..., implementation=...)`.
IMPLEMENTATIONS = (None, "reference", "xla", "cudnn", "chunked")


def weighted_context(weights: Float[Array, "B T S"],
                     values: Float[Array, "B S U"]) -> Float[Array, "B T U"]:
    """Context vectors c_t = sum_s alpha_ts v_s (Bahdanau eq. 5).

    Args:
      weights: [B, T, S] attention weights.
      values: [B, S, U] values (encoder annotations).

    Returns:
      [B, T, U] context vectors.
    """
    b, t, s = _checks.check_rank(weights, "weights", "BTS")
    _checks.check_shape(values, "values", (b, s, None), "BSU")
    return jnp.einsum("BTS,BSU->BTU", weights, values)  # [B, T, U]


def _rnn_inputs(query, keys, values, mask):
    """Checks RNN attention inputs; returns them with the rows and positions the
    mask hides from everything zeroed (see the module docstring), and the mask
    as [B, 1 or T, S] (or None).

    query [B, T, Q], keys [B, S, C], values [B, S, U], mask [B, S] or [B, T, S].
    """
    b, t, _ = _checks.check_rank(query, "query", "BTQ")
    _, s, _ = _checks.check_shape(keys, "keys", (b, None, None), "BSC")
    _checks.check_shape(values, "values", (b, s, None), "BSU")
    for x, name in ((query, "query"), (keys, "keys"), (values, "values")):
        _checks.check_float(x, name)
    if mask is None:
        return query, keys, values, None
    _checks.check_bool(mask, "mask")
    if jnp.ndim(mask) == 2:
        _checks.check_shape(mask, "mask", (b, s), "BS")
        mask = mask[:, None, :]  # [B, 1, S]
    else:
        _checks.check_shape(mask, "mask", (b, t, s), "BTS")
    row_seen = jnp.any(mask, axis=2)[..., None]  # [B, 1 or T, 1]
    key_seen = jnp.any(mask, axis=1)[..., None]  # [B, S, 1]
    query = jnp.where(row_seen, query, jnp.zeros((), query.dtype))  # [B, T, Q]
    keys = jnp.where(key_seen, keys, jnp.zeros((), keys.dtype))  # [B, S, C]
    values = jnp.where(key_seen, values, jnp.zeros((), values.dtype))  # [B, S, U]
    return query, keys, values, mask


def additive_attention(
        query: Float[Array, "B T Q"],
        keys: Float[Array, "B S C"],
        values: Float[Array, "B S U"],
        v: Float[Array, "A"],
        w_query: Float[Array, "Q A"] | None = None,
        w_key: Float[Array, "C A"] | None = None,
        mask: Bool[Array, "B S"] | Bool[Array, "B T S"] | None = None,
) -> tuple[Float[Array, "B T U"], Float[Array, "B T S"]]:
    """Bahdanau attention: additive energies, masked softmax, weighted sum.

    Args:
      query: [B, T, Q] decoder states s_{i-1} (or [B, T, A] already
        projected by `w_query`, then pass `w_query=None`).
      keys: [B, S, C] encoder annotations h_j (or [B, S, A] already
        projected by `w_key`, then pass `w_key=None`).
      values: [B, S, U] what is averaged (usually the annotations h_j).
      v: [A] energy output vector.
      w_query: [Q, A] or None (query already projected).
      w_key: [C, A] or None (keys already projected).
      mask: [B, S] or [B, T, S] bool, True = may attend; or None.

    Returns:
      (context [B, T, U], weights [B, T, S]).
    """
    query, keys, values, mask = _rnn_inputs(query, keys, values, mask)
    energies = additive_score(query, keys, v, w_query, w_key)  # [B, T, S]
    weights = masked_softmax(energies, mask)  # [B, T, S]
    return weighted_context(weights, values), weights  # [B, T, U]


def luong_attention(
        query: Float[Array, "B T Q"],
        keys: Float[Array, "B S C"],
        values: Float[Array, "B S U"],
        score_fn=dot_score,
        mask: Bool[Array, "B S"] | Bool[Array, "B T S"] | None = None,
) -> tuple[Float[Array, "B T U"], Float[Array, "B T S"]]:
    """Luong global attention with any energy function (eq. 7-8).

    Args:
      query: [B, T, Q] decoder states h_t.
      keys: [B, S, C] encoder states h_s.
      values: [B, S, U] what is averaged (usually the encoder states).
      score_fn: `(query, keys) -> [B, T, S]`, e.g. `dot_score` or
        `functools.partial(general_score, w=w)`; see `LUONG_SCORES`.
      mask: [B, S] or [B, T, S] bool, True = may attend; or None.

    Returns:
      (context [B, T, U], weights [B, T, S]).
    """
    query, keys, values, mask = _rnn_inputs(query, keys, values, mask)
    b, t, _ = query.shape
    s = keys.shape[1]
    energies = score_fn(query, keys)
    _checks.check_shape(energies, "score_fn(query, keys)", (b, t, s), "BTS")
    weights = masked_softmax(energies, mask)  # [B, T, S]
    return weighted_context(weights, values), weights  # [B, T, U]


def _hide_unseen(query, key, value, mask):
    """Zeros the query rows that see no key and the key/value positions that no
    query sees (their weights are exactly 0; this keeps 0 * NaN out).

    query [B, T, N, H], key/value [B, S, K, H], mask [B|1, N|1, T|1, S|1]:
    a kv head counts as seen when any of its G query heads sees it.
    """
    n, k = query.shape[2], key.shape[2]
    row_seen = jnp.any(mask, axis=3)  # [B|1, N|1, T|1]
    row_seen = jnp.swapaxes(row_seen, 1, 2)[..., None]  # [B|1, T|1, N|1, 1]
    if mask.shape[1] == n and k < n:  # per-head mask, grouped kv heads
        grouped = mask.reshape(mask.shape[0], k, n // k, *mask.shape[2:])  # [B|1, K, G, T|1, S|1]
        key_seen = jnp.any(grouped, axis=(2, 3))  # [B|1, K, S|1]
    else:
        key_seen = jnp.any(mask, axis=2)  # [B|1, K|1, S|1]
    key_seen = jnp.swapaxes(key_seen, 1, 2)[..., None]  # [B|1, S|1, K|1, 1]
    zero = jnp.zeros((), query.dtype)
    return (jnp.where(row_seen, query, zero),  # [B, T, N, H]
            jnp.where(key_seen, key, zero),  # [B, S, K, H]
            jnp.where(key_seen, value, zero))  # [B, S, K, H]


def _hide_unseen_inputs(inputs_q, inputs_kv, mask):
    """`_hide_unseen` before the head projections (multi-head attention): zeros
    the query inputs that see no key and the key/value inputs that no query
    sees, so 0 * NaN stays out of the projection kernels' gradients too.

    inputs_q [B, T, D], inputs_kv [B, S, C], mask bool broadcastable to
    [B, N, T, S] (N is checked later, against the projected heads).
    """
    b, t, _ = inputs_q.shape
    s = inputs_kv.shape[1]
    _checks.check_bool(mask, "mask")
    n = jnp.shape(mask)[-3] if jnp.ndim(mask) >= 3 else 1
    _checks.check_broadcastable(mask, "mask", (b, n, t, s), "BNTS")
    mask = _checks.to_rank(mask, 4)  # [B|1, N|1, T|1, S|1]
    row_seen = jnp.any(mask, axis=(1, 3))[..., None]  # [B|1, T|1, 1]
    key_seen = jnp.any(mask, axis=(1, 2))[..., None]  # [B|1, S|1, 1]
    return (jnp.where(row_seen, inputs_q, jnp.zeros((), inputs_q.dtype)),  # [B, T, D]
            jnp.where(key_seen, inputs_kv, jnp.zeros((), inputs_kv.dtype)))  # [B, S, C]


def _reference(query, key, value, mask, bias, scale, dropout, dropout_rate, dropout_rng):
    b, t, n, h = query.shape
    s, k = key.shape[1], key.shape[2]
    logits = scaled_dot_product_score(query, key, scale)  # [B, N, T, S]
    if bias is not None:
        logits = logits + _checks.to_rank(bias, 4).astype(logits.dtype)
    weights = masked_softmax(logits, mask)  # [B, N, T, S] float32
    applied = weights
    if dropout:  # static: the rate itself may be traced
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        applied = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    applied = applied.astype(value.dtype).reshape(b, k, n // k, t, s)  # [B, K, G, T, S]
    out = jnp.einsum("BKGTS,BSKH->BTKGH", applied, value)  # [B, T, K, G, H]
    return out.reshape(b, t, n, h), weights.astype(query.dtype)  # [B, T, N, H]


def _einsum_attention(query, key, value, mask, bias, scale: float):
    """Plain einsum attention (as flax.linen); differentiated for the XLA path."""
    b, t, n, h = query.shape
    s, k = key.shape[1], key.shape[2]
    q = query * jnp.asarray(scale, query.dtype)  # scale T*H numbers, not T*S
    if k == n:
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, key)  # [B, N, T, S]
    else:
        q = q.reshape(b, t, k, n // k, h)  # [B, T, K, G, H]
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key).reshape(b, n, t, s)  # [B, N, T, S]
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)  # [B, N, T, S]
    if k == n:
        return jnp.einsum("BNTS,BSNH->BTNH", weights, value)  # [B, T, N, H]
    weights = weights.reshape(b, k, n // k, t, s)  # [B, K, G, T, S]
    out = jnp.einsum("BKGTS,BSKH->BTKGH", weights, value)  # [B, T, K, G, H]
    return out.reshape(b, t, n, h)  # [B, T, N, H]


# On CPU, jax.nn.dot_product_attention's forward is the fastest we measured
# but its autodiff backward is ~10% slower than that of plain einsums
# (benchmarks/attention.py): take the forward from one, the VJP from the other.
# Measured on CPU only, so `_fused` uses it on CPU only (`jaxattn.backend`);
# elsewhere jax.nn is differentiated as it is.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _xla_float32(scale, query, key, value, mask, bias):
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                        scale=scale, implementation="xla")


def _xla_float32_fwd(scale, query, key, value, mask, bias):
    out, vjp = jax.vjp(lambda q, k, v, b: _einsum_attention(q, k, v, mask, b, scale),
                       query, key, value, bias)
    return out, vjp


def _xla_float32_bwd(scale, vjp, d_out):
    del scale
    d_query, d_key, d_value, d_bias = vjp(d_out)
    return d_query, d_key, d_value, None, d_bias


_xla_float32.defvjp(_xla_float32_fwd, _xla_float32_bwd)


def _fused(query, key, value, mask, bias, scale, implementation):
    """jax.nn.dot_product_attention, with fully masked rows set to zero."""
    platform = platform_of(query)
    if implementation is None:
        implementation = "xla"
        if platform == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16):
            try:  # cuDNN rejects unsupported shapes at trace time
                return _fused(query, key, value, mask, bias, scale, "cudnn")
            except (ValueError, NotImplementedError, RuntimeError):
                pass
    mask4 = None if mask is None else _checks.to_rank(mask, 4)  # [B|1, N|1, T|1, S|1]
    bias4 = None if bias is None else _checks.to_rank(bias, 4)
    if (implementation == "xla" and platform == "cpu" and query.dtype == jnp.float32
            and (scale is None or isinstance(scale, (int, float)))):
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
        out = _xla_float32(scale, query, key, value, mask4, bias4)  # [B, T, N, H]
    else:
        out = jax.nn.dot_product_attention(
            query, key, value, bias=bias4, mask=mask4, scale=scale,
            implementation=implementation)  # [B, T, N, H]
    if mask4 is None:
        return out
    # jax.nn gives a fully masked row the mean of all values; ours is zero.
    visible = jnp.any(mask4, axis=-1, keepdims=True)  # [B|1, N|1, T|1, 1]
    visible = jnp.transpose(visible, (0, 2, 1, 3))  # [B|1, T|1, N|1, 1]
    return jnp.where(visible, out, jnp.zeros((), out.dtype))  # [B, T, N, H]


def _static_rate(dropout_rate):
    """The rate as a Python float, or None when it is traced (known at run time only)."""
    try:
        return float(dropout_rate)
    except jax.errors.ConcretizationTypeError:
        return None
    except (TypeError, ValueError):
        raise ValueError(
            f"dropout_rate: expected a float or a scalar array, got "
            f"{type(dropout_rate).__name__} {dropout_rate!r}") from None


def dot_product_attention(
        query: Float[Array, "B T N H"],
        key: Float[Array, "B S K H"],
        value: Float[Array, "B S K H"],
        mask: Bool[Array, "#B #N #T #S"] | None = None,
        bias: Float[Array, "#B #N #T #S"] | None = None, *,
        scale: float | None = None,
        return_weights: bool = False,
        implementation: str | None = None,
        dropout_rate: float | Float[ArrayLike, ""] = 0.0,
        dropout_rng: PRNGKeyArray | None = None,
) -> Float[Array, "B T N H"] | tuple[Float[Array, "B T N H"], Float[Array, "B N T S"]]:
    """Scaled dot-product attention, softmax(Q K^T * scale + bias) V (Vaswani eq. 1).

    Args:
      query: [B, T, N, H] queries (a floating dtype, as key and value).
      key: [B, S, K, H] keys; K divides N (K < N: grouped-query, K = 1:
        multi-query); query head n reads kv head n // (N / K).
      value: [B, S, K, H] values.
      mask: bool broadcastable to [B, N, T, S] (True = may attend; leading
        axes may be omitted), or None. A query row with no visible key gets a
        zero output. Hidden positions may hold anything, NaN included.
      bias: float broadcastable to [B, N, T, S] added to the energies, or
        None. Use `mask`, not -inf biases, to hide keys.
      scale: energy multiplier, default 1/sqrt(H).
      return_weights: also return the [B, N, T, S] attention weights (forces
        the reference implementation; weights are before dropout).
      implementation: None (auto: reference when weights or dropout are
        needed, else `jax.nn.dot_product_attention`, cuDNN on GPU for
        bf16/f16 when it accepts the shapes, XLA otherwise), "reference",
        "xla", "cudnn" or "chunked" (`chunked_dot_product_attention`,
        O(T + S) memory; no bias).
      dropout_rate: attention-weight dropout rate (reference path only). A
        Python float, or a scalar array that may be traced under `jax.jit`
        (then it is not range-checked, needs `dropout_rng`, and selects the
        reference path even when it turns out to be 0).
      dropout_rng: PRNG key, required when dropout_rate > 0 or traced.

    Returns:
      [B, T, N, H] outputs in the query dtype, or (outputs, weights
      [B, N, T, S]) if `return_weights`. T = 0 or S = 0 give empty or zero
      outputs (and zero weights).
    """
    _checks.check_qkv(query, key, value, mask, bias)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
    if jnp.ndim(dropout_rate) != 0:
        raise ValueError(
            f"dropout_rate: expected a scalar, got shape {_checks.fmt(jnp.shape(dropout_rate))}")
    rate = _static_rate(dropout_rate)
    if rate is not None and not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate: expected 0 <= rate < 1, got {rate}")
    dropout = rate is None or rate > 0.0
    if dropout and dropout_rng is None:
        got = "a traced rate" if rate is None else f"dropout_rate={rate}"
        raise ValueError(f"dropout_rng: expected a PRNG key with {got}, got None")
    needs_reference = return_weights or dropout
    if needs_reference and implementation not in (None, "reference"):
        raise ValueError(
            f"implementation: {implementation!r} cannot return weights or apply "
            f"dropout; expected None or 'reference'")
    if implementation == "chunked":
        if bias is not None:
            raise ValueError(
                f"bias: the chunked implementation takes no bias, got shape "
                f"{_checks.fmt(jnp.shape(bias))}; expected None")
        return chunked_dot_product_attention(query, key, value, mask=mask, scale=scale)
    if mask is not None:
        mask = _checks.to_rank(mask, 4)  # [B|1, N|1, T|1, S|1]
        query, key, value = _hide_unseen(query, key, value, mask)
    if needs_reference or implementation == "reference":
        out, weights = _reference(query, key, value, mask, bias, scale, dropout,
                                  dropout_rate, dropout_rng)
        return (out, weights) if return_weights else out
    return _fused(query, key, value, mask, bias, scale, implementation)
