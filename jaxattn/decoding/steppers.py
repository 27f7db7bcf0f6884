"""Step functions that decoding loops call: cached (incremental) or uncached.

Cached: the model's `init_cache` / `decode_step` -- for the Transformer, a KV
cache for decoder self-attention and cross-attention keys/values projected once
per source sentence; for RNNs, the recurrent state. Cost per step O(L) in the
output length.

Uncached: naive full recomputation -- every step reruns the teacher-forced
decoder on the whole (padded) prefix and reads the logits at the current position.
Cost per step O(L^2); kept as the reference that cached decoding must match token
for token, and as the benchmark baseline.

Both share one signature so greedy, sampling and beam search are written once:
`step(memory, state, tokens [B], index) -> (logits [B, V] float32, state)`.
Beam search reorders `state` (every leaf leads with the batch axis) and never
touches `memory`.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxattn import _checks

__all__ = ["Stepper", "as_variables", "encode", "make_stepper", "model_arguments", "special_ids", "unwrap_nnx"]


class Stepper(NamedTuple):
    """memory (constant), state (updated), step function."""

    memory: Any
    state: Any
    step: Callable


def as_variables(params):
    """Accepts either a variables dict {"params": ...} or a bare params tree."""
    if isinstance(params, dict) and "params" in params:
        return params
    return {"params": params}


def unwrap_nnx(model, params):
    """(Linen model, params): an NNX model's (`jaxattn.nnx.Model`) own, else the arguments as given."""
    if "flax.nnx" not in sys.modules:  # no NNX model exists yet, and importing flax.nnx takes 0.4 s
        return model, params
    from jaxattn import nnx as jaxattn_nnx  # noqa: PLC0415

    return jaxattn_nnx.as_linen(model, params)


def model_arguments(name: str, model, params, *rest) -> tuple:
    """(Linen model, variables, *rest) of a decoding call.

    A Linen model comes with its `params`. An NNX model (`jaxattn.nnx.Model`) holds its weights,
    so its callers leave `params` out, `name(model, inputs, ...)`: the positional arguments after
    the model arrive one to the left, and the last of `rest` is None.
    """
    linen, weights = unwrap_nnx(model, params)
    if linen is not model:
        if rest and rest[-1] is not None:
            raise TypeError(f"{name}: an NNX model holds its weights; call {name}(model, inputs, ...) "
                            "without params")
        return (linen, as_variables(weights), params, *rest[:-1])
    if any(arg is None for arg in rest):
        raise TypeError(f"{name}: a Linen model needs its params: {name}(model, params, inputs, ...)")
    return (model, as_variables(params), *rest)


def special_ids(model, bos_id: int | None, eos_id: int | None) -> tuple[int, int]:
    """(bos_id, eos_id), each defaulting to the model config's (None = the config's)."""
    bos_id = model.config.bos_id if bos_id is None else bos_id
    eos_id = model.config.eos_id if eos_id is None else eos_id
    return bos_id, eos_id


def encode(model, variables, inputs):
    """inputs [B, S] int -> the model's `encoded` pytree (leaves lead with B)."""
    _checks.check_rank(inputs, "inputs", "BS")
    _checks.check_int(inputs, "inputs")
    return model.apply(variables, inputs, method="encode")


def make_stepper(model, variables, encoded, max_len: int, cached: bool) -> Stepper:
    """Builds the step function for `max_len` decoding steps.

    Args:
      model: a jaxattn model (Transformer or RNNSeq2Seq).
      variables: {"params": ...}.
      encoded: the output of `model.encode`.
      max_len: L, number of decoding steps.
      cached: incremental decoding (True) or full recomputation (False).

    Returns:
      A `Stepper`.
    """
    if cached:
        memory, state = model.apply(variables, encoded, max_len, method="init_cache")

        def step(memory, state, tokens, index):
            return model.apply(variables, memory, state, tokens, index, method="decode_step")

        return Stepper(memory, state, step)

    batch = jax.tree.leaves(encoded)[0].shape[0]
    # Decoder inputs so far: position 0 is <sos>, position i the token fed at step i.
    state = {"inputs": jnp.zeros((batch, max_len), jnp.int32)}  # [B, L]

    def step(memory, state, tokens, index):
        inputs = jax.lax.dynamic_update_slice_in_dim(
            state["inputs"], tokens[:, None].astype(jnp.int32), index, axis=1)  # [B, L]
        # `decode` shifts its targets right, so pass inputs[1:] as the targets.
        targets = jnp.concatenate([inputs[:, 1:], jnp.zeros_like(inputs[:, :1])], axis=1)  # [B, L]
        logits = model.apply(variables, memory, targets, method="decode")  # [B, L, V]
        logits = jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)  # [B, V]
        return logits, {"inputs": inputs}

    return Stepper(encoded, state, step)
