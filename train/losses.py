"""Label-smoothed cross-entropy with padding masked, and token accuracy.

Label smoothing: Szegedy et al. 2016 sec. 7, used with eps = 0.1 by Vaswani et
al. 2017 sec. 5.4. The target distribution is `1 - eps` on the reference token
and `eps / (V - 1)` on every other token; we subtract that distribution's
entropy so that a perfect model scores 0 (the loss is then a KL divergence)
and report the unsmoothed negative log-likelihood beside it.
"""

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy_sums", "PAD_ID"]

PAD_ID = 0


def cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
    """Summed losses over the non-pad target tokens.

    Sums (not means) so that they add up exactly across micro-batches, devices
    and hosts; divide by `weight_sum` at the end.

    Args:
      logits: [B, T, V] float32 decoder logits.
      targets: [B, T] int target ids, 0 = pad.
      label_smoothing: eps in [0, 1).

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
    weights = (targets != PAD_ID).astype(jnp.float32)                       # [B, T]
    log_probs = jax.nn.log_softmax(logits, axis=-1)                         # [B, T, V]
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, T]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        # -sum_v q_v log p_v without materialising the [B, T, V] one-hot q.
        sum_neg_log_probs = -jnp.sum(log_probs, axis=-1)                    # [B, T]
        smoothed = confidence * nll + low * (sum_neg_log_probs - nll)       # [B, T]
        entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
        smoothed = smoothed - entropy
    else:
        smoothed = nll
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)  # [B, T]
    return {
        "loss_sum": jnp.sum(smoothed * weights),
        "nll_sum": jnp.sum(nll * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }
