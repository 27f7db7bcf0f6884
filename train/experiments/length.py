r"""Translation quality against source length: the analogue of Bahdanau et al. 2014, Fig. 2.

    python -m train.experiments.length        # number_lists/long, 4 models x 600 steps
                                              # -> docs/length_experiment_lists.* (~26 min, 2 CPU cores)
    python -m train.experiments.length --dataset=number_words/long   # -> docs/length_experiment.* (~35 min)
    python -m train.experiments.length --steps=1000 --models=plain,bahdanau \
        --workdir=runs/length_small --output=runs/length_small/report

Trains the fixed-context RNN encoder-decoder (no attention; Cho et al. 2014), RNNsearch
(Bahdanau et al. 2014, additive attention, eq. 5-6), Luong et al. 2015 global attention
(general score, eq. 8) and the Transformer (Vaswani et al. 2017) with one common step budget
on a dataset of `DATASETS`: by default `number_lists/long` (1 to 8 numbers below 10^4 joined
by "then": 2 to ~60 English words, the range of Bahdanau's Fig. 2), or `number_words/long`
(single numbers below 10^9: at most 17 words, too short for the fixed context to run out of
room). Each dataset's entry sets the token lengths, batch buckets, decode length, word buckets,
budget and default paths. Every model is its family's config file (`train/configs/`) with the
same data overrides, so all of them see the same vocabulary and the same batches in the same order.
Training is the one trainer (`train.loop.train_and_evaluate`), each model in
`<workdir>/<model>`, so an interrupted experiment resumes where it stopped (a model that
finished is not retrained). Then the test predictions are bucketed by source length in words
(`train.experiments.length_report`) and written as `<output>.png` (BLEU, chrF and exact
match against length), `<output>.json` (every number) and `<output>.md` (command, machine, wall
times, tables). Text from a "## Reading" heading on in an existing `<output>.md` is kept.

Bad input (unknown model name, steps < 1, ...) ends with one `error: ...` line and exit 1.
"""

import dataclasses
import datetime
import functools
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from jaxattn.models import count_params
from train import build, cli, evaluation, loop, saved_config
from train.configs import rnn_bahdanau, rnn_luong, rnn_plain, transformer
from train.data import load_tokenizers
from train.experiments import length_report
from train.errors import UserError

__all__ = ["MODELS", "LABELS", "DatasetSettings", "DATASETS", "DEFAULT_DATASET", "dataset_settings",
           "parse_models", "experiment_config", "count_parameters", "machine_description", "run_experiment"]

_log = logging.getLogger(__name__)

# name -> the family's config file (train/configs/); the experiment only overrides data and budget.
MODELS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "plain": rnn_plain.get_config,
    "bahdanau": rnn_bahdanau.get_config,
    "luong": rnn_luong.get_config,
    "transformer": transformer.get_config,
}
LABELS = {
    "plain": "RNN enc-dec, no attention",
    "bahdanau": "RNNsearch (Bahdanau)",
    "luong": "Luong global attention",
    "transformer": "Transformer",
}
_CONFIG_FILES = {"plain": "rnn_plain.py", "bahdanau": "rnn_bahdanau.py", "luong": "rnn_luong.py",
                 "transformer": "transformer.py"}


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """What the experiment sets per dataset (token counts measured with the shared V=256 vocabulary).

    Attributes:
      max_length: `data.max_source_length` and `data.max_target_length` (eos included): the
        longest tokenized source or target of the dataset, so no pair is filtered out.
      bucket_lengths: `data.bucket_lengths`, ascending, last == max_length.
      decode_max_length: `decode.max_length`, room above the longest target.
      buckets: (low, high) source-word buckets of the report, contiguous from 1, last open-ended.
      steps: default common step budget.
      workdir: default experiment directory.
      output: default report path prefix.
    """

    max_length: int
    bucket_lengths: tuple[int, ...]
    decode_max_length: int
    buckets: tuple[length_report.Bucket, ...]
    steps: int
    workdir: str
    output: str


