"""From an `ml_collections` run config to what a run is made of, with every check done up front.

`build(config)` turns a config into its `Built` parts -- the model, the
optimizer with its learning-rate schedule, the parallel strategy -- once; that
construction is the validation (`validate_config` is its other name). It and
`check_workdir` run before the trainer writes anything: a config that cannot
work (unknown model field, heads not dividing D, a batch that cannot be split
over the devices, ...) or a workdir that holds another model is refused with a
one-line `UserError`, and nothing is overwritten.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxattn import models
from train import optim, sharding
from train.errors import UserError

__all__ = [
    "MODEL_FAMILIES",
    "COMPUTE_DTYPES",
    "DECODE_STRATEGIES",
    "CONFIG_FILE",
    "model_config",
    "build_model",
    "Built",
    "build",
    "validate_config",
    "check_workdir",
    "identity",
    "diff",
    "save_config",
    "DECODE_TIME_FIELDS",
    "read_workdir_config",
    "trained_run_config",
]

# family -> (frozen hyperparameter dataclass, Flax module)
MODEL_FAMILIES: dict[str, tuple[type, Callable[..., nn.Module]]] = models.MODELS
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DECODE_STRATEGIES = ("greedy", "beam")
CONFIG_FILE = "config.json"

# Data fields that define what the model was trained on; resuming with other
# values would silently mix datasets or vocabularies.
_DATA_IDENTITY = ("dataset", "source_lang", "target_lang", "vocab_size", "vocab_model_type",
                  "shared_vocab", "train_file", "train_source_file", "train_target_file")


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
        raise UserError(f"config.model: {' '.join(str(e).split())}") from None


def build_model(config: ml_collections.ConfigDict, vocab_size: int, **changes: Any) -> nn.Module:
    """The Flax module for `config.model` (see `model_config`).

    With `config.scheduled_sampling.kind` other than "none", the module gets the
    schedule (`optim.make_sampling_schedule`) as its `sampling_schedule`: only
    models that have one (the RNN) take it.
    """
    module = MODEL_FAMILIES[config.model.family][1](model_config(config, vocab_size, **changes))
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
            raise UserError(f"config.model: {' '.join(str(e).split())}") from None
        return dataclasses.replace(self, model=self.model.clone(config=model_cfg))


def build(config: ml_collections.ConfigDict, parallel: Any = None) -> Built:
    """Turns a run config into its model, optimizer with schedule and parallel strategy.

    Every part is made once, here; a config that cannot make one is a one-line
    `UserError` naming the config key, and so is any other field that cannot
    train. Nothing is written.

    Args:
      config: the run config.
      parallel: a strategy to use instead of the one `config.parallel` names
        (e.g. one device for loading a trained model).

    Returns:
      `Built`, its model sized for `config.data.vocab_size` (the trainer
      resizes it for the trained vocabulary with `Built.with_vocab_size`).
    """
    model = build_model(config, vocab_size=max(config.data.vocab_size, 8))  # family, fields, dtype
    schedule = optim.make_schedule(config)
    optimizer = optim.make_optimizer(config, schedule)
    parallel = parallel if parallel is not None else sharding.make_parallel(config)
    _check_fields(config)
    return Built(model, schedule, optimizer, parallel)


def validate_config(config: ml_collections.ConfigDict) -> Built:
    """Raises a one-line UserError for a config that cannot train; writes nothing (`build`)."""
    return build(config)


def identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The parts of a config that a workdir's checkpoints are bound to."""
    return {
        "model": config.model.to_dict(),
        "data": {k: config.data[k] for k in _DATA_IDENTITY},
    }


def diff(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences of two nested dicts (another model family: only that)."""
    if prefix == "" and stored.get("model", {}).get("family") != current.get("model", {}).get("family"):
        return [f"model.family: workdir has {stored['model'].get('family')!r}, "
                f"config has {current['model'].get('family')!r}"]
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
            out.append(f"{prefix}{key}: workdir has {a!r}, config has {b!r}")
    return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Refuses a workdir whose saved config describes another model or dataset.

    Returns:
      True if the workdir already holds a run (it will be resumed).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"workdir: {workdir!r} exists and is not a directory")
    if not os.path.exists(path):
        return False
    stored = read_workdir_config(workdir)  # a damaged file is a one-line error naming it
    differences = diff(identity(ml_collections.ConfigDict(stored)), identity(config))
    if differences:
        raise UserError(
            f"workdir {workdir!r} holds a different model ({'; '.join(differences[:3])}); "
            "use a new --workdir"
        )
    return True


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config as JSON (process 0 only); returns the path."""
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2, sort_keys=True))
        os.replace(tmp, path)
    return path


