"""Transformer sublayers: multi-head attention, feed-forward, encoder and decoder layers.

Vaswani et al. 2017 §3.1-3.3: each layer is a stack of sublayers wrapped as
LayerNorm(x + Dropout(Sublayer(x))) ("post", the paper) or
x + Dropout(Sublayer(LayerNorm(x))) ("pre", Xiong et al. 2020); FFN(x) =
max(0, x W_1 + b_1) W_2 + b_2 (eq. 2). Attention is `jaxattn.multi_head_attention`
(eq. 1 and §3.2.2, grouped-query when K < N); these modules only own the
parameters, in the `flax.linen.MultiHeadDotProductAttention` layout.

Self-attention takes the position scheme's additive `bias` ([B, N, T, S]: ALiBi,
T5 buckets) and `process_heads` hook (rotary) as arguments, computed once per
stack by the Transformer (`positional.POSITIONS`); cross-attention takes neither.

Decoding: `DecoderLayer.step` runs one position against a self-attention KV
cache (`jaxattn.update_kv_cache`, then `jaxattn.cached_attention` over the
cache positions 0..index) and cross-attention keys and values projected once per source
sentence (`DecoderLayer.project_memory`).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxattn.attention import dot_product_attention
from jaxattn.cache import cached_attention, update_kv_cache
from jaxattn.models.configs import TransformerConfig
from jaxattn.multihead import multi_head_attention, project_heads, project_out

__all__ = ["HeadProjection", "MultiHeadAttention", "FeedForward", "EncoderLayer",
           "DecoderLayer"]


class HeadProjection(nn.Module):
    """Owns one projection's {"kernel", "bias"} (LeCun-normal in the fan-in, as Flax).

    Attributes:
      kernel_shape: [D, N, H] (in-projection) or [N, H, D] (out-projection).
      fan_in_axes: kernel axes that are inputs.
      dtype: dtype the parameters are cast to for compute.
      param_dtype: parameter dtype.
    """

    kernel_shape: tuple[int, ...]
    fan_in_axes: tuple[int, ...]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self):
        """Returns {"kernel": kernel_shape, "bias": kernel_shape minus fan-in axes} in `dtype`."""
        out_axes = tuple(i for i in range(len(self.kernel_shape)) if i not in self.fan_in_axes)
        init = nn.initializers.lecun_normal(in_axis=self.fan_in_axes, out_axis=out_axes)
        kernel = self.param("kernel", init, self.kernel_shape, self.param_dtype)
        bias_shape = tuple(self.kernel_shape[i] for i in out_axes)
        bias = self.param("bias", nn.initializers.zeros_init(), bias_shape, self.param_dtype)
        return {"kernel": kernel.astype(self.dtype), "bias": bias.astype(self.dtype)}


class MultiHeadAttention(nn.Module):
    """Parameters for `jaxattn.multi_head_attention` plus its decode-time variants.

    Attributes:
      config: `TransformerConfig` (D, N, K, dropout, implementation, capture).
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        d, n, k, h = cfg.emb_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim
        proj = functools.partial(HeadProjection, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.query = proj((d, n, h), (0,))
        self.key = proj((d, k, h), (0,))
        self.value = proj((d, k, h), (0,))
        self.out = proj((n, h, d), (0, 1))

    def params_tree(self):
        return {"query": self.query(), "key": self.key(), "value": self.value(),
                "out": self.out()}

    def __call__(self, inputs_q, inputs_kv=None, mask=None, bias=None, process_heads=None, *,
                 deterministic: bool = True):
        """Full-sequence attention.

        Args:
          inputs_q: [B, T, D]; inputs_kv: [B, S, D] or None (self-attention).
          mask: bool broadcastable to [B, N, T, S].
          bias: float broadcastable to [B, N, T, S] added to the energies, or None.
          process_heads: `(q [B, T, N, H], k [B, S, K, H]) -> (q, k)`, or None.
          deterministic: disables attention dropout.

        Returns:
          [B, T, D]; with `config.capture_attention` the weights [B, N, T, S] are
          sown as intermediates "attention_weights".
        """
        cfg = self.config
        rate = 0.0 if deterministic else cfg.attention_dropout_rate
        rng = self.make_rng("dropout") if rate > 0.0 else None
        # TransformerConfig refuses an implementation that cannot apply dropout.
        result = multi_head_attention(
            self.params_tree(), inputs_q, inputs_kv, mask, bias,
            return_weights=cfg.capture_attention,
            implementation=cfg.attention_implementation,
            dropout_rate=rate, dropout_rng=rng, process_heads=process_heads)
        if cfg.capture_attention:
            result, weights = result
            self.sow("intermediates", "attention_weights", weights)  # [B, N, T, S]
        return result  # [B, T, D]

    def project_kv(self, inputs_kv):
        """inputs_kv [B, S, D] -> {"key": [B, S, K, H], "value": [B, S, K, H]}."""
        return {"key": project_heads(self.key(), inputs_kv),
                "value": project_heads(self.value(), inputs_kv)}

    def step_self(self, x, cache, index, bias=None, process_heads=None):
        """One decoder position against the KV cache.

        Args:
          x: [B, 1, D]; cache: {"key", "value"} [B, L, K, H]; index: scalar step.
          bias: broadcastable to [B, N, 1, L] (the energies of query `index`
            against cache positions 0..L-1), or None.
          process_heads: applied to this step's query and key (position
            `index`) before the key enters the cache, or None.

        Returns:
          ([B, 1, D], updated cache).
        """
        q = project_heads(self.query(), x)  # [B, 1, N, H]
        kv = self.project_kv(x)  # [B, 1, K, H] each
        k = kv["key"]
        if process_heads is not None:
            q, k = process_heads(q, k)  # [B, 1, N, H], [B, 1, K, H]
        cache = update_kv_cache(cache, k, kv["value"], index)
        out = cached_attention(q, cache, index, bias=bias,
                               implementation=self.config.attention_implementation)  # [B, 1, N, H]
        return project_out(self.out(), out), cache  # [B, 1, D]

    def step_cross(self, x, memory, mask):
        """One decoder position against pre-projected encoder keys/values.

        Args:
          x: [B, 1, D]; memory: {"key", "value"} [B, S, K, H]; mask: [B, 1, 1, S].

        Returns:
          [B, 1, D].
        """
        q = project_heads(self.query(), x)  # [B, 1, N, H]
        out = dot_product_attention(q, memory["key"], memory["value"], mask,
                                    implementation=self.config.attention_implementation)
        return project_out(self.out(), out)  # [B, 1, D]


class FeedForward(nn.Module):
    """Position-wise FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (Vaswani eq. 2).

    Attributes:
      config: `TransformerConfig` (D, F).
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = functools.partial(nn.Dense, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        h = nn.relu(dense(cfg.mlp_dim, name="wi")(x))  # [B, T, F]
        return dense(cfg.emb_dim, name="wo")(h)  # [B, T, D]


class _Residual(nn.Module):
    """Wraps a sublayer in dropout + residual + LayerNorm (post- or pre-LN)."""

    config: TransformerConfig

    def setup(self):
        self.norm = nn.LayerNorm(dtype=self.config.dtype, param_dtype=self.config.param_dtype)
        self.dropout = nn.Dropout(self.config.dropout_rate)

    def __call__(self, x, sublayer, *, deterministic: bool, has_aux: bool = False):
        """x [B, T, D], sublayer: [B, T, D] -> [B, T, D] (or ([B, T, D], aux)) -> [B, T, D] (, aux)."""
        pre = self.config.norm == "pre"
        result = sublayer(self.norm(x) if pre else x)
        out, aux = result if has_aux else (result, None)
        out = x + self.dropout(out, deterministic=deterministic)  # [B, T, D]
        out = out if pre else self.norm(out)
        return (out, aux) if has_aux else out


class EncoderLayer(nn.Module):
    """Self-attention + FFN (Vaswani §3.1, encoder).

    Attributes:
      config: `TransformerConfig`.
    """

    config: TransformerConfig

    def setup(self):
        self.self_attention = MultiHeadAttention(self.config)
        self.feed_forward = FeedForward(self.config)
        self.attention_residual = _Residual(self.config)
        self.ffn_residual = _Residual(self.config)

    def __call__(self, x, mask, bias=None, process_heads=None, *, deterministic: bool = True):
        """x: [B, S, D]; mask, bias broadcastable to [B, N, S, S]. Returns [B, S, D]."""
        x = self.attention_residual(
            x, lambda h: self.self_attention(h, None, mask, bias, process_heads,
                                             deterministic=deterministic),
            deterministic=deterministic)
        return self.ffn_residual(x, self.feed_forward, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Masked self-attention + encoder-decoder attention + FFN (Vaswani §3.1, decoder).

    Attributes:
      config: `TransformerConfig`.
    """

    config: TransformerConfig

    def setup(self):
        self.self_attention = MultiHeadAttention(self.config)
        self.cross_attention = MultiHeadAttention(self.config)
        self.feed_forward = FeedForward(self.config)
        self.self_residual = _Residual(self.config)
        self.cross_residual = _Residual(self.config)
        self.ffn_residual = _Residual(self.config)

    def __call__(self, y, encoded, self_mask, cross_mask, self_bias=None, process_heads=None, *,
                 deterministic: bool = True):
        """Teacher-forced layer.

        Args:
          y: [B, T, D] decoder stream; encoded: [B, S, D] encoder output.
          self_mask: broadcastable to [B, N, T, T] (causal); cross_mask: to [B, N, T, S].
          self_bias: self-attention bias broadcastable to [B, N, T, T], or None.
          process_heads: self-attention query/key hook, or None.
          deterministic: disables dropout.

        Returns:
          [B, T, D].
        """
        y = self.self_residual(
            y, lambda h: self.self_attention(h, None, self_mask, self_bias, process_heads,
                                             deterministic=deterministic),
            deterministic=deterministic)
        y = self.cross_residual(
            y, lambda h: self.cross_attention(h, encoded, cross_mask, deterministic=deterministic),
            deterministic=deterministic)
        return self.ffn_residual(y, self.feed_forward, deterministic=deterministic)

    def project_memory(self, encoded):
        """Cross-attention keys/values, once per source: [B, S, D] -> {"key", "value"} [B, S, K, H]."""
        return self.cross_attention.project_kv(encoded)

    def step(self, y, cache, memory, cross_mask, index, self_bias=None, process_heads=None):
        """One decoding position (no dropout).

        Args:
          y: [B, 1, D]; cache: self-attention {"key", "value"} [B, L, K, H];
          memory: cross {"key", "value"} [B, S, K, H]; cross_mask: [B, 1, 1, S];
          index: scalar step; self_bias, process_heads: see `MultiHeadAttention.step_self`.

        Returns:
          ([B, 1, D], updated cache).
        """
        y, cache = self.self_residual(
            y, lambda h: self.self_attention.step_self(h, cache, index, self_bias, process_heads),
            deterministic=True, has_aux=True)
        y = self.cross_residual(
            y, lambda h: self.cross_attention.step_cross(h, memory, cross_mask), deterministic=True)
        y = self.ffn_residual(y, self.feed_forward, deterministic=True)
        return y, cache
