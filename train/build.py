"""From an `ml_collections` run config to what a run is made of: model, optimizer + schedule, parallel strategy.

`build(config)` turns a config into its `Built` parts once; that construction
is the validation. It runs before the trainer writes anything: a config that
cannot work (unknown model field, heads not dividing D, a batch that cannot be
split over the devices, ...) is refused with a one-line `UserError` naming the
config key, and nothing is written.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxattn import models
from train import early_stopping, optim, sharding
from train.data.config import TSV
from train.errors import UserError, one_line

__all__ = ["MODEL_FAMILIES", "COMPUTE_DTYPES", "DECODE_STRATEGIES", "model_config", "build_model", "Built",
           "build", "validate_config"]

# family -> (frozen hyperparameter dataclass, Flax module)
MODEL_FAMILIES: dict[str, tuple[type, Callable[..., nn.Module]]] = models.MODELS
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DECODE_STRATEGIES = ("greedy", "beam")

def model_config(config: ml_collections.ConfigDict, vocab_size: int, **changes: Any) -> Any:
    """The frozen model dataclass for `config.model` (family fields + vocabulary size).

    Args:
      config: the run config (`model.family`, the family's fields, `compute_dtype`).
      vocab_size: V of the trained tokenizer(s).
      **changes: dataclass fields to override (e.g. `capture_attention=True`).

    Returns:
      A `TransformerConfig` or `RNNConfig`.
    """
    fields = config.model.to_dict()
    family = fields.pop("family")
    if family not in MODEL_FAMILIES:
        raise UserError(f"config.model.family: got {family!r}, expected one of {sorted(MODEL_FAMILIES)}")
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise UserError(
            f"config.compute_dtype: got {config.compute_dtype!r}, expected one of {sorted(COMPUTE_DTYPES)}"
        )
    cls = MODEL_FAMILIES[family][0]
    try:
        return cls(vocab_size=vocab_size, dtype=COMPUTE_DTYPES[config.compute_dtype], **fields, **changes)
    except TypeError as e:  # unknown field
        raise UserError(f"config.model: {e} (family {family!r} takes the fields of {cls.__name__})") from None
    except ValueError as e:  # the model's own checks (e.g. heads dividing the width)
        raise UserError(f"config.model: {one_line(e)}") from None


def build_model(config: ml_collections.ConfigDict, vocab_size: int, **changes: Any) -> nn.Module:
    """The Flax module for `config.model` (see `model_config`).

    With `config.scheduled_sampling.kind` other than "none", the module gets the
    schedule (`optim.make_sampling_schedule`) as its `sampling_schedule`: only
    models that have one (the RNN) take it.
    """
    model_cfg = model_config(config, vocab_size, **changes)  # an unknown family is a UserError here
    module = MODEL_FAMILIES[config.model.family][1](model_cfg)
    schedule = optim.make_sampling_schedule(config)
    if config.scheduled_sampling.kind == "none":
        return module
    _require(hasattr(module, "sampling_schedule"),
             f"config.scheduled_sampling.kind: got {config.scheduled_sampling.kind!r} for model family "
             f"{config.model.family!r}, expected 'none' (scheduled sampling is for the RNN models)")
    return module.clone(sampling_schedule=schedule)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_fields(config: ml_collections.ConfigDict) -> None:
    """The checks of the run config's plain fields (those no part of `Built` makes)."""
    for field in ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "grad_accum_steps"):
        _require(config[field] >= 1, f"config.{field}: got {config[field]}, expected >= 1")
    _require(config.average_last_checkpoints <= max(config.keep_checkpoints, 1),
             f"config.average_last_checkpoints: got {config.average_last_checkpoints}, expected at most "
             f"config.keep_checkpoints={config.keep_checkpoints} (older checkpoints are deleted)")
    _require(config.max_train_minutes >= 0,
             f"config.max_train_minutes: got {config.max_train_minutes}, expected >= 0 (0 = no limit)")
    _require(config.warmup_steps >= 0, f"config.warmup_steps: got {config.warmup_steps}, expected >= 0")
    _require(config.learning_rate > 0, f"config.learning_rate: got {config.learning_rate}, expected > 0")
    _require(0.0 <= config.label_smoothing < 1.0,
             f"config.label_smoothing: got {config.label_smoothing}, expected a value in [0, 1)")
    _require(config.decode.strategy in DECODE_STRATEGIES,
             f"config.decode.strategy: got {config.decode.strategy!r}, expected one of {DECODE_STRATEGIES}")
    _require(config.decode.beam_size >= 1, f"config.decode.beam_size: got {config.decode.beam_size}, expected >= 1")
    _require(config.decode.max_length >= 1,
             f"config.decode.max_length: got {config.decode.max_length}, expected >= 1")
    for field in ("max_length_a", "max_length_b"):
        _require(config.decode[field] >= 0, f"config.decode.{field}: got {config.decode[field]}, expected >= 0")
    early_stopping.check_config(config)
    family = config.model.family
    if config.data.packing:
        _require(family == "transformer",
                 f"config.data.packing: got True for model family {family!r}, expected False "
                 "(packed batches need segment masks: Transformer only)")
    devices = jax.local_device_count()
    _require(config.data.batch_size_multiple % devices == 0,
             f"config.data.batch_size_multiple: got {config.data.batch_size_multiple}, expected a multiple "
             f"of the {devices} local devices (batches are split along B)")
    _require(config.data.eval_batch_size % devices == 0,
             f"config.data.eval_batch_size: got {config.data.eval_batch_size}, expected a multiple "
             f"of the {devices} local devices")
    if jax.process_count() > 1:
        _require(config.data.packing or len(config.data.bucket_lengths) == 1,
                 "config.data.packing: multi-host training needs one batch shape on every host; set "
                 "data.packing=True or a single data.bucket_lengths entry")