# Fields that `--mode=eval/translate/score` may change on a trained run: how it is decoded and
# evaluated, where data and devices are. Everything else would describe another model.
DECODE_TIME_FIELDS = (
    "decode.", "data.eval_splits", "data.eval_max_examples", "data.eval_batch_size", "data.data_dir",
    "data.test_file",
    "data.test_source_file", "data.test_target_file", "num_samples", "num_heatmaps", "progress_bar",
    "compute_dtype", "parallel", "distributed.", "compilation_cache_dir", "average_last_checkpoints",
)


def _merge_defaults(stored: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`stored` with fields added to the configs since it was written taken from `defaults`."""
    merged = dict(stored)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict) and key != "model":
            merged[key] = _merge_defaults(merged[key], value)
    return merged


def read_workdir_config(workdir: str) -> dict[str, Any]:
    """The resolved config a run saved in `<workdir>/config.json`, as a plain dict."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"workdir: no {CONFIG_FILE} in {workdir!r}; train a model there first "
                        "(python -m train.translate --workdir=...)")
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable run config ({' '.join(str(e).split())}); restore it from "
                        "the newest checkpoint's config item or re-train in a new --workdir") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise UserError(f"{path}: not a jaxattn run config (no 'model' section); re-train in a new --workdir")
    return stored


def trained_run_config(workdir: str, overrides: dict[str, Any],
                       config_file: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The config of the run in `workdir`, with decode-time `overrides` applied.

    `--mode=eval/translate/score` need only `--workdir`: the run's saved config
    describes the model. `overrides` (the `--config.<field>` flags given) may
    change `DECODE_TIME_FIELDS`; one that would change the model or its data is
    a `UserError` naming it. An explicitly given `config_file` must describe the
    same model (its decode-time fields are used).

    Args:
      workdir: a run directory holding `config.json`.
      overrides: {dotted field path: value} from the command line.
      config_file: the `--config` file's config, if the flag was given.

    Returns:
      A ConfigDict ready for `train_lib.evaluate` / `translate`.
    """
    from train.configs import base  # configs import train.data; keep this module light

    stored = read_workdir_config(workdir)
    defaults = base.get_base_config().to_dict()
    config = ml_collections.ConfigDict(_merge_defaults(stored, defaults))
    if config_file is not None:
        differences = diff(identity(config), identity(config_file))
        if differences:
            raise UserError(f"--config: describes a different model than the run in {workdir!r} "
                            f"({'; '.join(differences[:3])}); leave --config out to use the run's own")
        for path in DECODE_TIME_FIELDS:
            section, _, field = path.partition(".")
            if path.endswith("."):
                config[section] = config_file[section]
            elif field and field in config_file[section]:
                config[section][field] = config_file[section][field]
            elif not field and section in config_file:
                config[section] = config_file[section]
    for path, value in overrides.items():
        stored_value = _get_path(config, path)
        if any(path == f or (f.endswith(".") and path.startswith(f)) for f in DECODE_TIME_FIELDS):
            _set_path(config, path, value)
        elif json.loads(json.dumps(stored_value, default=str)) != json.loads(json.dumps(value, default=str)):
            raise UserError(
                f"--config.{path}: got {value!r}, but the run in {workdir!r} was trained with {stored_value!r}; "
                "eval/translate may only change decode-time settings (decode.*, data.eval_splits, data.test_*, "
                "data.data_dir, compute_dtype, parallel): train a new model in a new --workdir to change it")
    return config


def _get_path(config: ml_collections.ConfigDict, path: str) -> Any:
    node = config
    for part in path.split("."):
        node = node[part] if part in node else None
        if node is None:
            return None
    return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def _set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
