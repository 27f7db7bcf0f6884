"""Memory-efficient attention: online softmax over key chunks, one query chunk
at a time, with a backward pass that recomputes instead of storing [T, S].

Rabe & Staats 2021, "Self-attention Does Not Need O(n^2) Memory", and the
FlashAttention algorithm (Dao et al. 2022, Alg. 1-2; Dao 2023, sec. 3.1).
For each query chunk, key chunks j = 1, 2, ... update a running max m,
normaliser l and unnormalised output o:

    s_j = q k_j^T * scale                     (Vaswani eq. 1 energies)
    m'  = max(m, rowmax(s_j))
    l   = l * exp(m - m') + rowsum(exp(s_j - m'))
    o   = o * exp(m - m') + exp(s_j - m') v_j
    out = o / l,   lse = m + log(l)

The forward pass keeps only `out` and `lse` ([B, T, N, H] and [B, N, T]); the
custom VJP recomputes p = exp(s - lse) block by block (FlashAttention-2 eq.
for dS = P * (dP - rowsum(dO * O))), so peak memory is O(T + S) plus one
[qc, kc] block per head, never [T, S]. Lengths need not divide the chunk
sizes (inputs are padded; padded keys are masked out). A query row with no
visible key gives zero output and zero gradient, as in the dense path.

Hidden positions are inert even when they hold NaN/Inf: a masked logit is
selected away, and within each block the query rows that see no key and the
keys/values that no query sees are replaced by zeros before the products
(0 * NaN would otherwise reach the visible rows through P V, dS K and dS^T Q).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxattn import _checks

__all__ = ["chunked_dot_product_attention"]


def _pad_axis(x, axis: int, size: int, value):
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def chunked_dot_product_attention(
        query: Float[Array, "B T N H"],
        key: Float[Array, "B S K H"],
        value: Float[Array, "B S K H"],
        mask: Bool[Array, "#B #N #T #S"] | None = None, *,
        causal: bool = False,
        key_valid: Bool[Array, "B S"] | None = None,
        query_segment_ids: Int[Array, "B T"] | None = None,
        key_segment_ids: Int[Array, "B S"] | None = None,
        scale: float | None = None,
        query_chunk_size: int = 512,
        key_chunk_size: int = 512) -> Float[Array, "B T N H"]:
    """softmax(Q K^T * scale) V in O(T + S) memory (Rabe & Staats; FlashAttention).

    The structured masks (`causal`, `key_valid`, segment ids) are built per
    block and cost no [T, S] memory; causal blocks above the diagonal are
    skipped. A dense `mask` is also accepted (sliced per block), but a full
    [B, N, T, S] boolean mask is itself O(T * S) bytes.

    Args:
      query: [B, T, N, H] queries.
      key: [B, S, K, H] keys; K divides N (grouped-query when K < N).
      value: [B, S, K, H] values.
      mask: bool broadcastable to [B, N, T, S] (True = may attend; leading
        axes may be omitted), or None.
      causal: query t sees keys s <= t + (S - T) (as `causal_mask(T, S)`).
      key_valid: [B, S] bool, False for padding keys, or None.
      query_segment_ids: [B, T] int packed-segment ids (0 = pad), or None;
        given together with `key_segment_ids` (as `segment_mask`).
      key_segment_ids: [B, S] int, or None.
      scale: energy multiplier, default 1/sqrt(H).
      query_chunk_size: queries per block (clipped to T).
      key_chunk_size: keys per block (clipped to S).

    Returns:
      [B, T, N, H] in the query dtype; zeros where a query sees no key (S = 0
      included), and an empty array when T = 0.
    """
    b, t, n, h, s, k = _checks.check_qkv(query, key, value, mask)
    for name, size in (("query_chunk_size", query_chunk_size),
                       ("key_chunk_size", key_chunk_size)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name}: expected a positive int, got {size!r}")
    if key_valid is not None:
        _checks.check_shape(key_valid, "key_valid", (b, s), "BS")
        _checks.check_bool(key_valid, "key_valid")
    if (query_segment_ids is None) != (key_segment_ids is None):
        raise ValueError(
            "query_segment_ids, key_segment_ids: expected both or neither, got "
            f"{'None' if query_segment_ids is None else 'an array'} and "
            f"{'None' if key_segment_ids is None else 'an array'}")
    if query_segment_ids is not None:
        _checks.check_shape(query_segment_ids, "query_segment_ids", (b, t), "BT")
        _checks.check_int(query_segment_ids, "query_segment_ids")
        _checks.check_shape(key_segment_ids, "key_segment_ids", (b, s), "BS")
        _checks.check_int(key_segment_ids, "key_segment_ids")

    if t == 0 or s == 0:  # no query, or nothing to attend: zero rows, zero grads
        return jnp.zeros((b, t, n, h), query.dtype)  # [B, T, N, H]

    qc, kc = min(query_chunk_size, t), min(key_chunk_size, s)
    nq, nk = -(-t // qc), -(-s // kc)
    g = n // k
    scale = 1.0 / math.sqrt(h) if scale is None else scale

    q = _pad_axis(query.reshape(b, t, k, g, h), 1, nq * qc, 0)  # [B, Tp, K, G, H]
    kk = _pad_axis(key, 1, nk * kc, 0)  # [B, Sp, K, H]
    vv = _pad_axis(value, 1, nk * kc, 0)  # [B, Sp, K, H]
    kv_valid = jnp.ones((b, s), bool) if key_valid is None else key_valid
    kv_valid = _pad_axis(kv_valid, 1, nk * kc, False)  # [B, Sp]
    segments = None
    if query_segment_ids is not None:
        segments = (_pad_axis(query_segment_ids, 1, nq * qc, 0),  # [B, Tp]
                    _pad_axis(key_segment_ids, 1, nk * kc, 0))  # [B, Sp]
    dense = None
    if mask is not None:
        dense = _checks.to_rank(mask, 4)  # [B|1, N|1, T|1, S|1]
        if dense.shape[1] == n:  # split heads as the queries are split
            dense = dense.reshape(dense.shape[0], k, g, *dense.shape[2:])
        else:
            dense = dense[:, :, None]  # [B|1, 1, 1, T|1, S|1]
        if dense.shape[3] > 1:
            dense = _pad_axis(dense, 3, nq * qc, False)
        if dense.shape[4] > 1:
            dense = _pad_axis(dense, 4, nk * kc, False)

    masked = (mask is not None or key_valid is not None or segments is not None
              or bool(causal))
    config = _Config(t=t, s=s, qc=qc, kc=kc, nq=nq, nk=nk, causal=bool(causal),
                     masked=masked)
    out = _attention(config, jnp.asarray(scale, jnp.float32), q, kk, vv,
                     kv_valid, segments, dense)  # [B, Tp, K, G, H]
    return out[:, :t].reshape(b, t, n, h)  # [B, T, N, H]


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static sizes of one call (hashable: a custom_vjp nondiff argument)."""

    t: int  # true query length T
    s: int  # true key length S
    qc: int  # query chunk
    kc: int  # key chunk
    nq: int  # query chunks, nq * qc >= T
    nk: int  # key chunks, nk * kc >= S
    causal: bool
    masked: bool  # some mask is given: zero the hidden rows of each block


