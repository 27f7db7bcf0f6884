"""jaxattn: attention in JAX, from Bahdanau to the Transformer.

Pure-function attention primitives (this package's top level) composed into
thin Flax Linen modules (`jaxattn.models`; `jaxattn.nnx` gives each to Flax NNX
users over the same definition) and decoded by `jaxattn.decoding`.

Axis alphabet, used in every einsum string, shape comment, docstring, error
and jaxtyping annotation (`query: Float[Array, "B T N H"]`):

| letter | axis                                                              |
|--------|-------------------------------------------------------------------|
| B      | batch                                                             |
| T      | query / target length (decoder steps)                             |
| S      | key / source length (encoder steps)                               |
| L      | a maximum length: kv-cache capacity (decoding steps), the longest |
|        | source of Luong's location score                                  |
| N      | query heads                                                       |
| K      | key/value heads (K < N: grouped-query)                            |
| G      | query heads per kv head (N = K * G)                               |
| H      | head dimension                                                    |
| D      | model (embedding) dimension                                       |
| O      | multi-head attention output width (`out_features`, default D)     |
| F      | feed-forward hidden dimension                                     |
| V      | vocabulary                                                        |
| Q      | RNN attention query width (decoder state)                         |
| C      | key input width: encoder annotations h_j as RNN attention keys,   |
|        | multi-head `inputs_kv` (C = D in self-attention)                  |
| U      | RNN attention value width, hence context width (U = C when the    |
|        | values are the annotations, as usual)                             |
| A      | additive attention hidden width (v: [A], w_query: [Q, A],         |
|        | w_key: [C, A])                                                    |

In annotations, `#X` is an axis of size X or 1 (broadcast) and a literal `1`
is a size-1 axis; masks and biases may also omit leading axes. Other
names in shape comments are local sizes defined where they are used (the
chunked kernel's block sizes `qc`, `kc`, block counts `nq`, `nk` and padded
lengths `Tp`, `Sp`).

Attention inputs are laid out `[B, T, N, H]` (as `jax.nn.dot_product_attention`
and Flax). Masks are boolean, `True` = may attend, broadcastable to `[B, N, T, S]`.
Token ids: pad 0, unk 1, <sos> 2, <eos> 3 (`jaxattn.tokens`, their one definition).
"""

from jaxattn.attention import (
    IMPLEMENTATIONS,
    additive_attention,
    dot_product_attention,
    luong_attention,
    weighted_context,
)
from jaxattn.backend import platform_of
from jaxattn.cache import cached_attention, init_kv_cache, update_kv_cache
from jaxattn.chunked import chunked_dot_product_attention
from jaxattn.masks import (
    causal_mask,
    combine_masks,
    cross_attention_mask,
    key_padding_mask,
    lengths_to_mask,
    padding_mask,
    segment_mask,
)
from jaxattn.multihead import (
    init_multi_head_params,
    multi_head_attention,
    project_heads,
    project_out,
)
from jaxattn.scores import (
    LUONG_SCORES,
    LuongScore,
    additive_score,
    concat_score,
    dot_score,
    general_score,
    location_score,
    scaled_dot_product_score,
)
from jaxattn.softmax import masked_softmax
from jaxattn.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__version__ = "0.1.0"

__all__ = [
    # masks
    "padding_mask",
    "lengths_to_mask",
    "key_padding_mask",
    "cross_attention_mask",
    "causal_mask",
    "segment_mask",
    "combine_masks",
    # softmax
    "masked_softmax",
    # scores
    "additive_score",
    "dot_score",
    "general_score",
    "concat_score",
    "location_score",
    "scaled_dot_product_score",
    "LuongScore",
    "LUONG_SCORES",
    # attention
    "weighted_context",
    "additive_attention",
    "luong_attention",
    "dot_product_attention",
    "IMPLEMENTATIONS",
    "chunked_dot_product_attention",
    # multi-head
    "init_multi_head_params",
    "project_heads",
    "project_out",
    "multi_head_attention",
    # decode-time cache
    "init_kv_cache",
    "update_kv_cache",
    "cached_attention",
    # special token ids
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    # the backend an array is computed on (where the CPU-tuned rewrites apply)
    "platform_of",
]

# The model zoo (Flax modules built on the primitives above) and decoding.
from jaxattn import decoding, models  # noqa: E402  (after the primitives they import)
