"""Attention energies (scores): how well each query matches each key.

RNN-style scores take `query [B, T, Dq]` and `keys [B, S, Dk]` and return
energies `[B, T, S]`:

* additive (Bahdanau et al. 2014, eq. 6 / appendix A.1.2):
  e_ts = v^T tanh(W q_t + U k_s)
* Luong et al. 2015, eq. 8:
  dot:     e_ts = q_t^T k_s
  general: e_ts = q_t^T W k_s
  concat:  e_ts = v^T tanh(W [q_t; k_s])  (W split as [W_q; W_k])

The Transformer's scaled dot product (Vaswani et al. 2017, eq. 1,
Q K^T / sqrt(d_k)) works per head on `[B, T, N, H]` queries and
`[B, S, K, H]` keys, with grouped-query heads (Ainslie et al. 2023) when K < N.

Parameters are explicit arrays: these are pure functions, the Flax modules
own the parameters.
"""
from __future__ import annotations

import math

import jax.numpy as jnp

from jaxattn import _checks

__all__ = [
    "additive_score",
    "dot_score",
    "general_score",
    "concat_score",
    "scaled_dot_product_score",
    "LUONG_SCORES",
]


def _check_query_keys(query, keys):
    b, _, dq = _checks.check_rank(query, "query", ["B", "T", "Dq"])
    _, _, dk = _checks.check_shape(keys, "keys", (b, None, None), ["B", "S", "Dk"])
    return dq, dk


def _project(x, w, name: str, d: int, a: int | None):
    """x [B, L, d] @ w [d, A], or x itself when w is None (already projected)."""
    if w is None:
        if a is not None and d != a:
            raise ValueError(
                f"{name}: is None so the input must already have the attention "
                f"width A={a} as its last axis, got last axis {d}")
        return x
    _checks.check_shape(w, name, (d, a), ["D", "A"])
    return jnp.einsum("BLD,DA->BLA", x, w)  # [B, L, A]


def additive_score(query, keys, v, w_query=None, w_key=None):
    """Bahdanau additive energies e_ts = v^T tanh(W q_t + U k_s) (eq. 6).

    Pass `w_key=None` when `keys` are already projected (U k_s computed once
    per source sentence, as Bahdanau's appendix suggests); likewise `w_query`.

    Args:
      query: [B, T, Dq] decoder states (T = 1 for one decoding step).
      keys: [B, S, Dk] encoder annotations (or [B, S, A] if pre-projected).
      v: [A] output vector.
      w_query: [Dq, A] query projection W, or None.
      w_key: [Dk, A] key projection U, or None.

    Returns:
      [B, T, S] energies.
    """
    dq, dk = _check_query_keys(query, keys)
    (a,) = _checks.check_rank(v, "v", ["A"])
    wq = _project(query, w_query, "w_query", dq, a)  # [B, T, A]
    wk = _project(keys, w_key, "w_key", dk, a)  # [B, S, A]
    hidden = jnp.tanh(wq[:, :, None, :] + wk[:, None, :, :])  # [B, T, S, A]
    return jnp.einsum("BTSA,A->BTS", hidden, v)  # [B, T, S]


def dot_score(query, keys):
    """Luong dot energies e_ts = q_t^T k_s (eq. 8).

    Args:
      query: [B, T, D] decoder states.
      keys: [B, S, D] encoder states (same width D).

    Returns:
      [B, T, S] energies.
    """
    dq, dk = _check_query_keys(query, keys)
    if dq != dk:
        b, s, _ = keys.shape
        raise ValueError(
            f"keys: expected shape {_checks.fmt([b, s, dq])} (same width as "
            f"query), got {_checks.fmt(keys.shape)}")
    return jnp.einsum("BTD,BSD->BTS", query, keys)  # [B, T, S]


def general_score(query, keys, w):
    """Luong general energies e_ts = q_t^T W k_s (eq. 8).

    Args:
      query: [B, T, Dq] decoder states.
      keys: [B, S, Dk] encoder states.
      w: [Dq, Dk] bilinear weight.

    Returns:
      [B, T, S] energies.
    """
    dq, dk = _check_query_keys(query, keys)
    _checks.check_shape(w, "w", (dq, dk), ["Dq", "Dk"])
    qw = jnp.einsum("BTQ,QK->BTK", query, w)  # [B, T, Dk]
    return jnp.einsum("BTK,BSK->BTS", qw, keys)  # [B, T, S]


def concat_score(query, keys, v, w_query, w_key):
    """Luong concat energies e_ts = v^T tanh(W_a [q_t; k_s]) (eq. 8).

    W_a [q; k] = W_q q + W_k k, so this is the additive score with both
    projections required (Luong's form has no separate pre-projection).

    Args:
      query: [B, T, Dq] decoder states.
      keys: [B, S, Dk] encoder states.
      v: [A] output vector.
      w_query: [Dq, A] the query half of W_a.
      w_key: [Dk, A] the key half of W_a.

    Returns:
      [B, T, S] energies.
    """
    if w_query is None or w_key is None:
        raise ValueError("w_query, w_key: concat_score needs both projections, got None")
    return additive_score(query, keys, v, w_query, w_key)


def scaled_dot_product_score(query, key, scale=None):
    """Per-head energies Q K^T * scale, scale = 1/sqrt(H) by default (Vaswani eq. 1).

    With K < N key/value heads (grouped-query / multi-query attention), query
    head n uses kv head n // G, G = N / K (the layout of
    `jax.nn.dot_product_attention`).

    Args:
      query: [B, T, N, H] queries.
      key: [B, S, K, H] keys; N must be a multiple of K.
      scale: multiplier of the energies (default 1/sqrt(H)).

    Returns:
      [B, N, T, S] energies, float32 for bf16/f16 inputs.
    """
    b, t, n, h = _checks.check_rank(query, "query", "BTNH")
    _, s, k, _ = _checks.check_shape(key, "key", (b, None, None, h), "BSKH")
    if k == 0 or n % k:
        raise ValueError(
            f"key: expected a number of kv heads K dividing the query heads "
            f"N={n}, got shape {_checks.fmt(key.shape)}")
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    out_dtype = jnp.promote_types(jnp.result_type(query, key), jnp.float32)
    q = query.reshape(b, t, k, n // k, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key,
                        preferred_element_type=out_dtype)  # [B, K, G, T, S]
    return logits.reshape(b, n, t, s) * jnp.asarray(scale, out_dtype)  # [B, N, T, S]


# Luong et al. 2015's three content-based scores, chosen by name in configs.
LUONG_SCORES = {
    "dot": dot_score,
    "general": general_score,
    "concat": concat_score,
}
