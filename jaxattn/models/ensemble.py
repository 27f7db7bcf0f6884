"""Ensembles: several models of one vocabulary decoded as one.

`Ensemble(members)` has the interface of every model of the zoo (`__call__`, `encode`, `decode`,
`init_cache`, `decode_step`), so greedy search, sampling and beam search (`jaxattn.decoding`)
and teacher-forced scoring take it as they take one model. At each position its output is the
mean of the members' log-probabilities, log_softmax(logits_m) averaged over m (as OpenNMT,
Sockeye's "log_linear" and Marian combine models): a normalized geometric mean of their
distributions. Each member keeps its own encoding, memory and decoder state (a Transformer
its KV cache, an RNN its carries), so the families may be mixed.

    ensemble = Ensemble((model_a, model_b))
    params = {"members_0": params_a, "members_1": params_b}
    tokens = greedy_decode(ensemble, params, inputs, max_len=32)   # [B, T']

Members share one vocabulary and its special ids (the first member's config is the
ensemble's `config`); attention capture is per member (build each with it).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Ensemble", "ensemble_params"]


def _mean_log_probs(logits: Sequence[jax.Array]) -> jax.Array:
    """M x [..., V] logits -> [..., V] float32 mean of their log-probabilities."""
    return sum(jax.nn.log_softmax(x.astype(jnp.float32)) for x in logits) / len(logits)


def ensemble_params(params: Sequence) -> dict:
    """The members' parameter trees, in order, as the `Ensemble`'s parameters."""
    return {f"members_{i}": p for i, p in enumerate(params)}


class Ensemble(nn.Module):
    """Models of one vocabulary whose log-probabilities are averaged at every position.

    Attributes:
      members: two or more models (any families), parameters `members_0`, `members_1`, ...
    """

    members: tuple[nn.Module, ...]

    def __post_init__(self):
        if len(self.members) < 2:
            raise ValueError(f"members: got {len(self.members)} model(s), expected at least 2")
        sizes = {m.config.vocab_size for m in self.members}
        if len(sizes) != 1:
            raise ValueError(f"members: vocabulary sizes {sorted(sizes)} differ, expected one vocabulary")
        super().__post_init__()

    @property
    def config(self):
        """The first member's config: the vocabulary size and special ids every member shares."""
        return self.members[0].config

    def check_length(self, length: int, name: str) -> None:
        for member in self.members:
            member.check_length(length, name)

    def __call__(self, inputs, targets, *, train: bool = False, **kwargs):
        """Teacher forcing: [B, T, V] mean log-probabilities (each member gets the same arguments)."""
        return _mean_log_probs([m(inputs, targets, train=train, **kwargs) for m in self.members])

    def encode(self, inputs, *, train: bool = False):
        """One encoding per member (a tuple; every leaf leads with B)."""
        return tuple(m.encode(inputs, train=train) for m in self.members)

    def decode(self, encoded, targets, *, train: bool = False):
        """Without a cache: [B, T, V] mean log-probabilities of the members' `decode`."""
        return _mean_log_probs([m.decode(e, targets, train=train) for m, e in zip(self.members, encoded)])

    def init_cache(self, encoded, max_len: int):
        """(memory, state): the members' own, as tuples."""
        caches = [m.init_cache(e, max_len) for m, e in zip(self.members, encoded)]
        return tuple(c[0] for c in caches), tuple(c[1] for c in caches)

    def decode_step(self, memory, state, tokens, index):
        """tokens [B] -> ([B, V] mean log-probabilities, each member's next state)."""
        steps = [m.decode_step(mem, s, tokens, index) for m, mem, s in zip(self.members, memory, state)]
        return _mean_log_probs([logits for logits, _ in steps]), tuple(s for _, s in steps)