def _check_lengths(config: ml_collections.ConfigDict, model: nn.Module) -> None:
    """The model takes the longest sequences the data and decoding can give it (learned positions end)."""
    data = config.data
    lengths = {"data.max_source_length": data.max_source_length, "data.max_target_length": data.max_target_length,
               "data.bucket_lengths": max(data.bucket_lengths, default=0), "data.pack_length": data.pack_length,
               "decode.max_length": config.decode.max_length}
    for name, length in lengths.items():
        try:
            model.check_length(length, f"config.{name}")
        except ValueError as e:
            raise UserError(f"{one_line(e)}: raise config.model.max_len or lower config.{name}") from None


@dataclasses.dataclass(frozen=True)
class Built:
    """What a run config is made into, once (see `build`).

    Attributes:
      model: the Flax module (sized for `config.data.vocab_size` until
        `with_vocab_size` gives it the trained vocabulary's size).
      schedule: the learning rate per optimizer update (the optimizer's own).
      optimizer: the optax transformation driven by `schedule`.
      parallel: the data-parallel strategy (`train.sharding.PARALLEL`).
    """

    model: nn.Module
    schedule: optim.Schedule
    optimizer: optax.GradientTransformation
    parallel: Any

    def with_vocab_size(self, vocab_size: int) -> "Built":
        """The same parts, with the model sized for a vocabulary of `vocab_size` entries."""
        try:
            model_cfg = self.model.config.replace(vocab_size=vocab_size)
        except ValueError as e:
            raise UserError(f"config.model: {one_line(e)}") from None
        return dataclasses.replace(self, model=self.model.clone(config=model_cfg))


def build(config: ml_collections.ConfigDict, parallel: Any = None, *, data: bool = True) -> Built:
    """Turns a run config into its model, optimizer with schedule and parallel strategy.

    Every part is made once, here; a config that cannot make one is a one-line
    `UserError` naming the config key, and so is any other field that cannot
    train. Nothing is written.

    Args:
      config: the run config.
      parallel: a strategy to use instead of the one `config.parallel` names
        (e.g. one device for loading a trained model).
      data: whether to check that `config.data.dataset` names a dataset. False
        where only the model is built (translating a trained run), so that TFDS
        is not loaded.

    Returns:
      `Built`, its model sized for `config.data.vocab_size` (the trainer
      resizes it for the trained vocabulary with `Built.with_vocab_size`).
    """
    if data and config.data.dataset != TSV:
        from train.data import catalog  # noqa: PLC0415  (TFDS loads only where data is read)

        catalog.check_name(config.data.dataset)  # before the data is prepared
    model = build_model(config, vocab_size=max(config.data.vocab_size, 8))  # family, fields, dtype
    schedule = optim.make_schedule(config)
    optimizer = optim.make_optimizer(config, schedule)
    parallel = parallel if parallel is not None else sharding.make_parallel(config)
    _check_fields(config)
    _check_lengths(config, model)
    return Built(model, schedule, optimizer, parallel)


def validate_config(config: ml_collections.ConfigDict) -> Built:
    """Raises a one-line UserError for a config that cannot train; writes nothing (`build`)."""
    return build(config)