def _block_mask(c: _Config, i, j, kv_valid, segments, dense):
    """Visibility of key block j from query block i: bool [B|1, K|1, G|1, qc, kc]."""
    visible = jax.lax.dynamic_slice_in_dim(kv_valid, j * c.kc, c.kc, axis=1)  # [B, kc]
    visible = visible[:, None, None, None, :]  # [B, 1, 1, 1, kc]
    if c.causal:
        q_pos = i * c.qc + jnp.arange(c.qc) + (c.s - c.t)  # [qc]
        k_pos = j * c.kc + jnp.arange(c.kc)  # [kc]
        visible = visible & (k_pos[None, :] <= q_pos[:, None])[None, None, None]
    if segments is not None:
        q_seg = jax.lax.dynamic_slice_in_dim(segments[0], i * c.qc, c.qc, axis=1)  # [B, qc]
        k_seg = jax.lax.dynamic_slice_in_dim(segments[1], j * c.kc, c.kc, axis=1)  # [B, kc]
        same = (q_seg[:, :, None] == k_seg[:, None, :]) & (q_seg != 0)[:, :, None]  # [B, qc, kc]
        visible = visible & same[:, None, None]  # [B, 1, 1, qc, kc]
    if dense is not None:
        block = dense
        if block.shape[3] > 1:
            block = jax.lax.dynamic_slice_in_dim(block, i * c.qc, c.qc, axis=3)
        if block.shape[4] > 1:
            block = jax.lax.dynamic_slice_in_dim(block, j * c.kc, c.kc, axis=4)
        visible = visible & block  # [B|1, K|1, G|1, qc, kc]
    return visible


def _hide(visible, q_i, k_j, v_j):
    """Zeros the query rows of a block that see no key of it and the keys and
    values that no query of it sees: their weights are exactly 0 already, and
    this keeps 0 * NaN out of the products (visible entries are untouched).

    q_i [B, qc, K, G, H] -> (q_i, k_j [B, kc, K, H], v_j [B, kc, K, H]).
    """
    zero = jnp.zeros((), q_i.dtype)
    return (jnp.where(_seen_rows(visible), q_i, zero),
            jnp.where(_seen_keys(visible), k_j, zero),
            jnp.where(_seen_keys(visible), v_j, zero))


