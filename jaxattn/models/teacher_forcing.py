"""Decoder inputs for teacher forcing (Williams & Zipser 1989; Sutskever 2014 §3.1).

The decoder reads the gold target shifted right by one with <sos> in front, so
position t predicts target t from targets < t. Packed rows restart with <sos> at
every segment start. Targets end with <eos> (the batch format in `jaxattn.models`); the
decoder input is built here, never by the data pipeline.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxattn import _checks

__all__ = ["shift_right"]


def shift_right(targets, bos_id: int, segmentation=None):
    """Decoder input = targets shifted right with `bos_id` in front.

    Args:
      targets: [B, T] int target ids (0-padded).
      bos_id: the <sos> id.
      segmentation: optional [B, T] int segment ids of a packed row (1..n, 0 = pad);
        each segment's first position gets `bos_id` instead of the previous
        segment's last token.

    Returns:
      [B, T] int decoder inputs.
    """
    _checks.check_rank(targets, "targets", "BT")
    _checks.check_int(targets, "targets")
    bos = jnp.full_like(targets[:, :1], bos_id)  # [B, 1]
    shifted = jnp.concatenate([bos, targets[:, :-1]], axis=1)  # [B, T]
    if segmentation is None:
        return shifted
    _checks.check_shape(segmentation, "segmentation", targets.shape, "BT")
    prev_segment = jnp.concatenate(
        [jnp.zeros_like(segmentation[:, :1]), segmentation[:, :-1]], axis=1)  # [B, T]
    return jnp.where(segmentation == prev_segment, shifted, bos_id)  # [B, T]
