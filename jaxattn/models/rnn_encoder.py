"""Padding-aware RNN encoder and the encoder-to-decoder bridge.

Encoder: stacked LSTM/GRU layers, optionally bidirectional, whose annotation
h_j = [->h_j; <-h_j] summarises the source around word j (Bahdanau et al. 2014
§3.2). `flax.linen.RNN(seq_lengths=...)` freezes each row's final carry at its
last real token and the backward direction starts at the last real token, so
neither outputs nor final states depend on trailing padding.

Bridge: the decoder's initial state is s_0 = tanh(W_s [->h_S; <-h_1]) per layer
(Bahdanau 2014 §A.2.2 uses the backward state; Cho et al. 2014 eq. in §2.2 use
tanh(V' c)); both directions are given to it here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn import masks

if TYPE_CHECKING:  # configs.py imports this module for the names of `CELLS`
    from jaxattn.models.configs import RNNConfig

__all__ = ["CELLS", "RNNEncoder", "Bridge", "final_hidden"]

# Cell choice by config name (no strings as code: an explicit dict of classes).
CELLS = {
    "lstm": nn.OptimizedLSTMCell,
    "gru": nn.GRUCell,
}


def final_hidden(carry):
    """The output state h of a cell carry (LSTM carry is (c, h); GRU carry is h)."""
    return carry[1] if isinstance(carry, tuple) else carry


class RNNEncoder(nn.Module):
    """Stacked (bi)directional RNN over embedded source tokens.

    Attributes:
      config: the model's `RNNConfig`.
    """

    config: RNNConfig

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        """Encodes a padded source batch.

        Args:
          inputs: [B, S] int source ids, `pad_id`-padded.
          train: enables dropout (needs a "dropout" rng).

        Returns:
          (outputs [B, S, De] (zero at padding; De = enc_output_size),
           finals: per layer, the final carry (a (forward, backward) pair when
             bidirectional),
           valid [B, S] bool).
        """
        cfg = self.config
        valid = masks.padding_mask(inputs, cfg.pad_id)  # [B, S]
        lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)  # [B]
        x = nn.Embed(cfg.vocab_size, cfg.embed_dim, param_dtype=cfg.param_dtype,
                     name="embed")(inputs).astype(cfg.dtype)  # [B, S, E]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
        cell_cls = CELLS[cfg.cell]

        def make_rnn(name):
            cell = cell_cls(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
            return nn.RNN(cell, return_carry=True, name=name)

        finals = []
        for layer in range(cfg.num_layers):
            if layer:
                x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
            if cfg.bidirectional:
                rnn = nn.Bidirectional(make_rnn(f"forward_{layer}"), make_rnn(f"backward_{layer}"),
                                       return_carry=True, name=f"layer_{layer}")
            else:
                rnn = make_rnn(f"layer_{layer}")
            carry, x = rnn(x, seq_lengths=lengths)  # x: [B, S, De]
            # Outputs past a row's length are not used by the recurrence; zero them so
            # nothing downstream can read them by accident.
            x = jnp.where(valid[:, :, None], x, jnp.zeros((), x.dtype))  # [B, S, De]
            finals.append(carry)
        return x, finals, valid

    @staticmethod
    def summary(finals, bidirectional: bool):
        """Fixed-size source summary: the top layer's final state(s).

        Args:
          finals: the per-layer final carries from `__call__`.
          bidirectional: whether `finals` hold (forward, backward) pairs.

        Returns:
          [B, De] = [->h_S; <-h_1] (bidirectional) or h_S.
        """
        top = finals[-1]
        if bidirectional:
            forward, backward = top
            return jnp.concatenate([final_hidden(forward), final_hidden(backward)], axis=-1)  # [B, 2Hd]
        return final_hidden(top)  # [B, Hd]


class Bridge(nn.Module):
    """Maps encoder final carries to the decoder's initial carries, layer by layer.

    Each carry component (LSTM: c and h; GRU: h) gets its own
    tanh(W [forward; backward] + b) (Bahdanau 2014 §A.2.2, s_0 = tanh(W_s <-h_1)).

    Attributes:
      config: the model's `RNNConfig`.
    """

    config: RNNConfig

    @nn.compact
    def __call__(self, finals):
        """Args: finals: per-layer encoder final carries. Returns: per-layer decoder carries (float32)."""
        cfg = self.config
        carries = []
        for layer, carry in enumerate(finals):
            if cfg.bidirectional:
                forward, backward = carry
                joined = jax.tree.map(lambda f, b: jnp.concatenate([f, b], axis=-1),
                                      forward, backward)  # leaves [B, 2Hd]
            else:
                joined = carry  # leaves [B, Hd]
            leaves, treedef = jax.tree.flatten(joined)
            mapped = [
                jnp.tanh(nn.Dense(cfg.dec_hidden, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                  name=f"layer_{layer}_{i}")(leaf)).astype(jnp.float32)  # [B, Dh]
                for i, leaf in enumerate(leaves)
            ]
            carries.append(jax.tree.unflatten(treedef, mapped))
        return tuple(carries)
