"""The model zoo: RNN encoder-decoders (none / Bahdanau / Luong) and the Transformer.

Every family is a Flax Linen module built from a frozen config through the
`MODELS` registry (`build_model(config)`). Inside a family, choices are
registries too, and a config field names a key: `RNNConfig.attention` ->
`ATTENTIONS`, `RNNConfig.score` -> `jaxattn.LUONG_SCORES`, `RNNConfig.cell` ->
`CELLS`, `TransformerConfig.positional` -> `POSITIONS`. Every model exposes one
interface:

Training (teacher forcing)::

    model = build_model(config)                       # RNNConfig or TransformerConfig
    variables = model.init(rng, inputs, targets)      # inputs [B, S], targets [B, T] int,
                                                      #   0-padded, targets <eos>-terminated
    logits = model.apply(variables, inputs, targets, train=True,
                         rngs={"dropout": dropout_rng})   # [B, T, V] float32
    # packed batches (Transformer only): inputs_segmentation=, targets_segmentation=,
    #   inputs_positions=, targets_positions= ([B, S] / [B, T] int) as keyword args,
    #   the names of the data pipeline's batch fields: `model.apply(variables, **batch)`.
    # step= (the optimizer step, may be traced): every model takes it; the RNN built with
    #   `sampling_schedule=` turns it into scheduled sampling in training. Or pass
    #   sampling_prob=p (RNN only; a float scalar, may be traced, so a schedule does not
    #   recompile). Either needs rngs={"dropout": ..., "sampling": ...}; the probability
    #   used is reported in the "metrics" collection (mutable=["metrics"]).

The decoder reads `shift_right(targets)` with <sos> (bos_id) in front; the loss is
cross-entropy of `logits` against `targets` masked by `targets != pad_id`.

Decoding (used by `jaxattn.decoding`)::

    encoded = model.apply(variables, inputs, method="encode")          # pytree, leaves [B, ...]
    logits = model.apply(variables, encoded, targets, method="decode")  # [B, T, V], no cache
    memory, state = model.apply(variables, encoded, max_len, method="init_cache")
    logits, state = model.apply(variables, memory, state, tokens, index,
                                method="decode_step")                  # tokens [B] -> [B, V]

`memory` is constant per source sentence (Transformer: cross-attention keys and
values projected once; RNN: annotations and pre-projected keys); `state` is what a
step updates (Transformer: self-attention KV caches; RNN: cell carries and the
input-feeding vector), and what beam search reorders.

Attention weights (for heatmaps) are never computed on the default path. Build
the model with `config.replace(capture_attention=True)` and ask for the
"intermediates" collection::

    logits, state = model.apply(variables, inputs, targets, mutable=["intermediates"])
    # RNN (bahdanau / luong): state["intermediates"]["alignment"][0]   [B, T, S]
    # Transformer: collect_attention_weights(state["intermediates"]) ->
    #   {"encoder_self": [L, B, N, S, S], "decoder_self": [L, B, N, T, T],
    #    "cross": [L, B, N, T, S]}
    # What a heatmap shows, per model: model.attention_map(state["intermediates"]) ->
    #   [B, N, T, S] (RNN: N = 1), or None for a model without attention.
    # Every kind, per model: model.attention_maps(state["intermediates"]) ->
    #   {kind: [L, B, N, rows, cols]} (RNN: {"alignment": [1, B, 1, T, S]} or {}).

For a decoded sentence, run this teacher-forced pass on (inputs, decoded tokens).
"""
from __future__ import annotations

import jax

from jaxattn.models.configs import RNNConfig, TransformerConfig
from jaxattn.models.ensemble import Ensemble, ensemble_params
from jaxattn.models.positional import (
    POSITIONS,
    alibi_bias,
    alibi_slopes,
    relative_position_buckets,
    rotary_embedding,
    sinusoidal_positions,
)
from jaxattn.models.rnn import RNNSeq2Seq
from jaxattn.models.rnn_attention import ATTENTIONS
from jaxattn.models.rnn_encoder import CELLS
from jaxattn.models.teacher_forcing import shift_right
from jaxattn.models.transformer import Transformer, collect_attention_weights

__all__ = [
    "MODELS",
    "ATTENTIONS",
    "CELLS",
    "POSITIONS",
    "build_model",
    "RNNConfig",
    "TransformerConfig",
    "RNNSeq2Seq",
    "Transformer",
    "Ensemble",
    "ensemble_params",
    "collect_attention_weights",
    "shift_right",
    "sinusoidal_positions",
    "alibi_slopes",
    "alibi_bias",
    "relative_position_buckets",
    "rotary_embedding",
    "count_params",
]

# Family name -> (config class, module class).
MODELS = {
    "transformer": (TransformerConfig, Transformer),
    "rnn": (RNNConfig, RNNSeq2Seq),
}


def build_model(config):
    """Builds the module for a config.

    Args:
      config: a `TransformerConfig` or `RNNConfig`.

    Returns:
      The (unbound) Flax module.
    """
    for config_cls, module_cls in MODELS.values():
        if isinstance(config, config_cls):
            return module_cls(config)
    raise ValueError(f"config: expected one of "
                     f"{[c.__name__ for c, _ in MODELS.values()]}, got {type(config).__name__}")


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
