"""Jit-compiled, batched decoding for every jaxattn model.

    tokens = greedy_decode(model, params, inputs, max_len=64)            # [B, T']
    tokens = beam_search(model, params, inputs, max_len=64, beam_size=4, alpha=0.6)
    tokens = sample_decode(model, params, inputs, rng, max_len=64, temperature=0.8, top_k=20)

`model` is `jaxattn.models.build_model(config)`; `params` the variables dict (or the
bare params tree). A `jaxattn.nnx.Model` holds its weights and is passed without them:
`greedy_decode(model, inputs, max_len=64)`, `sample_decode(model, inputs, rng, ...)`. <sos> and <eos> are the model config's `bos_id` / `eos_id` unless
given. Outputs are eos-terminated and 0-padded. By default decoding is
incremental (`cached=True`): Transformer decoder self-attention reads a KV cache
and cross-attention keys/values are projected once per source sentence; RNNs carry
their state. `cached=False` recomputes the whole prefix every step (the reference
that cached decoding matches token for token).
"""
from __future__ import annotations

from jaxattn.decoding.beam import BeamState, beam_search, length_penalty
from jaxattn.decoding.search import DecodeState, greedy_decode, sample_decode
from jaxattn.decoding.steppers import Stepper, make_stepper

__all__ = [
    "greedy_decode",
    "beam_search",
    "sample_decode",
    "length_penalty",
    "make_stepper",
    "Stepper",
    "BeamState",
    "DecodeState",
]
