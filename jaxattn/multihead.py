"""Multi-head attention as a pure function of an explicit parameter pytree.

MultiHead(Q, K, V) = Concat(head_1, ..., head_N) W^O,
head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)      (Vaswani et al. 2017, sec. 3.2.2)

with K <= N key/value heads (multi-query: Shazeer 2019; grouped-query:
Ainslie et al. 2023). The parameter layout is that of
`flax.linen.MultiHeadDotProductAttention` (kernels `[D, N, H]` in,
`[N, H, D]` out), so weights move between the two unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from jaxattn import _checks
from jaxattn.attention import _hide_unseen_inputs, dot_product_attention

__all__ = [
    "init_multi_head_params",
    "project_heads",
    "project_out",
    "multi_head_attention",
]


def init_multi_head_params(rng, features: int, num_heads: int, *, head_dim=None,
                           num_kv_heads=None, kv_features=None, out_features=None,
                           use_bias: bool = True, dtype=jnp.float32):
    """Initialises multi-head attention parameters (flax.linen layout).

    Kernels are LeCun-normal in their fan-in (as Flax), biases zero.

    Args:
      rng: PRNG key.
      features: D, the query input width.
      num_heads: N query heads.
      head_dim: H (default D // N, D must then be divisible by N).
      num_kv_heads: K key/value heads (default N); must divide N.
      kv_features: width of the key/value inputs (default D).
      out_features: output width (default D).
      use_bias: whether projections have biases.
      dtype: parameter dtype.

    Returns:
      {"query": {"kernel": [D, N, H], "bias": [N, H]},
       "key": {"kernel": [C, K, H], "bias": [K, H]}, "value": (same as key),
       "out": {"kernel": [N, H, O], "bias": [O]}} (no biases if not
      `use_bias`).
    """
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    kv_features = features if kv_features is None else kv_features
    out_features = features if out_features is None else out_features
    for name, value in (("features", features), ("num_heads", num_heads),
                        ("num_kv_heads", num_kv_heads), ("kv_features", kv_features),
                        ("out_features", out_features)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if head_dim is None:
        if features % num_heads:
            raise ValueError(
                f"num_heads: expected a divisor of features={features} when "
                f"head_dim is None, got {num_heads}")
        head_dim = features // num_heads
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim: expected a positive int or None, got {head_dim!r}")
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads: expected a divisor of num_heads={num_heads}, got {num_kv_heads}")
    n, k, h = num_heads, num_kv_heads, head_dim
    rq, rk, rv, ro = jax.random.split(rng, 4)

    def dense(r, fan_in, kernel_shape, bias_shape):
        flat = jax.nn.initializers.lecun_normal()(
            r, (fan_in, math.prod(kernel_shape) // fan_in), dtype)
        p = {"kernel": flat.reshape(kernel_shape)}
        if use_bias:
            p["bias"] = jnp.zeros(bias_shape, dtype)
        return p

    return {
        "query": dense(rq, features, (features, n, h), (n, h)),
        "key": dense(rk, kv_features, (kv_features, k, h), (k, h)),
        "value": dense(rv, kv_features, (kv_features, k, h), (k, h)),
        "out": dense(ro, n * h, (n, h, out_features), (out_features,)),
    }


def project_heads(proj_params: dict[str, Float[Array, "..."]], x: Float[Array, "B T D"],
                  *, name: str = "x") -> Float[Array, "B T N H"]:
    """Projects and splits into heads: x W + b.

    Args:
      proj_params: {"kernel": [D, N, H], "bias": [N, H] (optional)}.
      x: [B, T, D] inputs.
      name: what the caller calls `x`, for error messages.

    Returns:
      [B, T, N, H].
    """
    kernel = proj_params["kernel"]
    d, n, h = _checks.check_rank(kernel, "proj_params['kernel']", "DNH")
    _checks.check_shape(x, name, (None, None, d), "BTD")
    _checks.check_float(x, name)
    b, t, _ = x.shape
    # The einsum "BTD,DNH->BTNH" as one 2-D matmul over bitcast views: given the 3-D
    # kernel, XLA:CPU physically transposes the kernel (backward) and its gradient on every
    # step; as a matrix it does not (the base Transformer's train step runs ~1.15x faster).
    y = x.reshape(b * t, d) @ kernel.reshape(d, n * h)  # [B·T, N·H]
    y = y.reshape(b, t, n, h)  # [B, T, N, H]
    if "bias" in proj_params:
        _checks.check_shape(proj_params["bias"], "proj_params['bias']", (n, h), "NH")
        y = y + proj_params["bias"][None, None]  # [B, T, N, H]
    return y


def project_out(out_params: dict[str, Float[Array, "..."]],
                x: Float[Array, "B T N H"]) -> Float[Array, "B T O"]:
    """Concatenates heads and projects back to the model width: Concat(heads) W^O + b.

    Args:
      out_params: {"kernel": [N, H, O], "bias": [O] (optional)}.
      x: [B, T, N, H] per-head outputs.

    Returns:
      [B, T, O] (O = D, the model width, unless `out_features` says otherwise).
    """
    kernel = out_params["kernel"]
    n, h, d = _checks.check_rank(kernel, "out_params['kernel']", "NHO")
    _checks.check_shape(x, "x", (None, None, n, h), "BTNH")
    b, t, _, _ = x.shape
    # "BTNH,NHO->BTO" as one 2-D matmul, for the reason given in `project_heads`.
    y = x.reshape(b * t, n * h) @ kernel.reshape(n * h, d)  # [B·T, O]
    y = y.reshape(b, t, d)  # [B, T, O]
    if "bias" in out_params:
        _checks.check_shape(out_params["bias"], "out_params['bias']", (d,), "O")
        y = y + out_params["bias"][None, None]  # [B, T, O]
    return y


def multi_head_attention(
        params: dict[str, dict[str, Float[Array, "..."]]],
        inputs_q: Float[Array, "B T D"],
        inputs_kv: Float[Array, "B S C"] | None = None,
        mask: Bool[Array, "#B #N #T #S"] | None = None,
        bias: Float[Array, "#B #N #T #S"] | None = None, *,
        return_weights: bool = False,
        implementation: str | None = None,
        dropout_rate: float | Float[ArrayLike, ""] = 0.0,
        dropout_rng: PRNGKeyArray | None = None,
        process_heads: Callable[[Float[Array, "B T N H"], Float[Array, "B S K H"]],
                                tuple[Float[Array, "B T N H"], Float[Array, "B S K H"]]]
        | None = None,
) -> Float[Array, "B T O"] | tuple[Float[Array, "B T O"], Float[Array, "B N T S"]]:
    """Multi-head (grouped-query when K < N) attention, Vaswani sec. 3.2.2.

    Args:
      params: from `init_multi_head_params` (or a Flax
        `MultiHeadDotProductAttention`'s "params").
      inputs_q: [B, T, D] query inputs.
      inputs_kv: [B, S, C] key/value inputs, or None for self-attention.
      mask: bool broadcastable to [B, N, T, S], True = may attend.
      bias: float broadcastable to [B, N, T, S] added to the energies.
      return_weights: also return the [B, N, T, S] weights.
      implementation: see `dot_product_attention`.
      dropout_rate: attention-weight dropout rate.
      dropout_rng: PRNG key, required when dropout_rate > 0.
      process_heads: `(query [B, T, N, H], key [B, S, K, H]) -> (query, key)`
        applied to the projected heads before the energies, with whatever it
        needs (positions) bound in: rotary embeddings (Su et al. 2021) enter
        here without touching attention. None = identity.

    Returns:
      [B, T, O], or ([B, T, O], weights [B, N, T, S]) if `return_weights`.
    """
    for name in ("query", "key", "value", "out"):
        if name not in params:
            raise ValueError(
                f"params: expected keys ['query', 'key', 'value', 'out'], got "
                f"{sorted(params)}")
    b, _, _ = _checks.check_rank(inputs_q, "inputs_q", "BTD")
    kv_name = "inputs_q" if inputs_kv is None else "inputs_kv"
    if inputs_kv is None:
        inputs_kv = inputs_q
    else:
        _checks.check_shape(inputs_kv, "inputs_kv", (b, None, None), "BSC")
    if mask is not None:  # hidden rows: keep 0 * NaN out of the kernels' gradients
        inputs_q, inputs_kv = _hide_unseen_inputs(inputs_q, inputs_kv, mask)
    q = project_heads(params["query"], inputs_q, name="inputs_q")  # [B, T, N, H]
    k = project_heads(params["key"], inputs_kv, name=kv_name)  # [B, S, K, H]
    v = project_heads(params["value"], inputs_kv, name=kv_name)  # [B, S, K, H]
    if process_heads is not None:
        q, k = process_heads(q, k)  # [B, T, N, H], [B, S, K, H]
    result = dot_product_attention(
        q, k, v, mask, bias, return_weights=return_weights,
        implementation=implementation, dropout_rate=dropout_rate,
        dropout_rng=dropout_rng)
    if return_weights:
        out, weights = result
        return project_out(params["out"], out), weights  # [B, T, O]
    return project_out(params["out"], result)  # [B, T, O]
