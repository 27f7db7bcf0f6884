"""One decoder step of the RNN encoder-decoder family, whatever its attention.

    y_{t-1} -> embedding -> [emb; attention.read(...)] -> stacked cells -> h_t
            -> attention.write(h_t, ...) -> dropout -> W_s -> logits_t

The attention module (`rnn_attention.ATTENTIONS[config.attention]`: none,
Bahdanau 2014 or Luong 2015) decides what joins the embedding before the
recurrent layers and what the output layer reads after them; this cell has one
code path for all of them.

The same module is scanned over time for teacher forcing (optionally with
scheduled sampling, Bengio et al. 2015) and called once per step when decoding.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn.models.rnn_attention import ATTENTIONS
from jaxattn.models.rnn_encoder import CELLS

if TYPE_CHECKING:
    from jaxattn.models.configs import RNNConfig

__all__ = ["DecoderCell"]


def _f32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


class DecoderCell(nn.Module):
    """s_{t-1}, y_{t-1} -> s_t, logits_t (and alignment_t).

    Memory (per source sentence, built by `RNNSeq2Seq.encode`):
      "values": [B, S, C] encoder annotations h_j (zero at padding);
      "valid": [B, S] bool; plus what the attention's `prepare` adds
      (Bahdanau: "keys" [B, S, A] = U h_j; none: "context" [B, C]).
    Carry: "rnn": per-layer cell carries (float32); what the attention's
      `initial_state` adds (Luong: "feed" [B, Q] = h~_{t-1}); "logits": [B, V]
      previous logits (scheduled sampling only).

    Attributes:
      config: the model's `RNNConfig`.
    """

    config: RNNConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.embed_dim, param_dtype=cfg.param_dtype)
        self.cells = [CELLS[cfg.cell](cfg.dec_hidden, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
                      for _ in range(cfg.num_layers)]
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.attention = ATTENTIONS[cfg.attention](cfg)
        # The attention's parameters sit beside the cell's ("cell/w_query", "cell/readout"):
        # the layout of the checkpoints written before attentions were modules.
        nn.share_scope(self, self.attention)
        self.output = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype)

    def prepare(self, values, finals):
        """The attention's per-sentence memory entries (see `rnn_attention`)."""
        return self.attention.prepare(values, finals)

    def initial_state(self, batch: int):
        """The attention's step-0 state entries (see `rnn_attention`)."""
        return self.attention.initial_state(batch)

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
        extra, read = self.attention.read(carry, memory)  # [B, C] context or [B, Q] feed
        x = jnp.concatenate([emb, extra.astype(cfg.dtype)], axis=-1)  # [B, E + C or Q]
        new_rnn = []
        for layer, cell in enumerate(self.cells):
            if layer:
                x = self.dropout(x, deterministic=not train)
            layer_carry, x = cell(carry["rnn"][layer], x.astype(cfg.dtype))  # x: [B, Q]
            new_rnn.append(_f32(layer_carry))
        out, state, weights = self.attention.write(x, emb, read, memory)  # out: [B, Q]
        new_carry = {"rnn": tuple(new_rnn), **state}
        out = self.dropout(out, deterministic=not train)
        logits = self.output(out).astype(jnp.float32)  # [B, V]
        if "logits" in carry:
            new_carry["logits"] = logits
        if weights is not None:
            weights = weights.astype(jnp.float32)
        return new_carry, (logits, weights)
