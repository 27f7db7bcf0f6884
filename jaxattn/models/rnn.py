"""RNN encoder-decoder: the fixed-context baseline, Bahdanau and Luong attention.

Sutskever et al. 2014 / Cho et al. 2014 ("none"), Bahdanau et al. 2014
("bahdanau", eq. 4-6) and Luong et al. 2015 ("luong", §3.1 eq. 5-8, input feeding
§3.3), chosen by `RNNConfig.attention` (`rnn_attention.ATTENTIONS`). Teacher
forcing runs the decoder step as one compiled `nn.scan`; scheduled sampling
(Bengio et al. 2015) feeds, with probability `sampling_prob` (a traced scalar, so
a schedule never recompiles), a token sampled from the model's previous output
instead of the gold one.

The probability comes from `sampling_prob=` or, in training, from the module's
`sampling_schedule(step)` given the optimizer step; the pass reports it as the
"metrics" collection's "sampling_probability".

Trainer-facing interface (shared with `Transformer`, see `jaxattn.models`):
`__call__`, `encode`, `decode`, `init_cache`, `decode_step`, `attention_map`, `attention_maps`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxattn import _checks
from jaxattn.models.configs import RNNConfig
from jaxattn.models.rnn_decoder import DecoderCell
from jaxattn.models.rnn_encoder import Bridge, RNNEncoder
from jaxattn.models.teacher_forcing import shift_right

__all__ = ["RNNSeq2Seq"]


def _scan_body(cell, carry, xs, memory, *, train):
    return cell(carry, xs, memory, train=train)


class RNNSeq2Seq(nn.Module):
    """RNN encoder-decoder with optional attention.

    Attributes:
      config: `RNNConfig`.
      sampling_schedule: scheduled sampling in training: the optimizer step
        (int scalar, may be traced) -> the probability of feeding a sampled
        token (float scalar); None = teacher forcing only.
    """

    config: RNNConfig
    sampling_schedule: Callable | None = None

    def setup(self):
        cfg = self.config
        self.encoder = RNNEncoder(cfg)
        self.bridge = Bridge(cfg)
        self.cell = DecoderCell(cfg)

    def __call__(self, inputs, targets, *, train: bool = False, step=None, sampling_prob=None):
        """Teacher-forced forward pass.

        Args:
          inputs: [B, S] int source ids (0-padded).
          targets: [B, T] int target ids (0-padded, eos-terminated); the decoder
            reads `shift_right(targets)` with <sos> in front.
          train: enables dropout ("dropout" rng).
          step: the optimizer step (int scalar, may be traced); in training it
            gives `sampling_prob = sampling_schedule(step)` when the module has a
            schedule and `sampling_prob` is None.
          sampling_prob: None (pure teacher forcing) or a float scalar (may be
            traced): per position, the probability of feeding a token sampled
            from the model instead of the gold one (needs a "sampling" rng).
            Reported as the "metrics" collection's "sampling_probability" (kept
            when "metrics" is mutable).

        Returns:
          [B, T, V] float32 logits.
        """
        if sampling_prob is None and train and step is not None and self.sampling_schedule is not None:
            sampling_prob = self.sampling_schedule(step)
        if sampling_prob is not None:
            self.sow("metrics", "sampling_probability", jnp.asarray(sampling_prob, jnp.float32))
        encoded = self.encode(inputs, train=train)
        return self.decode(encoded, targets, train=train, sampling_prob=sampling_prob)

    def encode(self, inputs, *, train: bool = False):
        """Encodes a source batch once per sentence.

        Args:
          inputs: [B, S] int source ids.
          train: enables dropout.

        Returns:
          A dict pytree whose leaves all lead with B: "values" [B, S, C],
          "valid" [B, S], the decoder's initial "rnn" carries, and what the
          attention prepares once per sentence (Bahdanau: "keys" [B, S, A];
          none: "context" [B, C]).
        """
        _checks.check_rank(inputs, "inputs", "BS")
        _checks.check_int(inputs, "inputs")
        values, finals, valid = self.encoder(inputs, train=train)  # [B, S, C]
        return {"values": values, "valid": valid, "rnn": self.bridge(finals),
                **self.cell.prepare(values, finals)}

    def check_length(self, length: int, name: str) -> None:
        """Sequences of any length are fine for an RNN (the shared interface of `Transformer.check_length`)."""
        del length, name

    def init_cache(self, encoded, max_len: int):
        """Splits `encoded` into per-sentence memory and the step-0 decoder state.

        Args:
          encoded: the output of `encode`.
          max_len: unused by RNNs (kept for the shared interface).

        Returns:
          (memory, state): memory is constant during decoding; state is what
          `decode_step` updates (and what beam search reorders).
        """
        del max_len
        memory = {k: v for k, v in encoded.items() if k != "rnn"}
        state = {"rnn": encoded["rnn"], **self.cell.initial_state(encoded["values"].shape[0])}
        return memory, state

    def decode_step(self, memory, state, tokens, index):
        """One decoding step.

        Args:
          memory, state: from `init_cache` (or the previous step).
          tokens: [B] int previous tokens y_{t-1} (<sos> at step 0).
          index: scalar int step t (unused by RNNs).

        Returns:
          (logits [B, V] float32, new state).
        """
        del index
        _checks.check_rank(tokens, "tokens", "B")
        state, (logits, _) = self.cell(state, {"token": tokens}, memory)
        return logits, state

    def decode(self, encoded, targets, *, train: bool = False, sampling_prob=None):
        """Teacher-forced decoder over a whole target batch (one compiled scan).

        Args:
          encoded: the output of `encode`.
          targets: [B, T] int target ids.
          train: enables dropout.
          sampling_prob: see `__call__`.

        Returns:
          [B, T, V] float32 logits; with `config.capture_attention`, the
          alignments [B, T, S] are sown as intermediates "alignment" (not for "none").
        """
        cfg = self.config
        b, t = _checks.check_rank(targets, "targets", "BT")
        _checks.check_int(targets, "targets")
        _checks.check_shape(encoded["values"], "encoded['values']", (b, None, None), "BSD")
        memory, carry = self.init_cache(encoded, t)
        decoder_inputs = shift_right(targets, cfg.bos_id)  # [B, T]
        xs = {"token": decoder_inputs.T}  # [T, B]
        if sampling_prob is not None:
            coin_rng, sample_rng = jax.random.split(self.make_rng("sampling"))
            coins = jax.random.uniform(coin_rng, (t, b))  # [T, B]
            # Step 0 reads <sos>: there is no previous prediction to feed.
            first = (jnp.arange(t) == 0)[:, None]  # [T, 1]
            xs["use_model"] = (coins < sampling_prob) & ~first  # [T, B]
            xs["key"] = jax.random.split(sample_rng, t)  # [T] keys
            carry["logits"] = jnp.zeros((b, cfg.vocab_size), jnp.float32)  # [B, V]
        scan = nn.scan(functools.partial(_scan_body, train=train), variable_broadcast="params",
                       split_rngs={"params": False, "dropout": True},
                       in_axes=(0, nn.broadcast), out_axes=0)
        _, (logits, weights) = scan(self.cell, carry, xs, memory)  # [T, B, V]
        if cfg.capture_attention and weights is not None:
            self.sow("intermediates", "alignment", jnp.swapaxes(weights, 0, 1))  # [B, T, S]
        return jnp.swapaxes(logits, 0, 1)  # [B, T, V]

    @nn.nowrap
    def attention_map(self, intermediates):
        """[B, 1, T, S] alignments (one "head") of captured `intermediates`, None without attention.

        The interface is `Transformer.attention_map`'s.
        """
        if "alignment" not in intermediates:
            return None
        return intermediates["alignment"][0][:, None]  # [B, 1, T, S]

    def attention_maps(self, intermediates):
        """Every captured attention by kind: {"alignment": [1, B, 1, T, S]} ({} without attention).

        The interface is `Transformer.attention_maps`'s (one layer, one head).
        """
        weights = self.attention_map(intermediates)
        return {} if weights is None else {"alignment": weights[None]}
