"""Beam search with the GNMT length penalty (Wu et al. 2016 §7).

Hypotheses are ranked by log P(Y|X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^alpha, where
|Y| counts the emitted tokens including <eos>. Every step expands each of the k
live beams by every token and keeps the 2k best candidates: those ending in <eos>
within the top k are finished (as in fairseq, so beam size 1 is exactly greedy
search when alpha = 0), and the best k others stay live. The loop stops at
`max_len` or as soon as no live beam can still enter the finished top k: log
probabilities only decrease and lp grows with length (alpha >= 0), so a live
beam's best reachable score is log P / lp(max_len).

The decoder state (KV caches / RNN carries) is reordered by the surviving beams'
parents each step; per-sentence memory (projected cross-attention keys/values)
is tiled k times once and never reordered.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxattn.decoding.steppers import encode, make_stepper, model_arguments, special_ids

__all__ = ["beam_search", "length_penalty", "BeamState"]

_NEG = -1.0e9  # score of an empty slot; finite so that no inf - inf can appear


class BeamState(NamedTuple):
    """The carry of the beam-search loop (k = beam size, L = max_len)."""

    index: jax.Array  # scalar int32: the position being decoded
    alive_logp: jax.Array  # [B, k] log P of the live beams (_NEG: empty slot)
    alive_seq: jax.Array  # [B, k, L] int32 live hypotheses
    finished_scores: jax.Array  # [B, k] length-normalised scores of finished ones (_NEG: none)
    finished_seq: jax.Array  # [B, k, L] int32 finished hypotheses (<eos>-terminated)
    last: jax.Array  # [B * k] int32 token fed to the next step
    state: Any  # the stepper's decoder state, leaves [B * k, ...]


def length_penalty(length, alpha: float):
    """GNMT lp(Y) = ((5 + |Y|) / 6)^alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x, beam_index):
    """x [B, k_in, ...], beam_index [B, k_out] -> [B, k_out, ...]."""
    index = beam_index.reshape(beam_index.shape + (1,) * (x.ndim - 2))  # [B, k_out, 1...]
    return jnp.take_along_axis(x, index, axis=1)


def _reorder_state(state, beam_index, beam_size):
    """Leaves [B * k, ...] -> rows of the chosen parents, [B * k, ...]."""
    def gather(x):
        b = x.shape[0] // beam_size
        x = x.reshape((b, beam_size) + x.shape[1:])  # [B, k, ...]
        return _gather_beams(x, beam_index).reshape((b * beam_size,) + x.shape[2:])
    return jax.tree.map(gather, state)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "alpha", "bos_id",
                                             "eos_id", "cached"))
def _beam_search(model, variables, inputs, *, max_len, beam_size, alpha, bos_id, eos_id, cached):
    k = beam_size
    batch = inputs.shape[0]
    encoded = encode(model, variables, inputs)
    encoded = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), encoded)  # leaves [B * k, ...]
    stepper = make_stepper(model, variables, encoded, max_len, cached)
    max_lp = length_penalty(max_len, alpha)

    def cond(c: BeamState):
        best_reachable = c.alive_logp[:, 0] / max_lp  # [B]
        worst_finished = jnp.min(c.finished_scores, axis=1)  # [B] (_NEG while fewer than k finished)
        return (c.index < max_len) & jnp.any(worst_finished < best_reachable)

    def body(c: BeamState):
        index = c.index
        logits, state = stepper.step(stepper.memory, c.state, c.last, index)  # [B * k, V]
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits).reshape(batch, k, vocab)  # [B, k, V]
        scores = (c.alive_logp[:, :, None] + logp).reshape(batch, k * vocab)  # [B, k * V]
        cand_logp, cand_index = jax.lax.top_k(scores, 2 * k)  # [B, 2k]
        parent = cand_index // vocab  # [B, 2k]
        token = (cand_index % vocab).astype(jnp.int32)  # [B, 2k]
        cand_seq = _gather_beams(c.alive_seq, parent)  # [B, 2k, L]
        cand_seq = jax.lax.dynamic_update_slice_in_dim(cand_seq, token[:, :, None], index, axis=2)
        is_eos = token == eos_id  # [B, 2k]

        # Finished: <eos> candidates ranked within the top k, merged with earlier ones.
        in_top_k = jnp.arange(2 * k)[None, :] < k  # [1, 2k]
        new_fin = jnp.where(is_eos & in_top_k & (cand_logp > _NEG / 2),
                            cand_logp / length_penalty(index + 1, alpha), _NEG)  # [B, 2k]
        fin_scores, keep = jax.lax.top_k(
            jnp.concatenate([c.finished_scores, new_fin], axis=1), k)  # [B, k]
        fin_seq = _gather_beams(jnp.concatenate([c.finished_seq, cand_seq], axis=1), keep)  # [B, k, L]

        # Live: the k best candidates that did not end in <eos> (at least k exist).
        alive_logp, pick = jax.lax.top_k(jnp.where(is_eos, _NEG, cand_logp), k)  # [B, k]
        return BeamState(
            index=index + 1, alive_logp=alive_logp,
            alive_seq=_gather_beams(cand_seq, pick),  # [B, k, L]
            finished_scores=fin_scores, finished_seq=fin_seq,
            last=_gather_beams(token, pick).reshape(batch * k),  # [B * k]
            state=_reorder_state(state, _gather_beams(parent, pick), k))

    first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, _NEG)  # [k]
    start = BeamState(
        index=jnp.int32(0),
        alive_logp=jnp.broadcast_to(first_beam_only[None, :], (batch, k)),  # [B, k]
        alive_seq=jnp.zeros((batch, k, max_len), jnp.int32),  # [B, k, L]
        finished_scores=jnp.full((batch, k), _NEG, jnp.float32),  # [B, k]
        finished_seq=jnp.zeros((batch, k, max_len), jnp.int32),  # [B, k, L]
        last=jnp.full((batch * k,), bos_id, jnp.int32),  # [B * k]
        state=stepper.state)
    end = jax.lax.while_loop(cond, body, start)
    # Rows with no finished hypothesis return their live beams (no <eos> within max_len).
    none_finished = (end.finished_scores[:, 0] <= _NEG / 2)[:, None]  # [B, 1]
    scores = jnp.where(none_finished, end.alive_logp / max_lp, end.finished_scores)  # [B, k]
    seqs = jnp.where(none_finished[:, :, None], end.alive_seq, end.finished_seq)  # [B, k, L]
    return seqs, scores


def beam_search(model, params, inputs=None, *, max_len: int, beam_size: int = 4, alpha: float = 0.6,
                bos_id: int | None = None, eos_id: int | None = None, cached: bool = True,
                return_all: bool = False):
    """Batched beam search.

    Args:
      model: a jaxattn model (`build_model(config)`), or a `jaxattn.nnx.Model` (then
        `beam_search(model, inputs, ...)`: it holds its weights).
      params: {"params": ...} variables, or the bare params tree.
      inputs: [B, S] int source ids (0-padded).
      max_len: T', the most output tokens.
      beam_size: k.
      alpha: GNMT length-penalty exponent (>= 0; 0 = raw log-probability).
      bos_id, eos_id: special ids; None = the model config's.
      cached: incremental decoding (default) or naive full recomputation.
      return_all: also return every beam and its score.

    Returns:
      [B, T'] int32 best hypotheses (eos-terminated, 0-padded), or with
      `return_all` (tokens [B, k, T'] best first, scores [B, k] float32).
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len: expected a positive int, got {max_len!r}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size: expected a positive int, got {beam_size!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha: expected a length-penalty exponent >= 0, got {alpha!r}")
    model, variables, inputs = model_arguments("beam_search", model, params, inputs)
    bos_id, eos_id = special_ids(model, bos_id, eos_id)
    seqs, scores = _beam_search(model, variables, inputs, max_len=max_len,
                                beam_size=beam_size, alpha=float(alpha), bos_id=bos_id,
                                eos_id=eos_id, cached=cached)
    return (seqs, scores) if return_all else seqs[:, 0]
