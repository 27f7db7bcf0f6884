"""Label-smoothed cross-entropy with padding masked, and token accuracy.

Label smoothing: Szegedy et al. 2016 sec. 7, used with eps = 0.1 by Vaswani et
al. 2017 sec. 5.4. The target distribution is `1 - eps` on the reference token
and `eps / (V - 1)` on every other token; we subtract that distribution's
entropy so that a perfect model scores 0 (the loss is then a KL divergence)
and report the unsmoothed negative log-likelihood beside it.

Everything is written in terms of `logsumexp(logits)` and the target's logit,
so that no [B, T, V] array other than the logits' own softmax is built, forward
or backward: at real vocabulary sizes the [B, T, V] passes, not the model, are
what a train step pays for. Two rewrites with the plain formulas' values,
measured faster on XLA:CPU (benchmarks/train_step.py), apply on CPU only: the
target logit with a select backward (`_target_logits_cpu`) and a two-level
max/argmax (`_max_and_argmax_cpu`). Other backends, where they were never
measured, get the plain formulas (see `jaxattn.backend`).
"""

import math

import jax
import jax.numpy as jnp

from jaxattn.backend import platform_of

__all__ = ["cross_entropy_sums"]


def _target_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits[b, t, targets[b, t]]: [B, T]."""
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]          # [B, T]


@jax.custom_vjp
def _target_logits_cpu(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """`_target_logits` with a select backward, for XLA:CPU.

    The autodiff transpose of the gather is a scatter-add into a zero [B, T, V]
    array, which XLA:CPU materialises and then reads again in every fusion that
    forms the logits' gradient; the select fuses into that one elementwise loop
    instead.
    """
    return _target_logits(logits, targets)                                           # [B, T]


def _target_logits_fwd(logits, targets):
    return _target_logits(logits, targets), (targets, logits.shape[-1])


def _target_logits_bwd(residuals, g):
    targets, vocab = residuals
    is_target = targets[..., None] == jnp.arange(vocab, dtype=targets.dtype)[None, None, :]  # [B, T, V]
    return jnp.where(is_target, g[..., None], jnp.zeros((), g.dtype)), None          # [B, T, V]


_target_logits_cpu.defvjp(_target_logits_fwd, _target_logits_bwd)


def _max_and_argmax(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """max and argmax over the last axis of [B, T, V] logits: [B, T] each."""
    return jnp.max(logits, axis=-1), jnp.argmax(logits, axis=-1)


def _max_and_argmax_cpu(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`_max_and_argmax` in two levels, for XLA:CPU.

    Same values as `jnp.max` and `jnp.argmax` (the first maximum wins ties;
    NaN counts as the maximum): the max of each of n contiguous blocks
    (n ~ sqrt(V)), the first block holding the overall max, then the first max
    inside that block. XLA:CPU vectorises the max but not the
    (value, index) reduction of `jnp.argmax`, which costs ~20 plain max passes
    over the logits; here that reduction sees only 2 sqrt(V) values per row.
    """
    b, t, vocab = logits.shape
    blocks = math.isqrt(vocab)
    while vocab % blocks:
        blocks -= 1
    if blocks < 8:  # few divisors: one level
        return _max_and_argmax(logits)
    width = vocab // blocks
    tiles = logits.reshape(b, t, blocks, width)                                      # [B, T, n, V/n]
    tile_max = jnp.max(tiles, axis=-1)                                               # [B, T, n]
    tile = jnp.argmax(tile_max, axis=-1)                                             # [B, T]
    inside = jnp.take_along_axis(tiles, tile[..., None, None], axis=2)[..., 0, :]     # [B, T, V/n]
    return jnp.max(tile_max, axis=-1), tile * width + jnp.argmax(inside, axis=-1)


def cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0, *, pad_id: int
) -> dict[str, jax.Array]:
    """Summed losses over the non-pad target tokens.

    Sums (not means) so that they add up exactly across micro-batches, devices
    and hosts; divide by `weight_sum` at the end.

    Args:
      logits: [B, T, V] float32 decoder logits.
      targets: [B, T] int target ids.
      label_smoothing: eps in [0, 1).
      pad_id: the padding id of `targets` (the model config's `pad_id`).

    Returns:
      Scalars: `loss_sum` (label-smoothed), `nll_sum` (unsmoothed negative
      log-likelihood), `correct_sum` (argmax == target), `weight_sum` (number of
      non-pad target tokens), all float32.
    """
    if logits.ndim != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(
            f"logits: got shape {logits.shape}, expected [B, T, V] with [B, T] = targets {targets.shape}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: got {label_smoothing}, expected a value in [0, 1)")
    vocab = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    on_cpu = platform_of(logits) == "cpu"
    max_and_argmax = _max_and_argmax_cpu if on_cpu else _max_and_argmax
    target_logits_of = _target_logits_cpu if on_cpu else _target_logits
    weights = (targets != pad_id).astype(jnp.float32)                       # [B, T]
    peak, predicted = max_and_argmax(jax.lax.stop_gradient(logits))         # [B, T], [B, T]
    lse = peak + jnp.log(jnp.sum(jnp.exp(logits - peak[..., None]), axis=-1))  # [B, T]
    target_logits = target_logits_of(logits, targets)                       # [B, T]
    nll = lse - target_logits                                               # [B, T]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        # -sum_v log p_v = V lse - sum_v logits_v, without a [B, T, V] log_softmax.
        sum_neg_log_probs = vocab * lse - jnp.sum(logits, axis=-1)          # [B, T]
        smoothed = confidence * nll + low * (sum_neg_log_probs - nll)       # [B, T]
        entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
        smoothed = smoothed - entropy
    else:
        smoothed = nll
    correct = (predicted == targets).astype(jnp.float32)                    # [B, T]
    return {
        "loss_sum": jnp.sum(smoothed * weights),
        "nll_sum": jnp.sum(nll * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }
