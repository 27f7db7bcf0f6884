"""Boolean attention masks: `True` = may attend, broadcastable to `[B, N, T, S]`.

Masks are the one way to say "this query may not see that key": padding
(Bahdanau et al. 2014 attend only over real source words), causal
self-attention (Vaswani et al. 2017, sec. 3.2.3: "prevent leftward information
flow"), packed sequences (segment ids) and their conjunctions. Softmax turns a
masked energy into an exactly-zero weight (`jaxattn.masked_softmax`).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from jaxattn import _checks
from jaxattn.tokens import PAD_ID

__all__ = [
    "padding_mask",
    "lengths_to_mask",
    "key_padding_mask",
    "cross_attention_mask",
    "causal_mask",
    "segment_mask",
    "combine_masks",
]


def padding_mask(tokens: Int[Array, "B S"], pad_id: int = PAD_ID) -> Bool[Array, "B S"]:
    """Marks real tokens.

    Args:
      tokens: [B, S] integer token ids.
      pad_id: the padding id (`jaxattn.PAD_ID`).

    Returns:
      [B, S] bool, True where `tokens != pad_id`.
    """
    _checks.check_rank(tokens, "tokens", "BS")
    _checks.check_int(tokens, "tokens")
    return tokens != pad_id  # [B, S]


def lengths_to_mask(lengths: Int[Array, "B"], max_len: int) -> Bool[Array, "B S"]:
    """Marks the first `lengths[b]` positions of each row.

    Args:
      lengths: [B] integer lengths (values above `max_len` saturate).
      max_len: static sequence length S.

    Returns:
      [B, S] bool, True at positions `< lengths[b]`.
    """
    _checks.check_rank(lengths, "lengths", "B")
    _checks.check_int(lengths, "lengths")
    if not isinstance(max_len, (int, np.integer)) or max_len < 0:
        raise ValueError(f"max_len: expected a static int >= 0, got {max_len!r}")
    positions = jnp.arange(max_len)[None, :]  # [1, S]
    return positions < lengths[:, None]  # [B, S]


def key_padding_mask(key_valid: Bool[Array, "B S"]) -> Bool[Array, "B 1 1 S"]:
    """Lifts per-key validity to an attention mask (every query, every head).

    Args:
      key_valid: [B, S] bool, True = real key.

    Returns:
      [B, 1, 1, S] bool.
    """
    _checks.check_rank(key_valid, "key_valid", "BS")
    _checks.check_bool(key_valid, "key_valid")
    return key_valid[:, None, None, :]  # [B, 1, 1, S]


def cross_attention_mask(query_valid: Bool[Array, "B T"],
                         key_valid: Bool[Array, "B S"]) -> Bool[Array, "B 1 T S"]:
    """Mask for attention from queries to keys where both must be real tokens.

    Padded query rows come out fully masked, so their attention output is zero.

    Args:
      query_valid: [B, T] bool, True = real query.
      key_valid: [B, S] bool, True = real key.

    Returns:
      [B, 1, T, S] bool, `query_valid[b, t] and key_valid[b, s]`.
    """
    b, _ = _checks.check_rank(query_valid, "query_valid", "BT")
    _checks.check_bool(query_valid, "query_valid")
    _checks.check_shape(key_valid, "key_valid", (b, None), "BS")
    _checks.check_bool(key_valid, "key_valid")
    return query_valid[:, None, :, None] & key_valid[:, None, None, :]  # [B, 1, T, S]


def causal_mask(T: int, S: int | None = None) -> Bool[Array, "1 1 T S"]:
    """Lower-triangular mask: query t sees keys s <= t + (S - T).

    With S > T (queries are the last T of S positions, e.g. a decoder that
    continues a cached prefix), the diagonal is shifted so the last query sees
    every key.

    Args:
      T: static number of queries.
      S: static number of keys (default T).

    Returns:
      [1, 1, T, S] bool.
    """
    S = T if S is None else S
    for name, n in (("T", T), ("S", S)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name}: expected a static int >= 0, got {n!r}")
    # Iotas, not a NumPy constant: under jit a constant [T, S] mask is embedded
    # in the program (T * S bytes) and XLA constant-folds the ops that read it
    # (seconds of compile time at T = S = 1024); iota + compare is fused instead.
    t = jnp.arange(T)[:, None] + (S - T)  # [T, 1]
    s = jnp.arange(S)[None, :]  # [1, S]
    return (s <= t)[None, None]  # [1, 1, T, S]


def segment_mask(query_segments: Int[Array, "B T"],
                 key_segments: Int[Array, "B S"]) -> Bool[Array, "B 1 T S"]:
    """Block-diagonal mask for packed sequences.

    A query attends to keys of its own segment only. Segment id 0 marks padding
    and matches nothing, so padded query rows are fully masked (zero output).

    Args:
      query_segments: [B, T] int segment ids (1..n, 0 = pad).
      key_segments: [B, S] int segment ids (1..n, 0 = pad).

    Returns:
      [B, 1, T, S] bool.
    """
    b, _ = _checks.check_rank(query_segments, "query_segments", "BT")
    _checks.check_int(query_segments, "query_segments")
    _checks.check_shape(key_segments, "key_segments", (b, None), "BS")
    _checks.check_int(key_segments, "key_segments")
    q = query_segments[:, None, :, None]  # [B, 1, T, 1]
    k = key_segments[:, None, None, :]  # [B, 1, 1, S]
    return (q == k) & (q != 0)  # [B, 1, T, S]


def combine_masks(*masks: Bool[Array, "..."] | None) -> Bool[Array, "..."] | None:
    """Logical AND of masks; `None`s are skipped.

    Args:
      *masks: bool arrays broadcastable to a common shape, or None.

    Returns:
      The broadcast AND (rank = the largest rank given), or None if every
      mask is None.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    for i, m in enumerate(present):
        _checks.check_bool(m, f"masks[{i}]")
    ndim = max(jnp.ndim(m) for m in present)
    shapes = [(1,) * (ndim - jnp.ndim(m)) + tuple(jnp.shape(m)) for m in present]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            "masks: expected shapes broadcastable to one another, got "
            + ", ".join(_checks.fmt(jnp.shape(m)) for m in present)) from None
    out = _checks.to_rank(present[0], ndim)
    for m in present[1:]:
        out = jnp.logical_and(out, _checks.to_rank(m, ndim))
    return out
