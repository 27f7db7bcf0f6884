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
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxattn import _checks
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


def weighted_context(weights, values):
    """Context vectors c_t = sum_s alpha_ts v_s (Bahdanau eq. 5).

    Args:
      weights: [B, T, S] attention weights.
      values: [B, S, Dv] values (encoder annotations).

    Returns:
      [B, T, Dv] context vectors.
    """
    b, t, s = _checks.check_rank(weights, "weights", "BTS")
    _checks.check_shape(values, "values", (b, s, None), ["B", "S", "Dv"])
    return jnp.einsum("BTS,BSV->BTV", weights, values)  # [B, T, Dv]


def _rnn_mask(mask, b: int, t: int, s: int):
    """[B, S] or [B, T, S] bool mask -> [B, 1 or T, S]."""
    if mask is None:
        return None
    _checks.check_bool(mask, "mask")
    if jnp.ndim(mask) == 2:
        _checks.check_shape(mask, "mask", (b, s), "BS")
        return mask[:, None, :]  # [B, 1, S]
    _checks.check_shape(mask, "mask", (b, t, s), "BTS")
    return mask


def _attend(energies, values, mask):
    b, t, s = energies.shape
    weights = masked_softmax(energies, _rnn_mask(mask, b, t, s))  # [B, T, S]
    return weighted_context(weights, values), weights


def additive_attention(query, keys, values, v, w_query=None, w_key=None, mask=None):
    """Bahdanau attention: additive energies, masked softmax, weighted sum.

    Args:
      query: [B, T, Dq] decoder states s_{i-1}.
      keys: [B, S, Dk] encoder annotations h_j (or [B, S, A] already
        projected by `w_key`, then pass `w_key=None`).
      values: [B, S, Dv] what is averaged (usually the annotations h_j).
      v: [A] energy output vector.
      w_query: [Dq, A] or None (query already projected).
      w_key: [Dk, A] or None (keys already projected).
      mask: [B, S] or [B, T, S] bool, True = may attend; or None.

    Returns:
      (context [B, T, Dv], weights [B, T, S]).
    """
    energies = additive_score(query, keys, v, w_query, w_key)  # [B, T, S]
    _checks.check_shape(values, "values", (keys.shape[0], keys.shape[1], None),
                        ["B", "S", "Dv"])
    return _attend(energies, values, mask)


def luong_attention(query, keys, values, score_fn=dot_score, mask=None):
    """Luong global attention with any energy function (eq. 7-8).

    Args:
      query: [B, T, Dq] decoder states h_t.
      keys: [B, S, Dk] encoder states h_s.
      values: [B, S, Dv] what is averaged (usually the encoder states).
      score_fn: `(query, keys) -> [B, T, S]`, e.g. `dot_score` or
        `functools.partial(general_score, w=w)`; see `LUONG_SCORES`.
      mask: [B, S] or [B, T, S] bool, True = may attend; or None.

    Returns:
      (context [B, T, Dv], weights [B, T, S]).
    """
    b, t, _ = _checks.check_rank(query, "query", ["B", "T", "Dq"])
    _, s, _ = _checks.check_shape(keys, "keys", (b, None, None), ["B", "S", "Dk"])
    _checks.check_shape(values, "values", (b, s, None), ["B", "S", "Dv"])
    energies = score_fn(query, keys)
    _checks.check_shape(energies, "score_fn(query, keys)", (b, t, s), "BTS")
    return _attend(energies, values, mask)


def _reference(query, key, value, mask, bias, scale, dropout_rate, dropout_rng):
    b, t, n, h = query.shape
    s, k = key.shape[1], key.shape[2]
    logits = scaled_dot_product_score(query, key, scale)  # [B, N, T, S]
    if bias is not None:
        logits = logits + _checks.to_rank(bias, 4).astype(logits.dtype)
    weights = masked_softmax(logits, mask)  # [B, N, T, S] float32
    applied = weights
    if dropout_rate > 0.0:
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
    if implementation is None:
        implementation = "xla"
        if (jax.default_backend() == "gpu"
                and query.dtype in (jnp.bfloat16, jnp.float16)):
            try:  # cuDNN rejects unsupported shapes at trace time
                return _fused(query, key, value, mask, bias, scale, "cudnn")
            except (ValueError, NotImplementedError, RuntimeError):
                pass
    mask4 = None if mask is None else _checks.to_rank(mask, 4)  # [B|1, N|1, T|1, S|1]
    bias4 = None if bias is None else _checks.to_rank(bias, 4)
    if (implementation == "xla" and query.dtype == jnp.float32
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


def dot_product_attention(query, key, value, mask=None, bias=None, *, scale=None,
                          return_weights=False, implementation=None,
                          dropout_rate=0.0, dropout_rng=None):
    """Scaled dot-product attention, softmax(Q K^T * scale + bias) V (Vaswani eq. 1).

    Args:
      query: [B, T, N, H] queries.
      key: [B, S, K, H] keys; K divides N (K < N: grouped-query, K = 1:
        multi-query); query head n reads kv head n // (N / K).
      value: [B, S, K, H] values.
      mask: bool broadcastable to [B, N, T, S] (True = may attend), or None.
        A query row with no visible key gets a zero output.
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
      dropout_rate: attention-weight dropout rate (reference path only).
      dropout_rng: PRNG key, required when dropout_rate > 0.

    Returns:
      [B, T, N, H] outputs in the query dtype, or (outputs, weights
      [B, N, T, S]) if `return_weights`.
    """
    _checks.check_qkv(query, key, value, mask, bias)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate: expected 0 <= rate < 1, got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError("dropout_rng: expected a PRNG key when dropout_rate > 0, got None")
    needs_reference = return_weights or dropout_rate > 0.0
    if needs_reference and implementation not in (None, "reference"):
        raise ValueError(
            f"implementation: {implementation!r} cannot return weights or apply "
            f"dropout; expected None or 'reference'")
    if needs_reference or implementation == "reference":
        out, weights = _reference(query, key, value, mask, bias, scale,
                                  dropout_rate, dropout_rng)
        return (out, weights) if return_weights else out
    if implementation == "chunked":
        if bias is not None:
            raise ValueError(
                f"bias: the chunked implementation takes no bias, got shape "
                f"{_checks.fmt(jnp.shape(bias))}; expected None")
        return chunked_dot_product_attention(query, key, value, mask=mask, scale=scale)
    return _fused(query, key, value, mask, bias, scale, implementation)
