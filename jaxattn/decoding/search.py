"""Greedy and sampling decoding, jit-compiled and batched.

Greedy: y_t = argmax p(y | y_<t, x). Sampling: y_t ~ softmax(logits / temperature),
optionally restricted to the k most likely tokens (top-k, Fan et al. 2018).
Decoding is one `lax.while_loop` that stops when every row has produced <eos> or
`max_len` tokens exist; rows that finished keep emitting padding.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxattn.decoding.steppers import encode, make_stepper, model_arguments, special_ids

__all__ = ["greedy_decode", "sample_decode", "DecodeState"]


class DecodeState(NamedTuple):
    """The carry of the greedy / sampling loop."""

    index: jax.Array  # scalar int32: the position being decoded
    tokens: jax.Array  # [B, L] int32 output so far (0 after a row's <eos>)
    last: jax.Array  # [B] int32 token fed to the next step (<sos> at step 0)
    finished: jax.Array  # [B] bool: the row has emitted <eos>
    state: Any  # the stepper's decoder state (KV caches / RNN carries)
    rng: jax.Array  # PRNG key, split every step


def _check_len(max_len):
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len: expected a positive int, got {max_len!r}")


def _decode_loop(model, variables, inputs, rng, *, max_len, bos_id, eos_id, cached, choose):
    encoded = encode(model, variables, inputs)
    stepper = make_stepper(model, variables, encoded, max_len, cached)
    batch = inputs.shape[0]

    def cond(c: DecodeState):
        return (c.index < max_len) & ~jnp.all(c.finished)

    def body(c: DecodeState):
        rng, step_rng = jax.random.split(c.rng)
        logits, state = stepper.step(stepper.memory, c.state, c.last, c.index)  # [B, V]
        token = choose(logits, step_rng).astype(jnp.int32)  # [B]
        token = jnp.where(c.finished, 0, token)  # [B]
        tokens = jax.lax.dynamic_update_slice_in_dim(c.tokens, token[:, None], c.index, axis=1)  # [B, L]
        return DecodeState(index=c.index + 1, tokens=tokens, last=token,
                           finished=c.finished | (token == eos_id), state=state, rng=rng)

    start = DecodeState(index=jnp.int32(0), tokens=jnp.zeros((batch, max_len), jnp.int32),
                        last=jnp.full((batch,), bos_id, jnp.int32),
                        finished=jnp.zeros((batch,), bool), state=stepper.state, rng=rng)
    return jax.lax.while_loop(cond, body, start).tokens


@functools.partial(jax.jit, static_argnames=("model", "max_len", "bos_id", "eos_id", "cached"))
def _greedy(model, variables, inputs, *, max_len, bos_id, eos_id, cached):
    return _decode_loop(model, variables, inputs, jax.random.key(0), max_len=max_len,
                        bos_id=bos_id, eos_id=eos_id, cached=cached,
                        choose=lambda logits, _: jnp.argmax(logits, axis=-1))


def greedy_decode(model, params, inputs=None, *, max_len: int, bos_id: int | None = None,
                  eos_id: int | None = None, cached: bool = True):
    """Greedy decoding.

    Args:
      model: a jaxattn model (`build_model(config)`), or a `jaxattn.nnx.Model`, which holds its
        weights: call `greedy_decode(model, inputs, ...)` (every decoding function takes it so).
      params: {"params": ...} variables, or the bare params tree.
      inputs: [B, S] int source ids (0-padded).
      max_len: T', the most output tokens.
      bos_id, eos_id: special ids; None = the model config's.
      cached: incremental decoding (default) or naive full recomputation.

    Returns:
      [B, T'] int32 tokens, each row ending at its first <eos>, 0-padded after it
      (a row that never emits <eos> fills all T').
    """
    _check_len(max_len)
    model, variables, inputs = model_arguments("greedy_decode", model, params, inputs)
    bos_id, eos_id = special_ids(model, bos_id, eos_id)
    return _greedy(model, variables, inputs, max_len=max_len, bos_id=bos_id,
                   eos_id=eos_id, cached=cached)


def _sampler(temperature: float, top_k: int):
    def choose(logits, rng):
        logits = logits / temperature  # [B, V]
        if top_k > logits.shape[-1]:
            raise ValueError(f"top_k: expected <= vocabulary size {logits.shape[-1]}, got {top_k}")
        if top_k:
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
            logits = jnp.where(logits >= kth, logits, -jnp.inf)  # [B, V]
        return jax.random.categorical(rng, logits, axis=-1)  # [B]
    return choose


@functools.partial(jax.jit, static_argnames=("model", "max_len", "bos_id", "eos_id", "cached",
                                             "temperature", "top_k"))
def _sample(model, variables, inputs, rng, *, max_len, bos_id, eos_id, cached, temperature,
            top_k):
    return _decode_loop(model, variables, inputs, rng, max_len=max_len, bos_id=bos_id,
                        eos_id=eos_id, cached=cached, choose=_sampler(temperature, top_k))


def sample_decode(model, params, inputs, rng=None, *, max_len: int, temperature: float = 1.0,
                  top_k: int = 0, bos_id: int | None = None, eos_id: int | None = None,
                  cached: bool = True):
    """Ancestral sampling with temperature and optional top-k truncation.

    Args:
      model, params, inputs, max_len, bos_id, eos_id, cached: as `greedy_decode`.
      rng: PRNG key.
      temperature: > 0; lower is greedier.
      top_k: sample among the k most likely tokens (0 = all).

    Returns:
      [B, T'] int32 tokens (eos-terminated, 0-padded).
    """
    _check_len(max_len)
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k: expected an int >= 0, got {top_k!r}")
    model, variables, inputs, rng = model_arguments("sample_decode", model, params, inputs, rng)
    bos_id, eos_id = special_ids(model, bos_id, eos_id)
    return _sample(model, variables, inputs, rng, max_len=max_len, bos_id=bos_id,
                   eos_id=eos_id, cached=cached, temperature=float(temperature), top_k=top_k)
