"""Learning-rate schedules, the optimizer and the scheduled-sampling schedule.

* Noam schedule, Vaswani et al. 2017 ("Attention Is All You Need") eq. 3:
  `lrate = d^-0.5 * min(step^-0.5, step * warmup^-1.5)`. We write it with its
  peak made explicit, `peak * min(step / warmup, sqrt(warmup / step))`, which
  is the same curve with `peak = d^-0.5 * warmup^-0.5` (7.0e-4 for the base
  model: d = 512, warmup = 4000).
* Adam (Kingma & Ba 2015) with beta2 = 0.98 as in Vaswani et al. 2017 sec. 5.3,
  global-norm gradient clipping, optional decoupled weight decay (AdamW,
  Loshchilov & Hutter 2019) on matrices only, optional gradient accumulation
  (`optax.MultiSteps`).
* Scheduled sampling, Bengio et al. 2015 sec. 2.4: the probability of feeding
  the model its own prediction instead of the ground-truth previous token is
  `1 - eps_i`, with `eps_i` decaying linearly or as the inverse sigmoid
  `k / (k + exp(i / k))`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from train.errors import UserError

__all__ = [
    "SCHEDULES",
    "SAMPLING_SCHEDULES",
    "make_schedule",
    "make_optimizer",
    "make_sampling_schedule",
]

Schedule = Callable[[jax.Array], jax.Array]


def _noam(config: ml_collections.ConfigDict) -> Schedule:
    peak, warmup = config.learning_rate, config.warmup_steps

    def schedule(count):
        step = jnp.maximum(jnp.asarray(count, jnp.float32) + 1.0, 1.0)
        return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return schedule


def _cosine(config: ml_collections.ConfigDict) -> Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.num_train_steps // config.grad_accum_steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.end_learning_rate_factor,
    )


def _constant(config: ml_collections.ConfigDict) -> Schedule:
    return optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))


SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict], Schedule]] = {
    "noam": _noam,
    "cosine": _cosine,
    "constant": _constant,  # linear warmup, then constant
}


def make_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """Learning rate as a function of the optimizer-update count.

    Args:
      config: the training config (`schedule`, `learning_rate`, `warmup_steps`,
        `num_train_steps`, `grad_accum_steps`, `end_learning_rate_factor`).

    Returns:
      A function from the update count (scalar int) to the learning rate
      (scalar float32).
    """
    if config.schedule not in SCHEDULES:
        raise UserError(f"config.schedule: got {config.schedule!r}, expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[config.schedule](config)


def _decay_mask(params):
    # Weight decay on matrices only: biases, layer-norm scales and other 1-D
    # parameters are left alone (Loshchilov & Hutter 2019; as in most LMs).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: Schedule | None = None
                   ) -> optax.GradientTransformation:
    """Adam(W) with clipping and optional accumulation, driven by `make_schedule`.

    Args:
      config: the training config (`adam_b1`, `adam_b2`, `adam_eps`,
        `weight_decay`, `grad_clip_norm`, `grad_accum_steps` and the schedule
        fields).
      schedule: the learning-rate schedule, if already made from `config`
        (`train.build.build` makes it once); else `make_schedule(config)`.

    Returns:
      An optax transformation. With `grad_accum_steps > 1` it is wrapped in
      `optax.MultiSteps`: parameters change every `grad_accum_steps` calls,
      with the mean of the accumulated gradients.
    """
    schedule = make_schedule(config) if schedule is None else schedule
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
    if config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx


def _no_sampling(config: ml_collections.ConfigDict) -> Schedule:
    del config
    return lambda step: jnp.zeros((), jnp.float32)


def _linear_sampling(config: ml_collections.ConfigDict) -> Schedule:
    ss = config.scheduled_sampling

    def schedule(step):
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(ss.ramp_steps, 1), 0.0, 1.0)
        return ss.max_probability * frac

    return schedule


def _inverse_sigmoid_sampling(config: ml_collections.ConfigDict) -> Schedule:
    ss = config.scheduled_sampling

    def schedule(step):
        i = jnp.asarray(step, jnp.float32)
        eps = ss.k / (ss.k + jnp.exp(jnp.minimum(i / ss.k, 80.0)))  # P(ground truth)
        return ss.max_probability * (1.0 - eps)

    return schedule


SAMPLING_SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict], Schedule]] = {
    "none": _no_sampling,
    "linear": _linear_sampling,
    "inverse_sigmoid": _inverse_sigmoid_sampling,
}


def make_sampling_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """Probability of feeding the model's own previous prediction, per step.

    Args:
      config: the training config (`scheduled_sampling.kind`, `.max_probability`,
        `.ramp_steps`, `.k`).

    Returns:
      A function from the training step (scalar int) to a probability in
      [0, max_probability] (scalar float32), traced inside the train step.
    """
    kind = config.scheduled_sampling.kind
    if kind not in SAMPLING_SCHEDULES:
        raise UserError(
            f"config.scheduled_sampling.kind: got {kind!r}, expected one of {sorted(SAMPLING_SCHEDULES)}"
        )
    return SAMPLING_SCHEDULES[kind](config)
