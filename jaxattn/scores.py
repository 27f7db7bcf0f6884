"""Attention energies (scores): how well each query matches each key.

RNN-style scores take `query [B, T, Q]` (decoder states of width Q) and
`keys [B, S, C]` (encoder annotations of width C) and return energies `[B, T, S]`:

* additive (Bahdanau et al. 2014, eq. 6 / appendix A.1.2):
  e_ts = v^T tanh(W q_t + U k_s), hidden width A
* Luong et al. 2015, eq. 8:
  dot:      e_ts = q_t^T k_s
  general:  e_ts = q_t^T W k_s
  concat:   e_ts = v^T tanh(W [q_t; k_s])  (W split as [W_q; W_k])
  location: e_t = W_a q_t, one energy per source position up to L: the
            alignment depends on the decoder state only, not on the keys

The Transformer's scaled dot product (Vaswani et al. 2017, eq. 1,
Q K^T / sqrt(d_k)) works per head on `[B, T, N, H]` queries and
`[B, S, K, H]` keys, with grouped-query heads (Ainslie et al. 2023) when K < N.

Parameters are explicit arrays: these are pure functions, the Flax modules
own the parameters.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxattn import _checks

__all__ = [
    "additive_score",
    "dot_score",
    "general_score",
    "concat_score",
    "location_score",
    "scaled_dot_product_score",
    "LuongScore",
    "LUONG_SCORES",
]


def _check_query_keys(query, keys):
    b, _, q = _checks.check_rank(query, "query", "BTQ")
    _, s, c = _checks.check_shape(keys, "keys", (b, None, None), "BSC")
    return q, c, s


def _project(x, w, name: str, a: int, axes: str):
    """x [B, T, Q] @ w [Q, A] (axes "BTQ"; keys: "BSC"), or x itself when w is None."""
    width = x.shape[-1]
    if w is None:
        if width != a:
            raise ValueError(
                f"{name}: is None so the input must already have the attention "
                f"width A={a} as its last axis, got last axis {width}")
        return x
    _checks.check_shape(w, name, (width, a), [axes[2], "A"])
    return jnp.einsum(f"{axes},{axes[2]}A->{axes[:2]}A", x, w)  # [B, T or S, A]


def additive_score(query: Float[Array, "B T Q"], keys: Float[Array, "B S C"],
                   v: Float[Array, "A"], w_query: Float[Array, "Q A"] | None = None,
                   w_key: Float[Array, "C A"] | None = None) -> Float[Array, "B T S"]:
    """Bahdanau additive energies e_ts = v^T tanh(W q_t + U k_s) (eq. 6).

    Pass `w_key=None` when `keys` are already projected (U k_s computed once
    per source sentence, as Bahdanau's appendix suggests); likewise `w_query`.

    Args:
      query: [B, T, Q] decoder states (T = 1 for one decoding step), or
        [B, T, A] if pre-projected.
      keys: [B, S, C] encoder annotations, or [B, S, A] if pre-projected.
      v: [A] output vector.
      w_query: [Q, A] query projection W, or None.
      w_key: [C, A] key projection U, or None.

    Returns:
      [B, T, S] energies.
    """
    _check_query_keys(query, keys)
    (a,) = _checks.check_rank(v, "v", "A")
    wq = _project(query, w_query, "w_query", a, "BTQ")  # [B, T, A]
    wk = _project(keys, w_key, "w_key", a, "BSC")  # [B, S, A]
    hidden = jnp.tanh(wq[:, :, None, :] + wk[:, None, :, :])  # [B, T, S, A]
    return jnp.einsum("BTSA,A->BTS", hidden, v)  # [B, T, S]


def dot_score(query: Float[Array, "B T Q"], keys: Float[Array, "B S Q"]) -> Float[Array, "B T S"]:
    """Luong dot energies e_ts = q_t^T k_s (eq. 8).

    Args:
      query: [B, T, Q] decoder states.
      keys: [B, S, Q] encoder states (same width Q).

    Returns:
      [B, T, S] energies.
    """
    q, c, s = _check_query_keys(query, keys)
    if q != c:
        raise ValueError(
            f"keys: expected shape {_checks.fmt([keys.shape[0], s, q])} (same width as "
            f"query), got {_checks.fmt(keys.shape)}")
    return jnp.einsum("BTQ,BSQ->BTS", query, keys)  # [B, T, S]


def general_score(query: Float[Array, "B T Q"], keys: Float[Array, "B S C"],
                  w: Float[Array, "Q C"]) -> Float[Array, "B T S"]:
    """Luong general energies e_ts = q_t^T W k_s (eq. 8).

    Args:
      query: [B, T, Q] decoder states.
      keys: [B, S, C] encoder states.
      w: [Q, C] bilinear weight.

    Returns:
      [B, T, S] energies.
    """
    q, c, _ = _check_query_keys(query, keys)
    _checks.check_shape(w, "w", (q, c), "QC")
    qw = jnp.einsum("BTQ,QC->BTC", query, w)  # [B, T, C]
    return jnp.einsum("BTC,BSC->BTS", qw, keys)  # [B, T, S]


def concat_score(query: Float[Array, "B T Q"], keys: Float[Array, "B S C"],
                 v: Float[Array, "A"], w_query: Float[Array, "Q A"],
                 w_key: Float[Array, "C A"]) -> Float[Array, "B T S"]:
    """Luong concat energies e_ts = v^T tanh(W_a [q_t; k_s]) (eq. 8).

    W_a [q; k] = W_q q + W_k k, so this is the additive score with both
    projections required (Luong's form has no separate pre-projection).

    Args:
      query: [B, T, Q] decoder states.
      keys: [B, S, C] encoder states.
      v: [A] output vector.
      w_query: [Q, A] the query half of W_a.
      w_key: [C, A] the key half of W_a.

    Returns:
      [B, T, S] energies.
    """
    if w_query is None or w_key is None:
        raise ValueError("w_query, w_key: concat_score needs both projections, got None")
    return additive_score(query, keys, v, w_query, w_key)


def location_score(query: Float[Array, "B T Q"], keys: Float[Array, "B S C"],
                   w: Float[Array, "Q L"]) -> Float[Array, "B T S"]:
    """Luong location energies e_t = W_a h_t, so a_t = softmax(W_a h_t) (eq. 8).

    The alignment depends on the decoder state only: `keys` give the number of
    source positions S and nothing else. W_a has one column per source position
    up to L (a fixed longest source); a batch of S <= L positions reads the first
    S columns, and its padded positions are masked by the caller as for every
    score. Sources longer than L have no weights and raise.

    Args:
      query: [B, T, Q] decoder states h_t.
      keys: [B, S, C] encoder states (only S is read).
      w: [Q, L] W_a, L >= S.

    Returns:
      [B, T, S] energies.
    """
    q, _, s = _check_query_keys(query, keys)
    _, length = _checks.check_shape(w, "w", (q, None), "QL")
    if s > length:
        raise ValueError(
            f"keys: location_score has weights for L={length} source positions (w is "
            f"{_checks.fmt(w.shape)}), got S={s} in keys of shape {_checks.fmt(keys.shape)}")
    return jnp.einsum("BTQ,QS->BTS", query, w[:, :s])  # [B, T, S]


def scaled_dot_product_score(query: Float[Array, "B T N H"], key: Float[Array, "B S K H"],
                             scale: float | None = None) -> Float[Array, "B N T S"]:
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


class LuongScore(NamedTuple):
    """A Luong energy and the shapes of the weights it takes by keyword.

    A model owns the weights: it creates one parameter per `weight_shapes` entry,
    named after the keyword, and calls the entry like the energy function.

    Attributes:
      energy: `(query [B, T, Q], keys [B, S, C], **weights) -> [B, T, S]`.
      weight_shapes: `(Q, C, A, L) -> {keyword: shape}` for query width Q, key
        width C, concat hidden width A and longest source L.
    """

    energy: Callable[..., Float[Array, "B T S"]]
    weight_shapes: Callable[[int, int, int, int], dict[str, tuple[int, ...]]]

    def __call__(self, query: Float[Array, "B T Q"], keys: Float[Array, "B S C"],
                 **weights: Float[Array, "..."]) -> Float[Array, "B T S"]:
        return self.energy(query, keys, **weights)


# Luong et al. 2015 eq. 8, chosen by name in configs (`RNNConfig.score`).
LUONG_SCORES = {
    "dot": LuongScore(dot_score, lambda q, c, a, length: {}),
    "general": LuongScore(general_score, lambda q, c, a, length: {"w": (q, c)}),
    "concat": LuongScore(concat_score,
                         lambda q, c, a, length: {"w_query": (q, a), "v": (a,), "w_key": (c, a)}),
    "location": LuongScore(location_score, lambda q, c, a, length: {"w": (q, length)}),
}