DATASETS: dict[str, DatasetSettings] = {
    # 1 to 63 source words (test: 2 to 63); V=256 tokens: sources <= 80 (mean 42), targets <= 51 (mean 26).
    # Eight 8-word buckets of ~360-430 test pairs (of 3,000).
    "number_lists/long": DatasetSettings(
        max_length=80, bucket_lengths=(24, 40, 56, 80), decode_max_length=72,
        buckets=((1, 8), (9, 16), (17, 24), (25, 32), (33, 40), (41, 48), (49, 56), (57, None)),
        steps=600, workdir="runs/length_lists", output="docs/length_experiment_lists"),
    # 2 to 17 source words; sources <= 21 tokens, targets <= 15. Short numbers are rare (1-3
    # digits are 1,000 of 107,000 numbers), so the first bucket gathers them (>= 300 pairs each).
    "number_words/long": DatasetSettings(
        max_length=24, bucket_lengths=(12, 16, 24), decode_max_length=32,
        buckets=((1, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, None)),
        steps=600, workdir="runs/length", output="docs/length_experiment"),
    # The tests' small configs (1 to 17 words, <= ~24 tokens).
    "number_lists/short": DatasetSettings(
        max_length=32, bucket_lengths=(32,), decode_max_length=40, buckets=((1, 4), (5, 9), (10, None)),
        steps=2, workdir="runs/length_short", output="runs/length_short/report"),
    "number_words/tiny": DatasetSettings(
        max_length=24, bucket_lengths=(24,), decode_max_length=32, buckets=((1, 3), (4, 4), (5, None)),
        steps=2, workdir="runs/length_tiny", output="runs/length_tiny/report"),
}
DEFAULT_DATASET = "number_lists/long"  # long enough for the fixed context to run out of room


def dataset_settings(dataset: str) -> DatasetSettings:
    """`DATASETS[dataset]`; a one-line UserError for a dataset the experiment has no settings for."""
    if dataset not in DATASETS:
        raise UserError(f"dataset: got {dataset!r}, expected one of {list(DATASETS)} "
                        "(add its token lengths and buckets to DATASETS)")
    return DATASETS[dataset]


# The plain RNN is rnn_plain.py widened so that it has at least as many parameters as every
# attention RNN (Luong's 2-layer LSTM is the largest): it must not lose for being smaller.
PLAIN_HIDDEN_SIZE = 224  # per encoder direction (rnn_plain.py: 128)
PLAIN_DECODER_HIDDEN_SIZE = 448  # (rnn_plain.py: 256)