def _seen_rows(visible):
    """[B|1, K|1, G|1, qc|1, kc] -> [B|1, qc|1, K|1, G|1, 1]: the row sees some key."""
    rows = jnp.any(visible, axis=4)  # [B|1, K|1, G|1, qc|1]
    return jnp.moveaxis(rows, 3, 1)[..., None]  # [B|1, qc|1, K|1, G|1, 1]


def _seen_keys(visible):
    """[B|1, K|1, G|1, qc|1, kc] -> [B|1, kc, K|1, 1]: some row sees the key."""
    cols = jnp.any(visible, axis=(2, 3))  # [B|1, K|1, kc]
    return jnp.swapaxes(cols, 1, 2)[..., None]  # [B|1, kc, K|1, 1]


def _block_needed(c: _Config, i, j):
    """False for causal blocks entirely above the diagonal (nothing visible)."""
    if not c.causal:
        return jnp.bool_(True)
    return j * c.kc <= (i + 1) * c.qc - 1 + (c.s - c.t)


def _logits(q_i, k_j, scale):
    s = jnp.einsum("BTKGH,BSKH->BKGTS", q_i, k_j,
                   preferred_element_type=jnp.float32)  # [B, K, G, qc, kc]
    return s * scale


def _forward(c: _Config, scale, q, k, v, kv_valid, segments, dense):
    """Returns out [B, Tp, K, G, H] (input dtype) and lse [B, K, G, Tp] (float32)."""
    b, _, kh, g, h = q.shape
    k_blocks = k.reshape(b, c.nk, c.kc, kh, h).swapaxes(0, 1)  # [nk, B, kc, K, H]
    v_blocks = v.reshape(b, c.nk, c.kc, kh, h).swapaxes(0, 1)  # [nk, B, kc, K, H]

    def query_block(i):
        q_i = jax.lax.dynamic_slice_in_dim(q, i * c.qc, c.qc, axis=1)  # [B, qc, K, G, H]

        def key_block(carry, xs):
            k_j, v_j, j = xs

            def update(carry):
                acc, m, l = carry
                visible = _block_mask(c, i, j, kv_valid, segments, dense)
                logits = _logits(q_i, k_j, scale)  # [B, K, G, qc, kc]
                logits = jnp.where(visible, logits, -jnp.inf)  # NaN-safe select
                m_new = jnp.maximum(m, jnp.max(logits, axis=-1))  # [B, K, G, qc]
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                p = jnp.exp(logits - m_safe[..., None])  # [B, K, G, qc, kc]
                correction = jnp.exp(m - m_safe)  # [B, K, G, qc]; m = -inf -> 0
                l = l * correction + jnp.sum(p, axis=-1)
                v_seen = v_j
                if c.masked:  # the masked logits are gone; 0 * NaN values are not
                    v_seen = jnp.where(_seen_keys(visible), v_j, jnp.zeros((), v_j.dtype))
                pv = jnp.einsum("BKGTS,BSKH->BKGTH", p.astype(v_j.dtype), v_seen,
                                preferred_element_type=jnp.float32)  # [B, K, G, qc, H]
                return acc * correction[..., None] + pv, m_new, l

            carry = jax.lax.cond(_block_needed(c, i, j), update, lambda x: x, carry)
            return carry, None

        init = (jnp.zeros((b, kh, g, c.qc, h), jnp.float32),  # acc
                jnp.full((b, kh, g, c.qc), -jnp.inf, jnp.float32),  # running max
                jnp.zeros((b, kh, g, c.qc), jnp.float32))  # normaliser
        (acc, m, l), _ = jax.lax.scan(
            key_block, init, (k_blocks, v_blocks, jnp.arange(c.nk)))
        seen = l > 0  # False for rows with no visible key
        out = acc / jnp.where(seen, l, 1.0)[..., None]  # [B, K, G, qc, H]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)  # [B, K, G, qc]
        return jnp.moveaxis(out, 3, 1).astype(q.dtype), lse  # [B, qc, K, G, H]

    out, lse = jax.lax.map(query_block, jnp.arange(c.nq))  # [nq, B, qc, K, G, H], [nq, B, K, G, qc]
    out = jnp.moveaxis(out, 0, 1).reshape(b, c.nq * c.qc, kh, g, h)  # [B, Tp, K, G, H]
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, c.nq * c.qc)  # [B, K, G, Tp]
    return out, lse


