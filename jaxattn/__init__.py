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

__version__ = "0.1.0"
