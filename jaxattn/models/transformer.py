"""The Transformer encoder-decoder (Vaswani et al. 2017).

Embeddings scaled by sqrt(D) (§3.4), N encoder layers and N decoder layers (§3.1,
`transformer_layers`), optional shared source/target embeddings and output
projection tied to the target embedding (§3.4), dropout on embeddings and
residuals (§5.4). Positions come from `positional.POSITIONS[config.positional]`:
added to the embeddings (sinusoidal §3.5, learned), or a self-attention bias
(ALiBi, T5 buckets) or query/key hook (rotary) computed once per stack and
given to every layer. Packed batches use segment ids and per-segment positions
(`jaxattn.segment_mask`).

Trainer-facing interface (shared with `RNNSeq2Seq`, see `jaxattn.models`):
`__call__`, `encode`, `decode`, `init_cache`, `decode_step`, `attention_map`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn import _checks, masks
from jaxattn.backend import platform_of
from jaxattn.cache import init_kv_cache
from jaxattn.models.configs import TransformerConfig
from jaxattn.models.positional import POSITIONS
from jaxattn.models.teacher_forcing import shift_right
from jaxattn.models.transformer_layers import DecoderLayer, EncoderLayer

__all__ = ["Transformer", "collect_attention_weights"]


def _default_positions(tokens):
    b, t = tokens.shape
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], (b, t))  # [B, T]


def _tied_logits(y, table):
    """y [B, T, D] times the embedding table [V, D], transposed: [B, T, V] logits."""
    return jnp.einsum("BTD,VD->BTV", y, table)  # [B, T, V]


@jax.custom_vjp
def _tied_logits_cpu(y, table):
    """`_tied_logits` with the table's gradient written for XLA:CPU (used on CPU only,
    where it was measured; see `jaxattn.backend`)."""
    return _tied_logits(y, table)  # [B, T, V]


def _tied_logits_fwd(y, table):
    return _tied_logits(y, table), (y, table)


def _tied_logits_bwd(residuals, g):
    # The table's gradient is written (y^T g)^T. Autodiff writes g^T y, and
    # XLA:CPU then copies the [B*T, V] gradient g into a transposed layout for
    # its matmul (with V = 8000 that copy cost more than the matmuls); this
    # way only y [B*T, D] and the [D, V] result are transposed. Same values.
    y, table = residuals
    dy = jnp.einsum("BTV,VD->BTD", g, table)  # [B, T, D]
    dtable = jnp.einsum("BTD,BTV->DV", y, g).T  # [V, D]
    return dy, dtable


_tied_logits_cpu.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Transformer(nn.Module):
    """Transformer encoder-decoder.

    Attributes:
      config: `TransformerConfig`.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        embed = lambda: nn.Embed(  # noqa: E731
            cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=nn.initializers.normal(stddev=cfg.emb_dim ** -0.5))
        self.target_embed = embed()
        self.source_embed = self.target_embed if cfg.share_embeddings else embed()
        self.positions = POSITIONS[cfg.positional](cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.encoder_layers = [EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers)]
        self.decoder_layers = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
        if cfg.norm == "pre":  # pre-LN stacks end with a LayerNorm (Xiong et al. 2020)
            self.encoder_norm = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
            self.decoder_norm = nn.LayerNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        if not cfg.tie_output:
            self.output = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype)

    # -- pieces -------------------------------------------------------------------------

    def _embed(self, table, tokens, positions, deterministic):
        cfg = self.config
        x = table(tokens) * jnp.asarray(cfg.emb_dim ** 0.5, cfg.dtype)  # [B, T, D]
        x = self.positions.embed(x, positions)  # [B, T, D]
        return self.dropout(x, deterministic=deterministic)

    def _logits(self, y):
        cfg = self.config
        if cfg.tie_output:
            table = jnp.asarray(self.target_embed.embedding, cfg.dtype)  # [V, D]
            y = y.astype(cfg.dtype)
            tied_logits = _tied_logits_cpu if platform_of(y) == "cpu" else _tied_logits
            logits = tied_logits(y, table)  # [B, T, V]
        else:
            logits = self.output(y)  # [B, T, V]
        return logits.astype(jnp.float32)

    # -- interface ----------------------------------------------------------------------

    def __call__(self, inputs, targets, *, train: bool = False, step=None,
                 inputs_segmentation=None, targets_segmentation=None,
                 inputs_positions=None, targets_positions=None):
        """Teacher-forced forward pass.

        Args:
          inputs: [B, S] int source ids (0-padded).
          targets: [B, T] int target ids (0-padded); the decoder reads
            `shift_right(targets)` (<sos> at every segment start).
          train: enables dropout ("dropout" rng).
          step: the optimizer step; unused (the interface is shared with the RNN).
          inputs_segmentation, targets_segmentation: [B, S] / [B, T] int segment
            ids of packed rows (1..n, 0 = pad), or None for unpacked batches.
          inputs_positions, targets_positions: [B, S] / [B, T] int per-segment
            positions, or None (0..len-1).

        Returns:
          [B, T, V] float32 logits.
        """
        del step
        encoded = self.encode(inputs, train=train, inputs_segmentation=inputs_segmentation,
                              inputs_positions=inputs_positions)
        return self.decode(encoded, targets, train=train,
                           targets_segmentation=targets_segmentation,
                           targets_positions=targets_positions)

    def check_length(self, length: int, name: str) -> None:
        """Raises ValueError if sequences of `length` tokens are past the position scheme's longest.

        Works on an unbound module, so that a trainer can check its data and decoding lengths
        before anything runs (only learned positions have a bound: `config.max_len`).
        """
        POSITIONS[self.config.positional](self.config, parent=None).check_length(length, name)

    def encode(self, inputs, *, train: bool = False, inputs_segmentation=None,
               inputs_positions=None):
        """Encoder stack.

        Args:
          inputs: [B, S] int source ids.
          train: enables dropout.
          inputs_segmentation, inputs_positions: packed-batch [B, S] ints or None.

        Returns:
          {"encoded": [B, S, D], "valid": [B, S] bool} (+ "segmentation" [B, S] if packed).
        """
        cfg = self.config
        _checks.check_rank(inputs, "inputs", "BS")
        _checks.check_int(inputs, "inputs")
        valid = masks.padding_mask(inputs, cfg.pad_id)  # [B, S]
        if inputs_segmentation is not None:
            _checks.check_shape(inputs_segmentation, "inputs_segmentation", inputs.shape, "BS")
            mask = masks.segment_mask(inputs_segmentation, inputs_segmentation)  # [B, 1, S, S]
        else:
            mask = masks.key_padding_mask(valid)  # [B, 1, 1, S]
        if inputs_positions is None:
            inputs_positions = _default_positions(inputs)
        _checks.check_shape(inputs_positions, "inputs_positions", inputs.shape, "BS")
        x = self._embed(self.source_embed, inputs, inputs_positions, not train)  # [B, S, D]
        bias = self.positions.self_bias(inputs_positions, inputs_positions, causal=False)  # [B, N, S, S]
        hook = self.positions.process_heads(inputs_positions, inputs_positions)
        for layer in self.encoder_layers:
            x = layer(x, mask, bias, hook, deterministic=not train)  # [B, S, D]
        if cfg.norm == "pre":
            x = self.encoder_norm(x)
        encoded = {"encoded": x, "valid": valid}
        if inputs_segmentation is not None:
            encoded["segmentation"] = inputs_segmentation
        return encoded

    def decode(self, encoded, targets, *, train: bool = False, targets_segmentation=None,
               targets_positions=None):
        """Teacher-forced decoder stack.

        Args:
          encoded: the output of `encode`.
          targets: [B, T] int target ids.
          train: enables dropout.
          targets_segmentation, targets_positions: packed-batch [B, T] ints or None.

        Returns:
          [B, T, V] float32 logits. With `config.capture_attention`, every attention
          sows "attention_weights" [B, N, T, S] (see `collect_attention_weights`).
        """
        cfg = self.config
        b, t = _checks.check_rank(targets, "targets", "BT")
        _checks.check_int(targets, "targets")
        _checks.check_shape(encoded["encoded"], "encoded['encoded']",
                            (b, None, cfg.emb_dim), "BSD")
        causal = masks.causal_mask(t)  # [1, 1, T, T]
        if targets_segmentation is not None:
            if "segmentation" not in encoded:
                raise ValueError("targets_segmentation: given without inputs_segmentation; "
                                 "packed batches need both")
            _checks.check_shape(targets_segmentation, "targets_segmentation", targets.shape, "BT")
            self_mask = masks.combine_masks(
                causal, masks.segment_mask(targets_segmentation, targets_segmentation))  # [B, 1, T, T]
            cross_mask = masks.segment_mask(targets_segmentation,
                                            encoded["segmentation"])  # [B, 1, T, S]
        else:
            self_mask = causal
            cross_mask = masks.key_padding_mask(encoded["valid"])  # [B, 1, 1, S]
        if targets_positions is None:
            targets_positions = _default_positions(targets)
        _checks.check_shape(targets_positions, "targets_positions", targets.shape, "BT")
        decoder_inputs = shift_right(targets, cfg.bos_id, targets_segmentation)  # [B, T]
        y = self._embed(self.target_embed, decoder_inputs, targets_positions, not train)  # [B, T, D]
        bias = self.positions.self_bias(targets_positions, targets_positions,
                                        causal=True)  # [B, N, T, T]
        hook = self.positions.process_heads(targets_positions, targets_positions)
        for layer in self.decoder_layers:
            y = layer(y, encoded["encoded"], self_mask, cross_mask, bias, hook,
                      deterministic=not train)
        if cfg.norm == "pre":
            y = self.decoder_norm(y)
        return self._logits(y)  # [B, T, V]

    def init_cache(self, encoded, max_len: int):
        """Projects cross-attention keys/values once and allocates the self-attention caches.

        Args:
          encoded: the output of `encode` (unpacked).
          max_len: L, the most decoding steps.

        Returns:
          (memory, state): memory {"cross": per layer {"key", "value"} [B, S, K, H],
          "cross_mask": [B, 1, 1, S]} is constant; state {"self": per layer
          {"key", "value"} [B, L, K, H]} is updated by `decode_step`.
        """
        cfg = self.config
        self.positions.check_length(max_len, "max_len")
        x = encoded["encoded"]  # [B, S, D]
        memory = {
            "cross": tuple(layer.project_memory(x) for layer in self.decoder_layers),
            "cross_mask": masks.key_padding_mask(encoded["valid"]),  # [B, 1, 1, S]
        }
        state = {"self": tuple(
            init_kv_cache(x.shape[0], max_len, cfg.kv_heads, cfg.head_dim, cfg.dtype)
            for _ in self.decoder_layers)}
        return memory, state

    def decode_step(self, memory, state, tokens, index):
        """One cached decoding step at position `index`.

        Args:
          memory, state: from `init_cache` (or the previous step).
          tokens: [B] int previous tokens (<sos> at step 0).
          index: int scalar (may be traced), the position being decoded.

        Returns:
          (logits [B, V] float32, new state).
        """
        cfg = self.config
        (b,) = _checks.check_rank(tokens, "tokens", "B")
        positions = jnp.full((b, 1), index, jnp.int32)  # [B, 1]
        y = self._embed(self.target_embed, tokens[:, None], positions, True)  # [B, 1, D]
        length = state["self"][0]["key"].shape[1]
        cache_positions = jnp.arange(length, dtype=jnp.int32)[None, :]  # [1, L]
        bias = self.positions.self_bias(positions, cache_positions, causal=True)  # [B, N, 1, L]
        hook = self.positions.process_heads(positions, positions)  # this step's query and key
        caches = []
        for layer, cache, cross in zip(self.decoder_layers, state["self"], memory["cross"]):
            y, cache = layer.step(y, cache, cross, memory["cross_mask"], index, bias, hook)  # [B, 1, D]
            caches.append(cache)
        if cfg.norm == "pre":
            y = self.decoder_norm(y)
        return self._logits(y)[:, 0], {"self": tuple(caches)}  # [B, V]

    @nn.nowrap
    def attention_map(self, intermediates):
        """What to plot of a pass's "intermediates" (built with `capture_attention=True`).

        Args:
          intermediates: the "intermediates" collection of
            `model.apply(..., mutable=["intermediates"])`.

        Returns:
          [B, N, T, S] cross-attention of the last decoder layer, or None when
          nothing was captured.
        """
        cross = collect_attention_weights(intermediates).get("cross")
        return None if cross is None else cross[-1]  # [B, N, T, S]

    def attention_maps(self, intermediates):
        """Every captured attention by kind, [L, B, N, rows, cols] each: `collect_attention_weights`."""
        return collect_attention_weights(intermediates)


def collect_attention_weights(intermediates):
    """Stacks sown Transformer attention weights per kind for plotting.

    Args:
      intermediates: the "intermediates" collection returned by
        `model.apply(..., mutable=["intermediates"])` with `capture_attention=True`.

    Returns:
      {"encoder_self": [L, B, N, S, S], "decoder_self": [L, B, N, T, T],
       "cross": [L, B, N, T, S]} (kinds absent from `intermediates` are left out).
    """
    kinds = {"encoder_self": ("encoder_layers", "self_attention"),
             "decoder_self": ("decoder_layers", "self_attention"),
             "cross": ("decoder_layers", "cross_attention")}
    out = {}
    for kind, (stack, attention) in kinds.items():
        layers = sorted((k for k in intermediates if k.startswith(stack + "_")),
                        key=lambda k: int(k.rsplit("_", 1)[1]))
        weights = [intermediates[k][attention]["attention_weights"][0] for k in layers
                   if attention in intermediates[k]]
        if weights:
            out[kind] = jnp.stack(weights)  # [L, B, N, T, S]
    return out
