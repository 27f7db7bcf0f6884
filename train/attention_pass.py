"""A trained model's attention weights for given sentences: the teacher-forced pass behind the
explorer page (`train.serving`) and word alignments (`train.align`).

    attention = attention_pass(trained.model)
    maps = attention(trained.params, inputs, targets)     # [B, S], [B, T] ids -> {kind: [L, B, N, T, S]}

The model is rebuilt from its config with `capture_attention=True` (same parameters), run as in
training (`shift_right(targets)` feeds the decoder, so row t is the attention while the model
predicts target token t) and its `attention_maps` returned: the Transformer's "encoder_self",
"decoder_self" and "cross", the attention RNN's "alignment" (one layer, one head), nothing for
the plain RNN.
"""

from collections.abc import Callable
from typing import Any

import jax

from jaxattn.models import build_model

__all__ = ["attention_pass"]


def attention_pass(model: Any) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
    """A jitted `(params, inputs [B, S], targets [B, T]) -> {kind: [L, B, N, rows, cols]}` for `model`."""
    capture = build_model(model.config.replace(capture_attention=True))

    def attention(params, inputs, targets):
        _, state = capture.apply({"params": params}, inputs, targets, train=False, mutable=["intermediates"])
        return capture.attention_maps(state.get("intermediates", {}))
    return jax.jit(attention)
