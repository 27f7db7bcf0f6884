"""The pure training and evaluation steps.

`train_step(state, batch, rng) -> (state, metrics)` and `eval_step(params,
batch) -> metrics` are module-level pure functions. Static arguments (the model,
label smoothing, the pmap axis name, ...) are bound with `functools.partial`
by the caller, which jits once, donating the state except on CPU (see
`train.sharding`). The same functions run under `jax.jit` with a sharded batch
(the compiler inserts the gradient all-reduce) and under `jax.pmap`, where
`axis_name` makes the all-reduce explicit.

Metrics are returned as sums (see `train.losses`), so they aggregate exactly
over steps, devices and hosts; what the model reports of itself (e.g. the RNN's
scheduled-sampling probability) is returned as is, under "reported".

The steps call the model with the batch as it comes, `model.apply(variables,
**batch, ...)`: every batch field is named after the model argument it feeds.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state

from train import losses

__all__ = [
    "TrainState",
    "init_state",
    "train_step",
    "eval_step",
    "summarize",
]

TrainState = train_state.TrainState

def init_state(
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, int],
    target_shape: tuple[int, int],
) -> TrainState:
    """Initialises parameters and optimizer state (pure; jit it with out_shardings).

    Args:
      rng: PRNG key for parameter initialisation.
      model: a jaxattn model (`model.init(rngs, inputs, targets)`).
      tx: the optimizer.
      input_shape: (B, S) of the dummy source batch used to trace shapes.
      target_shape: (B, T) of the dummy target batch.

    Returns:
      A `TrainState` at step 0.
    """
    params_rng, dropout_rng = jax.random.split(rng)
    inputs = jnp.ones(input_shape, jnp.int32)                               # [B, S]
    targets = jnp.ones(target_shape, jnp.int32)                             # [B, T]
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, inputs, targets)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    # A strongly typed step counter, as a restored checkpoint's is: with TrainState's weak-typed 0 a
    # resumed run's train step would be another program, traced and compiled again.
    return state.replace(step=jnp.zeros((), jnp.int32))


def _non_pad_tokens(batch: dict[str, Any], pad_id: int) -> jax.Array:
    return jnp.sum(batch["inputs"] != pad_id) + jnp.sum(batch["targets"] != pad_id)


def _reported(variables: Any) -> dict[str, jax.Array]:
    """The scalars the model sowed into "metrics" (the last value of each), by name."""
    sown = traverse_util.flatten_dict(dict(variables.get("metrics", {})), sep="/")
    return {name: values[-1] for name, values in sown.items()}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    model: nn.Module,
    label_smoothing: float,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    grad_accum_steps: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step (or micro-step, with gradient accumulation).

    Args:
      state: the train state; donated by the jitted caller (except on CPU).
      batch: `inputs` [B, S], `targets` [B, T] int32 (padded with the model
        config's `pad_id`), optionally the packing arrays (`inputs_segmentation`,
        `inputs_positions`, ...): the model's keyword arguments. Under pmap, the
        per-device shard.
      rng: the run's base key; the step's key is `fold_in(rng, state.step)`.
      model: the Flax module (static); `model.config.pad_id` marks padding.
      label_smoothing: eps for the training loss (static).
      learning_rate_fn: the schedule, for logging only (static).
      grad_accum_steps: micro-steps per update, to log the right learning rate.
      axis_name: the pmap axis to all-reduce over; None under jit.

    Returns:
      The new state and a dict of scalar metrics: the sums of
      `train.losses.cross_entropy_sums`, `tokens` (non-pad source + target),
      `grad_norm`, `learning_rate`, `finite`, and "reported": {name: scalar}
      what the model sowed into its "metrics" collection (the RNN's
      `sampling_probability` under scheduled sampling), not summed.
    """
    step_rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    dropout_rng, sampling_rng = jax.random.split(step_rng)
    rngs = {"dropout": dropout_rng, "sampling": sampling_rng}  # "sampling": RNN scheduled sampling

    pad_id = model.config.pad_id
    weight_total = jnp.sum(batch["targets"] != pad_id).astype(jnp.float32)
    if axis_name is not None:
        weight_total = jax.lax.psum(weight_total, axis_name)
    weight_total = jnp.maximum(weight_total, 1.0)

    def loss_fn(params):
        logits, variables = state.apply_fn(
            {"params": params}, **batch, train=True, step=state.step, rngs=rngs, mutable=["metrics"]
        )                                                                   # [B, T, V]
        sums = losses.cross_entropy_sums(logits, batch["targets"], label_smoothing, pad_id=pad_id)
        # This shard's share of the global-batch mean: the all-reduced sum of
        # these gradients is the gradient of the mean over every token of the
        # global batch, even when shards hold different token counts.
        return sums["loss_sum"] / weight_total, (sums, _reported(variables))

    grads, (sums, reported) = jax.grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(sums, tokens=_non_pad_tokens(batch, pad_id).astype(jnp.float32))
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
        metrics = jax.lax.psum(metrics, axis_name)
    new_state = state.apply_gradients(grads=grads)
    grad_norm = optax.tree.norm(grads)
    metrics["grad_norm"] = grad_norm
    metrics["learning_rate"] = learning_rate_fn(state.step // grad_accum_steps)
    metrics["reported"] = reported  # the same on every device: not all-reduced
    metrics["finite"] = (jnp.isfinite(metrics["loss_sum"]) & jnp.isfinite(grad_norm)).astype(jnp.float32)
    return new_state, metrics


def eval_step(
    params: Any,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    label_smoothing: float,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """Teacher-forced loss sums and token accuracy on one batch.

    Args:
      params: model parameters.
      batch: as for `train_step`.
      model: the Flax module (static); `model.config.pad_id` marks padding.
      label_smoothing: eps, so that the eval loss is comparable to training.
      axis_name: the pmap axis to sum over; None under jit.

    Returns:
      The sums of `train.losses.cross_entropy_sums` plus `tokens`.
    """
    logits = model.apply({"params": params}, **batch, train=False)          # [B, T, V]
    pad_id = model.config.pad_id
    metrics = losses.cross_entropy_sums(logits, batch["targets"], label_smoothing, pad_id=pad_id)
    metrics["tokens"] = _non_pad_tokens(batch, pad_id).astype(jnp.float32)
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return metrics


def summarize(sums: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
    """Host-side: turn summed metrics into means (loss, nll, perplexity, accuracy)."""
    weight = max(float(sums["weight_sum"]), 1.0)
    nll = float(sums["nll_sum"]) / weight
    return {
        f"{prefix}/loss": float(sums["loss_sum"]) / weight,
        f"{prefix}/nll": nll,
        f"{prefix}/perplexity": float(np.exp(min(nll, 50.0))),
        f"{prefix}/accuracy": float(sums["correct_sum"]) / weight,
    }

