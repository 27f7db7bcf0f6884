"""jaxattn: attention in JAX, from Bahdanau to the Transformer.

Pure-function attention primitives (this package's top level) composed into
thin Flax Linen modules (`jaxattn.models`) and decoded by `jaxattn.decoding`.

Axis alphabet, used in every einsum string, shape comment, docstring and error:

| letter | axis                                             |
|--------|--------------------------------------------------|
| B      | batch                                            |
| T      | query / target length (decoder steps)            |
| S      | key / source length (encoder steps)              |
| N      | query heads                                      |
| K      | key/value heads (K < N: grouped-query)           |
| G      | query heads per kv head (N = K * G)              |
| H      | head dimension                                   |
| D      | model (embedding) dimension                      |
| F      | feed-forward hidden dimension                    |
| V      | vocabulary                                       |

Attention inputs are laid out `[B, T, N, H]` (as `jax.nn.dot_product_attention`
and Flax). Masks are boolean, `True` = may attend, broadcastable to `[B, N, T, S]`.
"""

from jaxattn.attention import (
    IMPLEMENTATIONS,
    additive_attention,
    dot_product_attention,
    luong_attention,
    weighted_context,
)
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
    additive_score,
    concat_score,
    dot_score,
    general_score,
    scaled_dot_product_score,
)
from jaxattn.softmax import masked_softmax

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
    "scaled_dot_product_score",
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
]

# The model zoo (Flax modules built on the primitives above) and decoding.
from jaxattn import decoding, models  # noqa: E402  (after the primitives they import)