def parse_models(names: Sequence[str]) -> list[str]:
    """Checks model names (in order, no repeats); raises a one-line UserError otherwise."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"models: got none, expected some of {list(MODELS)}")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UserError(f"models: got unknown {unknown}, expected names from {list(MODELS)}")
    if len(set(names)) != len(names):
        raise UserError(f"models: got {names}, expected each name once")
    return names


def experiment_config(model: str, *, steps: int, dataset: str = DEFAULT_DATASET, data_dir: str = "",
                      progress_bar: bool = True) -> ml_collections.ConfigDict:
    """`model`'s family config with the experiment's data, budget and evaluation settings.

    Args:
      model: a key of `MODELS`.
      steps: the common training budget (optimizer steps).
      dataset: `config.data.dataset`, a key of `DATASETS`.
      data_dir: TFDS data dir ("" = TFDS default).
      progress_bar: tqdm bar while training.

    Returns:
      A run config for `train.loop.train_and_evaluate`.
    """
    parse_models([model])
    settings = dataset_settings(dataset)
    if steps < 1:
        raise UserError(f"steps: got {steps}, expected >= 1")
    config = MODELS[model]()
    data = config.data
    data.dataset = dataset
    data.data_dir = data_dir
    data.vocab_size = 256  # every family's default; one vocabulary for all models
    data.max_source_length = settings.max_length
    data.max_target_length = settings.max_length
    data.bucket_lengths = settings.bucket_lengths
    data.tokens_per_batch = 2048
    data.batch_size_multiple = jax.local_device_count()  # batches are split over the local devices
    data.eval_splits = ("validation", "test")
    data.eval_max_examples = 0  # decode every test pair at the end
    data.seed = 0  # same batches in the same order for every model
    config.seed = 0
    config.num_train_steps = steps
    config.eval_every_steps = max(1, steps // 2)  # in-loop validation BLEU on 200 pairs
    config.eval_decode_examples = 200
    config.checkpoint_every_steps = max(1, steps // 8)  # resume granularity
    config.decode.strategy = "greedy"
    config.decode.max_length = settings.decode_max_length
    config.num_heatmaps = 0
    config.progress_bar = progress_bar
    if model == "plain":
        config.model.hidden_size = PLAIN_HIDDEN_SIZE
        config.model.decoder_hidden_size = PLAIN_DECODER_HIDDEN_SIZE
    return config


def count_parameters(config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """Number of parameters of `config.model` with a vocabulary of `vocab_size` (no allocation)."""
    model = build.build_model(config, vocab_size)
    rng = jax.random.key(0)
    tokens = jnp.ones((1, 8), jnp.int32)                                      # [B, S]
    shapes = jax.eval_shape(lambda: model.init({"params": rng, "dropout": rng}, tokens, tokens))
    return count_params(shapes["params"])


def machine_description() -> str:
    """CPU model, cores, JAX backend and version (no host names, no paths)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devices = jax.devices()
    return (f"{cpu} ({platform.machine()}), {cores} CPU cores, JAX {jax.__version__} on "
            f"{len(devices)} {devices[0].platform.upper()} device(s)")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _read_record(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {"wall_time_s": 0.0, "done": False}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _train_model(model: str, config: ml_collections.ConfigDict, workdir: str, steps: int,
                 vocab_from: str | None) -> dict[str, Any] | None:
    """Trains (or resumes) one model; its record, or None if the run was interrupted.

    The record `<workdir>/experiment.json` accumulates wall time over resumed invocations and
    marks the model done, so that re-running the experiment does not retrain it.
    """
    record_path = os.path.join(workdir, "experiment.json")
    record = _read_record(record_path)
    if record["done"] and record["step"] == steps:
        _log.info("%s: already trained to step %d in %s", model, steps, workdir)
        return record
    vocab = os.path.join(workdir, "vocab")
    if vocab_from and not os.path.exists(vocab):
        shutil.copytree(vocab_from, vocab)  # same data config: reuse the vocabulary, not retrain it
    _log.info("%s: training %d steps in %s", model, steps, workdir)
    load = os.getloadavg()[0]
    summary = loop.train_and_evaluate(config, workdir)
    record["wall_time_s"] += summary["wall_time"]
    # When and where it ran, for the report (a later re-run that only re-plots keeps these).
    record.update(step=summary["step"], done=not summary["interrupted"], finished=_now(),
                  machine=machine_description(), load_average=[round(load, 2), round(os.getloadavg()[0], 2)])
    _write_json(record_path, record)
    if summary["interrupted"]:
        return None
    if summary["step"] != steps:
        raise UserError(f"steps: got {steps}, but {workdir!r} holds a run trained to step {summary['step']}; "
                        "use another --workdir")
    return record


def _model_result(model: str, config: ml_collections.ConfigDict, workdir: str, record: dict[str, Any],
                  buckets: Sequence[length_report.Bucket], split: str) -> dict[str, Any]:
    path = os.path.join(workdir, "samples", f"{split}_step{record['step']}.jsonl")
    rows = length_report.read_predictions(path)
    tokenizers = load_tokenizers(os.path.join(workdir, "vocab"), shared=config.data.shared_vocab)
    vocab_size = max(tokenizers.source.vocab_size, tokenizers.target.vocab_size)
    overall = evaluation.corpus_scores([r["hypothesis"] for r in rows], [r["reference"] for r in rows])
    return {
        "label": LABELS[model],
        "config_file": f"train/configs/{_CONFIG_FILES[model]}",
        "model_config": config.model.to_dict(),
        "parameters": count_parameters(config, vocab_size),
        "vocab_size": vocab_size,
        "wall_time_s": round(record["wall_time_s"], 1),
        "finished": record["finished"],
        "machine": record["machine"],
        "load_average_start_end": record["load_average"],
        "overall": {"count": len(rows), **overall},
        "buckets": length_report.bucket_scores(rows, buckets),
    }


def run_experiment(models: Sequence[str], workdir: str = "", *, steps: int = 0, output: str = "",
                   dataset: str = DEFAULT_DATASET, data_dir: str = "",
                   buckets: Sequence[length_report.Bucket] = (), split: str = "test",
                   progress_bar: bool = True, command: str = "",
                   configure: Callable[[str, ml_collections.ConfigDict], None] | None = None
                   ) -> dict[str, Any] | None:
    """Trains `models` with a common budget, then writes `<output>.png`, `.json` and `.md`.

    Args:
      models: names from `MODELS` (plot and table order).
      workdir: experiment directory; model `m` trains in `<workdir>/m` (resumed if present);
        "" = the dataset's default.
      steps: common number of training steps; 0 = the dataset's default.
      output: path prefix of the report files (directory created if needed); "" = the dataset's.
      dataset: `config.data.dataset`, a key of `DATASETS` (e.g. "number_words/tiny" in tests).
      data_dir: TFDS data dir ("" = TFDS default).
      buckets: (low, high) source-word buckets, contiguous from 1, last open-ended; () = the
        dataset's.
      split: eval split whose predictions are bucketed.
      progress_bar: tqdm bar while training.
      command: the command line recorded in the report ("" = called from Python).
      configure: `configure(model, config)` edits each config after the experiment's
        overrides (tests shrink the models with it).

    Returns:
      The report (what `<output>.json` holds), or None if training was interrupted
      (SIGTERM / SIGINT); re-running resumes.
    """
    models = parse_models(models)
    settings = dataset_settings(dataset)
    workdir, output = workdir or settings.workdir, output or settings.output
    steps, buckets = steps or settings.steps, tuple(buckets) or settings.buckets
    length_report.check_buckets(buckets)
    configs = {m: experiment_config(m, steps=steps, dataset=dataset, data_dir=data_dir, progress_bar=progress_bar)
               for m in models}
    if configure is not None:
        for m, config in configs.items():
            configure(m, config)
    for m, config in configs.items():
        if split not in config.data.eval_splits:
            raise UserError(f"split: got {split!r}, expected one of {tuple(config.data.eval_splits)}")
        build.validate_config(config)
        saved_config.check_workdir(config, os.path.join(workdir, m))
    started = time.time()
    results, vocab_from, data_from = {}, None, None
    for m in models:
        model_dir = os.path.join(workdir, m)
        same_data = data_from is not None and configs[m].data.to_dict() == data_from
        record = _train_model(m, configs[m], model_dir, steps, vocab_from if same_data else None)
        if record is None:
            return None
        vocab_from, data_from = os.path.join(model_dir, "vocab"), configs[m].data.to_dict()
        results[m] = _model_result(m, configs[m], model_dir, record, buckets, split)
        overall = results[m]["overall"]
        _log.info("%s: %s BLEU %.2f, exact %.1f%%, %d parameters, %.0f s", m, split, overall["bleu"],
                  100 * overall["exact_match"], results[m]["parameters"], record["wall_time_s"])
    report = {
        "command": command or "train.experiments.length.run_experiment (from Python)",
        "date": max(r["finished"] for r in results.values()),
        "machine": "; ".join(sorted({r["machine"] for r in results.values()})),
        "dataset": f"{dataset} ({configs[models[0]].data.source_lang}->{configs[models[0]].data.target_lang})",
        "split": split,
        "steps": steps,
        "total_wall_time_s": round(sum(r["wall_time_s"] for r in results.values()), 1),
        "invocation_wall_time_s": round(time.time() - started, 1),  # a re-plot only: ~seconds
        "buckets": [{"label": length_report.bucket_label(b), "low": b[0], "high": b[1]} for b in buckets],
        "models": results,
    }
    length_report.write_report(report, output)
    _log.info("Wrote %s.png, %s.json and %s.md", output, output, output)
    return report


def _define_flags() -> dict[str, Any]:
    """The program's flags, defined when it runs (importing this module defines none)."""
    return {
        "workdir": flags.DEFINE_string("workdir", "", "Experiment directory; each model trains in "
                                       "<workdir>/<model> (empty: the dataset's, e.g. runs/length_lists)."),
        "steps": flags.DEFINE_integer("steps", 0, "Common training budget (steps) of every model (0: the dataset's)."),
        "models": flags.DEFINE_list("models", list(MODELS), f"Models to train and plot, from {list(MODELS)}."),
        "output": flags.DEFINE_string("output", "", "Report path prefix: <output>.png/.json/.md (empty: the "
                                      "dataset's, e.g. docs/length_experiment_lists)."),
        "dataset": flags.DEFINE_string("dataset", DEFAULT_DATASET,
                                       f"config.data.dataset of every model, from {list(DATASETS)}."),
        "data_dir": flags.DEFINE_string("data_dir", "", "TFDS data dir (empty: the TFDS default)."),
        "progress_bar": flags.DEFINE_bool("progress_bar", True, "Show a tqdm progress bar while training."),
    }


def _run(flag: dict[str, Any]) -> int:
    command = " ".join(["python -m train.experiments.length", *sys.argv[1:]])
    settings = dataset_settings(flag["dataset"].value)
    workdir, output = flag["workdir"].value or settings.workdir, flag["output"].value or settings.output
    report = run_experiment(flag["models"].value, workdir, steps=flag["steps"].value, output=output,
                            dataset=flag["dataset"].value, data_dir=flag["data_dir"].value,
                            progress_bar=flag["progress_bar"].value, command=command)
    if report is None:
        print(f"Interrupted; checkpoints saved in {workdir}. Re-run the same command to resume.")
        return 0
    for result in report["models"].values():
        o = result["overall"]
        print(f"{result['label']}: BLEU {o['bleu']:.2f} | exact match {100 * o['exact_match']:.1f}% | "
              f"{result['parameters']:,} parameters | {result['wall_time_s']:.0f} s")
    print(f"Wrote {output}.png, .json and .md")
    return 0


if __name__ == "__main__":
    cli.run(functools.partial(_run, _define_flags()))
