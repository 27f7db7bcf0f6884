"""The config a run saves in its workdir: the workdir's identity, and what may change when it is read back.

`<workdir>/config.json` holds the resolved config of the run. A training
launch on a workdir that holds another model or dataset is refused
(`check_workdir`); `--mode=eval/translate/score/align/serve/export` read the run's own config
(`trained_run_config`) and may only change how it is decoded, evaluated, aligned and served.
"""

import functools
import json
import os
from typing import Any

import jax
import ml_collections

from train.errors import UserError, one_line

__all__ = ["CONFIG_FILE", "DECODE_TIME_FIELDS", "identity", "diff", "check_workdir", "save_config",
           "read_workdir_config", "trained_run_config"]

CONFIG_FILE = "config.json"

# Data fields that define what the model was trained on; resuming with other
# values would silently mix datasets or vocabularies.
_DATA_IDENTITY = ("dataset", "source_lang", "target_lang", "vocab_size", "vocab_model_type",
                  "shared_vocab", "train_file", "train_source_file", "train_target_file")

# Fields that `--mode=eval/translate/score/align/serve/export` may change on a trained run: how it is
# decoded, evaluated, aligned and served, where data and devices are. Everything else would describe
# another model.
DECODE_TIME_FIELDS = (
    "decode.", "data.eval_splits", "data.eval_max_examples", "data.eval_batch_size", "data.data_dir",
    "data.test_file", "data.test_source_file", "data.test_target_file", "num_samples", "num_heatmaps",
    "progress_bar", "compute_dtype", "parallel", "distributed.", "compilation_cache_dir",
    "average_last_checkpoints", "serve.", "align.",
)


def identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The parts of a config that a workdir's checkpoints are bound to."""
    return {
        "model": config.model.to_dict(),
        "data": {k: config.data[k] for k in _DATA_IDENTITY},
    }


def _plain(value: Any) -> Any:
    """`value` as JSON gives it back (tuples as lists), for comparing a saved config with a live one."""
    return json.loads(json.dumps(value, default=str))


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
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key}: workdir has {a!r}, config has {b!r}")
    return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Refuses a workdir whose saved config describes another model or dataset.

    Returns:
      True if the workdir already holds a run (it will be resumed).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        os.stat(workdir)
    except FileNotFoundError:
        pass
    except OSError as e:  # a name too long for the file system, a parent that is a file, ...
        raise UserError(f"workdir: {workdir[:60]!r}{'...' if len(workdir) > 60 else ''} cannot be used "
                        f"({e.strerror}; longest name part {max(map(len, workdir.split(os.sep)))} characters)"
                        ) from None
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
    """Writes the resolved config as JSON (process 0 only; replaced in one rename); returns the path."""
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2, sort_keys=True))
        os.replace(tmp, path)
    return path


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
        raise UserError(f"{path}: unreadable run config ({one_line(e)}); restore it from "
                        "the newest checkpoint's config item or re-train in a new --workdir") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise UserError(f"{path}: not a jaxattn run config (no 'model' section); re-train in a new --workdir")
    return stored


def _decode_time(path: str) -> bool:
    return any(path == f or (f.endswith(".") and path.startswith(f)) for f in DECODE_TIME_FIELDS)


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    try:
        value = functools.reduce(lambda node, key: node[key], path.split("."), config)
    except (KeyError, AttributeError, TypeError):
        return None
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def trained_run_config(workdir: str, overrides: dict[str, Any],
                       config_file: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The config of the run in `workdir`, with decode-time `overrides` applied.

    `--mode=eval/translate/score/align/serve/export` need only `--workdir`: the run's saved config
    describes the model; fields added to the configs since it was saved come
    from the defaults. `overrides` (the `--config.<field>` flags given) may
    change `DECODE_TIME_FIELDS`; one that would change the model or its data is
    a `UserError` naming it. An explicitly given `config_file` must describe the
    same model (its decode-time fields are used).

    Args:
      workdir: a run directory holding `config.json`.
      overrides: {dotted field path: value} from the command line.
      config_file: the `--config` file's config, if the flag was given.

    Returns:
      A ConfigDict ready for `train.modes.evaluate` / `translate`.
    """
    from train.configs import base  # configs import train.data; keep this module light

    config = base.get_base_config()
    config.update(read_workdir_config(workdir))  # ml_collections merges section by section
    if config_file is not None:
        differences = diff(identity(config), identity(config_file))
        if differences:
            raise UserError(f"--config: describes a different model than the run in {workdir!r} "
                            f"({'; '.join(differences[:3])}); leave --config out to use the run's own")
        given = {path.rstrip("."): _get(config_file, path.rstrip(".")) for path in DECODE_TIME_FIELDS}
        config.update_from_flattened_dict({path: value for path, value in given.items() if value is not None})
    for path, value in overrides.items():
        if not _decode_time(path) and _plain(_get(config, path)) != _plain(value):
            raise UserError(
                f"--config.{path}: got {value!r}, but the run in {workdir!r} was trained with {_get(config, path)!r}; "
                "eval/translate may only change decode-time settings (decode.*, data.eval_splits, data.test_*, "
                "data.data_dir, compute_dtype, parallel, serve.*): train a new model in a new --workdir to change it")
    config.update_from_flattened_dict({p: v for p, v in overrides.items() if _decode_time(p)})
    return config
