"""One decoder step of the RNN encoder-decoder family, for all three attentions.

* "none" -- fixed-size context (Cho et al. 2014 §2.2; Sutskever et al. 2014):
  c = [->h_S; <-h_1] is fed at every step, s_t = f(s_{t-1}, [y_{t-1}; c]),
  p(y_t) = g(s_t, c, y_{t-1}). A fair baseline: the same cells, bridge and deep
  output as the attention models, only the context is fixed.
* "bahdanau" -- e_tj = v^T tanh(W s_{t-1} + U h_j) (eq. 6), alpha = softmax (eq. 7),
  c_t = sum_j alpha_tj h_j (eq. 5), s_t = f(s_{t-1}, [y_{t-1}; c_t]) (eq. 4),
  p(y_t) = g(s_t, c_t, y_{t-1}) (eq. 4); U h_j is computed once per sentence.
* "luong" -- h_t = f(h_{t-1}, [y_{t-1}; h~_{t-1}]) (input feeding, §3.3), global
  attention on h_t with the dot / general / concat score (eq. 8),
  h~_t = tanh(W_c [c_t; h_t]) (eq. 5), p(y_t) = softmax(W_s h~_t) (eq. 6).

The same module is scanned over time for teacher forcing (optionally with
scheduled sampling, Bengio et al. 2015) and called once per step when decoding.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.attention import additive_attention, luong_attention
from jaxattn.models.configs import RNNConfig
from jaxattn.models.rnn_encoder import CELLS, final_hidden
from jaxattn.scores import dot_score, general_score

__all__ = ["DecoderCell", "needs_projected_keys"]


def needs_projected_keys(config: RNNConfig) -> bool:
    """Whether the attention uses keys pre-projected to A once per sentence (U h_j)."""
    return config.attention == "bahdanau" or (
        config.attention == "luong" and config.score == "concat")


def _f32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


class DecoderCell(nn.Module):
    """s_{t-1}, y_{t-1} -> s_t, logits_t (and alignment_t).

    Memory (per source sentence, built by `RNNSeq2Seq.encode`):
      "values": [B, S, De] encoder annotations h_j (zero at padding);
      "valid": [B, S] bool; "keys": [B, S, A] = U h_j (additive / concat only);
      "context": [B, De] fixed context ("none" only).
    Carry: "rnn": per-layer cell carries (float32); "feed": [B, Dh] h~_{t-1}
      (Luong only); "logits": [B, V] previous logits (scheduled sampling only).

    Attributes:
      config: the model's `RNNConfig`.
    """

    config: RNNConfig

    def setup(self):
        cfg = self.config
        dh, a = cfg.dec_hidden, cfg.attn_dim
        dense = functools.partial(nn.Dense, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.embed = nn.Embed(cfg.vocab_size, cfg.embed_dim, param_dtype=cfg.param_dtype)
        self.cells = [CELLS[cfg.cell](dh, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
                      for _ in range(cfg.num_layers)]
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if needs_projected_keys(cfg):
            self.w_query = self.param("w_query", nn.initializers.lecun_normal(), (dh, a),
                                      cfg.param_dtype)
            self.v = self.param("v", nn.initializers.normal(a ** -0.5), (a,), cfg.param_dtype)
        if cfg.attention == "luong":
            if cfg.score == "general":
                self.w_score = self.param("w_score", nn.initializers.lecun_normal(),
                                          (dh, cfg.enc_output_size), cfg.param_dtype)
            self.combine = dense(dh, use_bias=False)  # W_c (Luong eq. 5)
        else:
            self.readout = dense(dh)  # deep output g(s_t, c_t, y_{t-1})
        self.output = dense(cfg.vocab_size)

    def _attend(self, query, memory):
        """query [B, Dh] -> (context [B, De], weights [B, S])."""
        cfg = self.config
        dtype = cfg.dtype
        q = query.astype(dtype)[:, None, :]  # [B, 1, Dh]
        values = memory["values"]
        if needs_projected_keys(cfg):
            context, weights = additive_attention(
                q, memory["keys"], values, self.v.astype(dtype),
                w_query=self.w_query.astype(dtype), w_key=None, mask=memory["valid"])
        else:
            if cfg.score == "general":
                score_fn = functools.partial(general_score, w=self.w_score.astype(dtype))
            else:
                score_fn = dot_score
            context, weights = luong_attention(q, values, values, score_fn=score_fn,
                                               mask=memory["valid"])
        return context[:, 0], weights[:, 0]  # [B, De], [B, S]

    def __call__(self, carry, xs, memory, *, train: bool = False):
        """One step.

        Args:
          carry: see class docstring.
          xs: {"token": [B] int gold y_{t-1}} plus, under scheduled sampling,
            {"use_model": [B] bool, "key": PRNG key}: where use_model, y_{t-1} is
            sampled from the previous step's logits instead.
          memory: see class docstring.
          train: enables dropout.

        Returns:
          (new carry, (logits [B, V] float32, weights [B, S] float32 or None)).
        """
        cfg = self.config
        token = xs["token"]  # [B]
        if "use_model" in xs:
            sampled = jax.random.categorical(xs["key"], carry["logits"]).astype(token.dtype)  # [B]
            token = jnp.where(xs["use_model"], sampled, token)  # [B]
        emb = self.embed(token).astype(cfg.dtype)  # [B, E]
        emb = self.dropout(emb, deterministic=not train)
        weights = None
        if cfg.attention == "bahdanau":
            context, weights = self._attend(final_hidden(carry["rnn"][-1]), memory)  # from s_{t-1}
            x = jnp.concatenate([emb, context.astype(cfg.dtype)], axis=-1)  # [B, E + De]
        elif cfg.attention == "none":
            context = memory["context"]  # [B, De]
            x = jnp.concatenate([emb, context.astype(cfg.dtype)], axis=-1)  # [B, E + De]
        else:
            x = jnp.concatenate([emb, carry["feed"].astype(cfg.dtype)], axis=-1)  # [B, E + Dh]
        new_rnn = []
        for layer, cell in enumerate(self.cells):
            if layer:
                x = self.dropout(x, deterministic=not train)
            layer_carry, x = cell(carry["rnn"][layer], x.astype(cfg.dtype))  # x: [B, Dh]
            new_rnn.append(_f32(layer_carry))
        new_carry = {"rnn": tuple(new_rnn)}
        if cfg.attention == "luong":
            context, weights = self._attend(x, memory)  # from h_t
            h_att = jnp.tanh(self.combine(
                jnp.concatenate([context.astype(cfg.dtype), x.astype(cfg.dtype)], axis=-1)))  # [B, Dh]
            new_carry["feed"] = h_att.astype(jnp.float32)
            out = h_att
        else:
            out = jnp.tanh(self.readout(jnp.concatenate(
                [x.astype(cfg.dtype), context.astype(cfg.dtype), emb], axis=-1)))  # [B, Dh]
        out = self.dropout(out, deterministic=not train)
        logits = self.output(out).astype(jnp.float32)  # [B, V]
        if "logits" in carry:
            new_carry["logits"] = logits
        if weights is not None:
            weights = weights.astype(jnp.float32)
        return new_carry, (logits, weights)