def _backward(c: _Config, scale, q, k, v, kv_valid, segments, dense, out, lse, d_out):
    """FlashAttention-2 backward: recompute p = exp(s - lse) block by block."""
    b, _, kh, g, h = q.shape
    f32 = jnp.float32
    # D_t = rowsum(dO * O) = sum_s P_ts dP_ts.
    delta = jnp.einsum("BTKGH,BTKGH->BKGT", d_out.astype(f32), out.astype(f32))  # [B, K, G, Tp]

    def split_q(x):  # [B, Tp, ...] -> [nq, B, qc, ...]
        return jnp.moveaxis(x.reshape(b, c.nq, c.qc, *x.shape[2:]), 1, 0)

    def split_t(x):  # [B, K, G, Tp] -> [nq, B, K, G, qc]
        return jnp.moveaxis(x.reshape(b, kh, g, c.nq, c.qc), 3, 0)

    q_blocks, do_blocks = split_q(q), split_q(d_out)  # [nq, B, qc, K, G, H]
    lse_blocks, delta_blocks = split_t(lse), split_t(delta)  # [nq, B, K, G, qc]
    k_blocks = k.reshape(b, c.nk, c.kc, kh, h).swapaxes(0, 1)  # [nk, B, kc, K, H]
    v_blocks = v.reshape(b, c.nk, c.kc, kh, h).swapaxes(0, 1)  # [nk, B, kc, K, H]

    def key_block(dq, xs):
        k_j, v_j, j = xs

        def query_block(carry, ys):
            q_i, do_i, lse_i, delta_i, i = ys

            def grads(carry):
                dk_j, dv_j = carry
                visible = _block_mask(c, i, j, kv_valid, segments, dense)
                q_b, k_b, v_b = _hide(visible, q_i, k_j, v_j) if c.masked else (q_i, k_j, v_j)
                logits = _logits(q_b, k_b, scale)  # [B, K, G, qc, kc]
                p = jnp.where(visible, jnp.exp(logits - lse_i[..., None]), 0.0)  # [B, K, G, qc, kc]
                dv_j = dv_j + jnp.einsum("BKGTS,BTKGH->BSKH", p, do_i,
                                         preferred_element_type=f32)  # [B, kc, K, H]
                dp = jnp.einsum("BTKGH,BSKH->BKGTS", do_i, v_b,
                                preferred_element_type=f32)  # [B, K, G, qc, kc]
                ds = p * (dp - delta_i[..., None]) * scale  # [B, K, G, qc, kc]
                dq_i = jnp.einsum("BKGTS,BSKH->BTKGH", ds, k_b,
                                  preferred_element_type=f32)  # [B, qc, K, G, H]
                dk_j = dk_j + jnp.einsum("BKGTS,BTKGH->BSKH", ds, q_b,
                                         preferred_element_type=f32)  # [B, kc, K, H]
                return (dk_j, dv_j), dq_i

            def skip(carry):
                return carry, jnp.zeros((b, c.qc, kh, g, h), f32)

            return jax.lax.cond(_block_needed(c, i, j), grads, skip, carry)

        init = (jnp.zeros((b, c.kc, kh, h), f32), jnp.zeros((b, c.kc, kh, h), f32))
        (dk_j, dv_j), dq_parts = jax.lax.scan(
            query_block, init,
            (q_blocks, do_blocks, lse_blocks, delta_blocks, jnp.arange(c.nq)))
        return dq + dq_parts, (dk_j, dv_j)  # dq_parts: [nq, B, qc, K, G, H]

    dq0 = jnp.zeros((c.nq, b, c.qc, kh, g, h), f32)
    dq, (dk, dv) = jax.lax.scan(key_block, dq0, (k_blocks, v_blocks, jnp.arange(c.nk)))
    dq = jnp.moveaxis(dq, 0, 1).reshape(q.shape)  # [B, Tp, K, G, H]
    dk = jnp.moveaxis(dk, 0, 1).reshape(k.shape)  # [B, Sp, K, H]
    dv = jnp.moveaxis(dv, 0, 1).reshape(v.shape)  # [B, Sp, K, H]
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(c, scale, q, k, v, kv_valid, segments, dense):
    return _forward(c, scale, q, k, v, kv_valid, segments, dense)[0]


def _attention_fwd(c, scale, q, k, v, kv_valid, segments, dense):
    out, lse = _forward(c, scale, q, k, v, kv_valid, segments, dense)
    return out, (scale, q, k, v, kv_valid, segments, dense, out, lse)


def _attention_bwd(c, residuals, d_out):
    scale, q, k, v, kv_valid, segments, dense, out, lse = residuals
    dq, dk, dv = _backward(c, scale, q, k, v, kv_valid, segments, dense, out, lse, d_out)
    # The scale is a constant and masks are not differentiable: no cotangents.
    return None, dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
