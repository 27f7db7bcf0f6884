"""The RNN decoder's attentions, one module each, chosen through `ATTENTIONS`.

* "none" -- fixed-size context (Cho et al. 2014 §2.2; Sutskever et al. 2014):
  c = [->h_S; <-h_1] is fed at every step, s_t = f(s_{t-1}, [y_{t-1}; c]),
  p(y_t) = g(s_t, c, y_{t-1}). A fair baseline: the same cells, bridge and deep
  output as the attention models, only the context is fixed.
* "bahdanau" -- e_tj = v^T tanh(W s_{t-1} + U h_j) (eq. 6), alpha = softmax (eq. 7),
  c_t = sum_j alpha_tj h_j (eq. 5), s_t = f(s_{t-1}, [y_{t-1}; c_t]) (eq. 4),
  p(y_t) = g(s_t, c_t, y_{t-1}) (eq. 4); U h_j is computed once per sentence.
* "luong" -- h_t = f(h_{t-1}, [y_{t-1}; h~_{t-1}]) (input feeding, §3.3), global
  attention on h_t with an energy from `jaxattn.LUONG_SCORES` (eq. 8, chosen by
  `RNNConfig.score`), h~_t = tanh(W_c [c_t; h_t]) (eq. 5), p(y_t) = softmax(W_s h~_t)
  (eq. 6).

Every module owns its parameters and answers the decoder cell's four calls:

    prepare(values [B, S, C], finals) -> memory entries     once per source sentence
    initial_state(batch) -> state entries                   carried from step to step
    read(carry, memory) -> (x [B, X], read)                 before the recurrent layers:
                                                            what joins the embedding y_{t-1}
    write(h [B, Q], emb [B, E], read, memory) -> (out [B, Q], state entries,
                                                   weights [B, S] or None)

A new attention is one module here and one `ATTENTIONS` entry; `RNNConfig` takes
its names from the registry. Widths: Q decoder state, C encoder annotation, A
score hidden size, E embedding (see `RNNConfig`).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.attention import additive_attention, luong_attention
from jaxattn.models.rnn_encoder import RNNEncoder, final_hidden
from jaxattn.scores import LUONG_SCORES

if TYPE_CHECKING:  # configs.py imports this module for the names of the registry
    from jaxattn.models.configs import RNNConfig

__all__ = ["ATTENTIONS", "NoAttention", "BahdanauAttention", "LuongAttention"]


def _dense(cfg: RNNConfig, features: int, **kwargs) -> nn.Dense:
    return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, **kwargs)


class _Attention(nn.Module):
    """What every attention shares: its config, no extra state, no config constraint."""

    config: RNNConfig

    @staticmethod
    def check_config(config: RNNConfig) -> None:
        """Raises ValueError if `config` cannot build this attention (called by `RNNConfig`)."""
        del config

    def initial_state(self, batch: int):
        del batch
        return {}


class _DeepOutput(_Attention):
    """g(s_t, c_t, y_{t-1}) = tanh(W_o [s_t; c_t; y_{t-1}]) (Bahdanau 2014 eq. 4, Cho 2014)."""

    def write(self, h, emb, read, memory):
        del memory
        dtype = self.config.dtype
        context, weights = read  # [B, C], [B, S] or None
        out = jnp.tanh(self.readout(jnp.concatenate(
            [h.astype(dtype), context.astype(dtype), emb], axis=-1)))  # [B, Q]
        return out, {}, weights


class NoAttention(_DeepOutput):
    """The fixed context c = [->h_S; <-h_1] at every step (Cho 2014 §2.2)."""

    def setup(self):
        self.readout = _dense(self.config, self.config.dec_hidden)

    def prepare(self, values, finals):
        del values
        return {"context": RNNEncoder.summary(finals, self.config.bidirectional)}  # [B, C]

    def read(self, carry, memory):
        del carry
        return memory["context"], (memory["context"], None)  # [B, C]


class BahdanauAttention(_DeepOutput):
    """Additive attention from s_{t-1}, its context fed to the RNN (Bahdanau 2014 eq. 4-6)."""

    def setup(self):
        cfg = self.config
        q, a = cfg.dec_hidden, cfg.attn_dim
        self.w_query = self.param("w_query", nn.initializers.lecun_normal(), (q, a),
                                  cfg.param_dtype)  # W
        self.v = self.param("v", nn.initializers.normal(a ** -0.5), (a,), cfg.param_dtype)
        self.key_projection = _dense(cfg, a, use_bias=False)  # U
        self.readout = _dense(cfg, q)

    def prepare(self, values, finals):
        del finals
        return {"keys": self.key_projection(values)}  # U h_j once per sentence: [B, S, A]

    def read(self, carry, memory):
        dtype = self.config.dtype
        query = final_hidden(carry["rnn"][-1]).astype(dtype)[:, None, :]  # s_{t-1}: [B, 1, Q]
        context, weights = additive_attention(
            query, memory["keys"], memory["values"], self.v.astype(dtype),
            w_query=self.w_query.astype(dtype), w_key=None, mask=memory["valid"])
        context, weights = context[:, 0], weights[:, 0]  # [B, C], [B, S]
        return context, (context, weights)


def _score_init(shape):
    """LeCun normal in the first axis; a vector v [A] is N(0, 1/A)."""
    if len(shape) == 1:
        return nn.initializers.normal(shape[0] ** -0.5)
    return nn.initializers.lecun_normal()


class LuongAttention(_Attention):
    """Global attention from h_t with input feeding (Luong 2015 §3.1, §3.3).

    The energy is `LUONG_SCORES[config.score]`; this module owns one parameter
    per weight the score declares (`weight_shapes`), named after its keyword.
    """

    def setup(self):
        cfg = self.config
        shapes = LUONG_SCORES[cfg.score].weight_shapes(
            cfg.dec_hidden, cfg.enc_output_size, cfg.attn_dim, cfg.max_source_length)
        self.score_weights = {name: self.param(name, _score_init(shape), shape, cfg.param_dtype)
                              for name, shape in shapes.items()}
        self.combine = _dense(cfg, cfg.dec_hidden, use_bias=False)  # W_c (eq. 5)

    @staticmethod
    def check_config(cfg: RNNConfig) -> None:
        """Raises if the score cannot take these widths (e.g. "dot" with Q != C)."""
        score = LUONG_SCORES[cfg.score]
        q, c = cfg.dec_hidden, cfg.enc_output_size
        shapes = score.weight_shapes(q, c, cfg.attn_dim, cfg.max_source_length)
        spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        try:
            jax.eval_shape(score.energy, spec((1, 1, q)), spec((1, 1, c)),
                           **{name: spec(shape) for name, shape in shapes.items()})
        except ValueError as e:
            raise ValueError(
                f"RNNConfig.score={cfg.score!r} does not fit decoder_hidden_size={q} and the "
                f"encoder output size {c} (hidden_size x directions): {e}") from None

    def prepare(self, values, finals):
        del values, finals
        return {}

    def initial_state(self, batch: int):
        return {"feed": jnp.zeros((batch, self.config.dec_hidden), jnp.float32)}  # h~_0: [B, Q]

    def read(self, carry, memory):
        del memory
        return carry["feed"], None  # h~_{t-1}: [B, Q]

    def write(self, h, emb, read, memory):
        del emb, read
        dtype = self.config.dtype
        weights = {name: w.astype(dtype) for name, w in self.score_weights.items()}
        score_fn = functools.partial(LUONG_SCORES[self.config.score], **weights)
        values = memory["values"]  # [B, S, C]
        context, alignment = luong_attention(h.astype(dtype)[:, None, :], values, values,
                                             score_fn=score_fn, mask=memory["valid"])
        h_att = jnp.tanh(self.combine(jnp.concatenate(
            [context[:, 0].astype(dtype), h.astype(dtype)], axis=-1)))  # h~_t: [B, Q]
        return h_att, {"feed": h_att.astype(jnp.float32)}, alignment[:, 0]


# `RNNConfig.attention` -> module class; `RNNConfig` calls its `check_config` at construction.
ATTENTIONS = {
    "none": NoAttention,
    "bahdanau": BahdanauAttention,
    "luong": LuongAttention,
}
