"""`train_and_evaluate(config, workdir)`, `evaluate` and `translate`: the trainer's modes.

The loop is host code only: it feeds batches to the compiled step
(`train.steps`, compiled by `train.sharding`), writes metrics, evaluates,
saves checkpoints and reacts to SIGTERM / SIGINT. Everything about the config
and the workdir is checked before anything is written (`train.run_config`).
Re-running with the same workdir resumes from the latest checkpoint, and the
resumed run is bitwise the uninterrupted one: parameters, optimizer state, the
base RNG key (dropout is `fold_in(rng, step)`) and the data iterator position
are all restored.
"""

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jaxattn.models import count_params
from train import checkpoint, evaluation, metrics, run_config, sharding, steps, translation, workdir_lock
from train.data import EOS_ID, Tokenizers, load_tokenizers, make_datasets
from train.errors import UserError

__all__ = ["NonFiniteLossError", "Trained", "train_and_evaluate", "evaluate", "load_trained", "translate"]

_log = logging.getLogger(__name__)
CHECKPOINT_CHOICES = ("latest", "best", "average")


class NonFiniteLossError(RuntimeError):
    """The training loss or gradient became NaN or Inf."""


@dataclasses.dataclass
class _Run:
    """What a mode builds from (config, workdir)."""

    config: ml_collections.ConfigDict
    workdir: str
    tokenizers: Tokenizers
    built: run_config.Built  # the model (sized for the vocabulary), optimizer, schedule, parallel strategy
    init_fn: Any
    datasets: Any = None

    @property
    def family(self) -> str:
        return self.config.model.family

    @property
    def model(self):
        return self.built.model

    @property
    def parallel(self):
        return self.built.parallel

    @functools.cached_property
    def eval_fns(self):
        """(eval_step, decode) compiled once per run."""
        eval_fn = self.parallel.compile_eval_step(
            functools.partial(steps.eval_step, model=self.model, label_smoothing=self.config.label_smoothing))
        return eval_fn, evaluation.make_decode_fn(self.model, self.config.decode, self.parallel.decode_sharding)

    def capture_model(self):
        return self.model.clone(config=self.model.config.replace(capture_attention=True))


def _build(config, workdir, tokenizers, built: run_config.Built, datasets=None) -> _Run:
    built = built.with_vocab_size(max(tokenizers.source.vocab_size, tokenizers.target.vocab_size))
    shape = (1, 8)
    init_fn = functools.partial(steps.init_state, model=built.model, tx=built.optimizer, input_shape=shape,
                                target_shape=shape)
    return _Run(config, workdir, tokenizers, built, init_fn, datasets)


def _checkpoint_config(config, tokenizers) -> dict[str, Any]:
    return {"config": config.to_dict(), "vocab": tokenizers.fingerprint()}


def _check_checkpoint(ckpt, step, config, tokenizers) -> None:
    stored = ckpt.restore_config(step)
    if not {"config", "vocab"} <= set(stored):
        raise checkpoint.DamagedCheckpointError(step, f"{step}/config", "no 'config' and 'vocab' entries")
    tokenizers.check(stored["vocab"])
    differences = run_config.diff(
        run_config.identity(ml_collections.ConfigDict(stored["config"])), run_config.identity(config)
    )
    if differences:
        raise UserError(f"checkpoint {step} holds a different model ({'; '.join(differences[:3])})")


def _restore(run: _Run, ckpt, step: int, data_iterator=None):
    if data_iterator is not None:  # resuming: the newest intact checkpoint; damaged newer ones set aside
        step = ckpt.select("latest", checkpoint.RESUME_ITEMS)
    _check_checkpoint(ckpt, step, run.config, run.tokenizers)
    rng = sharding.global_rng(run.config.seed)
    abstract = run.parallel.abstract_state(run.init_fn, rng)
    abstract_rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=run.parallel.rng_sharding)
    state, train_rng = ckpt.restore(step, abstract, abstract_rng, data_iterator)
    _log.info("Restored checkpoint %d from %s", step, ckpt.directory)
    return run.parallel.place_state(state), train_rng


def _averaged(run: _Run, ckpt, step: int):
    """The state of checkpoint `step` with the mean parameters of the last k checkpoints up to it.

    k = `config.average_last_checkpoints` (Vaswani et al. 2017 sec. 6.1 average the last 5 checkpoints);
    the mean is taken in float32 and kept as a running sum, so two states are in memory at a time.
    """
    k = run.config.average_last_checkpoints
    chosen = [s for s in ckpt.steps() if s <= step][-k:]
    total, state = None, None
    for s in chosen:
        state, _ = _restore(run, ckpt, s)
        params = jax.tree.map(lambda x: x.astype(np.float32), state.params)
        total = params if total is None else jax.tree.map(lambda a, b: a + b, total, params)
    mean = jax.tree.map(lambda t, x: (t / len(chosen)).astype(x.dtype), total, state.params)
    _log.info("Averaged the parameters of checkpoints %s", chosen)
    return state.replace(params=mean)


def _restore_named(run: _Run, ckpt, which: str) -> tuple[Any, int]:
    """(state, step) of `--checkpoint=which`: "latest", "best", or "average" (of the last k up to latest)."""
    step = _select_step(ckpt, "latest" if which == "average" else which)
    if which == "average":
        if run.config.average_last_checkpoints < 2:
            raise UserError(f"--checkpoint=average: config.average_last_checkpoints is "
                            f"{run.config.average_last_checkpoints}, expected k >= 2 checkpoints to average "
                            "(e.g. --config.average_last_checkpoints=5)")
        return _averaged(run, ckpt, step), step
    return _restore(run, ckpt, step)[0], step


def _evaluate_split(run: _Run, state, split: str, *, eval_fn, decode_fn, max_examples: int,
                    step: int, tag: str, guard=None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    eval_set = run.datasets.eval[split]
    if guard is not None:  # a stop signal ends the evaluation at the next batch (`_EvalAborted`)
        eval_set = dataclasses.replace(eval_set, batches=_Abortable(eval_set.batches, guard))
    # The eval step runs data-parallel (pmap: params with a device axis); decoding
    # runs on one copy of the parameters.
    sums = evaluation.eval_loss(eval_fn, state.params, eval_set.batches, run.parallel)
    scalars = steps.summarize(sums, split)
    rows = evaluation.decode_eval_set(decode_fn, run.parallel.params(state), eval_set, run.tokenizers,
                                      max_examples)
    scores = evaluation.corpus_scores([r["hypothesis"] for r in rows], [r["reference"] for r in rows])
    scalars.update({f"{split}/{k}": v for k, v in scores.items()})
    if jax.process_index() == 0:
        os.makedirs(os.path.join(run.workdir, "samples"), exist_ok=True)
        path = os.path.join(run.workdir, "samples", f"{split}_{tag}.txt")
        for line in evaluation.write_samples(path, rows, run.config.num_samples):
            _log.info("  %s", line)
        if tag == "final":
            evaluation.write_predictions(os.path.join(run.workdir, "samples", f"{split}_step{step}.jsonl"), rows)
    _log.info("Eval %s at step %d: loss %.4f, ppl %.2f, acc %.3f, BLEU %.2f, chrF %.2f, exact %.1f%%",
              split, step, scalars[f"{split}/nll"], scalars[f"{split}/perplexity"],
              scalars[f"{split}/accuracy"], scores["bleu"], scores["chrf"], 100 * scores["exact_match"])
    return scalars, rows


def _final_evaluation(run: _Run, state, step: int, writer, guard=None) -> dict[str, Any]:
    eval_fn, decode_fn = run.eval_fns
    summary = {"eval_splits": list(run.datasets.eval)}
    _log.info("Final evaluation of step %d on %s", step, summary["eval_splits"])
    rows = []
    for split in run.datasets.eval:
        scalars, rows = _evaluate_split(run, state, split, eval_fn=eval_fn, decode_fn=decode_fn,
                                        max_examples=0, step=step, tag="final", guard=guard)
        writer.write_scalars(step, scalars)
        summary.update(scalars)
    if run.config.num_heatmaps > 0 and rows and jax.process_index() == 0:
        paths = evaluation.write_heatmaps(os.path.join(run.workdir, "heatmaps"),
                                          run.capture_model(), run.parallel.params(state), rows, run.tokenizers,
                                          run.config.num_heatmaps)
        if paths:
            _log.info("Wrote %d attention heatmaps to %s", len(paths), os.path.dirname(paths[0]))
    return summary


def _prepare(config, workdir, built: run_config.Built) -> _Run:
    """The run's data (prepared or read from the workdir) and its model sized for the vocabulary.

    `built` is `run_config.build(config)`; the caller has also checked the workdir.
    """
    datasets = make_datasets(config.data, workdir)
    _log.info("Data ready: %d training pairs, eval splits %s, vocabulary %d/%d (in %s)",
              datasets.num_train_examples, list(datasets.eval), datasets.tokenizers.source.vocab_size,
              datasets.tokenizers.target.vocab_size, os.path.join(workdir, "vocab"))
    return _build(config, workdir, datasets.tokenizers, built, datasets)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints), then evaluates.

    Args:
      config: a run config (see train/configs/).
      workdir: run directory: vocabulary, checkpoints, metrics, samples, heatmaps.

    Returns:
      Final metrics (`<split>/bleu`, `/chrf`, `/exact_match`, `/loss`, ...), plus
      `step`, `wall_time` and `interrupted` (True after SIGTERM / SIGINT).
    """
    start_time = time.time()
    built = run_config.build(config)  # every check of the config, before anything is written
    run_config.check_workdir(config, workdir)
    with workdir_lock.held(workdir):  # a second trainer on the same workdir is refused
        run = _prepare(config, workdir, built)
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), config.keep_checkpoints)
        writer = metrics.MetricWriter(workdir)
        try:
            return _train(run, ckpt, writer, start_time)
        finally:
            ckpt.close()
            writer.close()


class _TrainHistory:
    """Step metrics on their way from the device to the writers.

    `sync` fetches what the steps returned since the last call and stops the
    run on a non-finite loss (before any checkpoint of that state is saved);
    `write` logs the means since the last write.
    """

    def __init__(self, parallel, writer, bar):
        self._parallel, self._writer, self._bar = parallel, writer, bar
        self._device, self._host = [], []
        self._tick = time.time()

    def append(self, step_metrics) -> None:
        self._device.append(step_metrics)

    def sync(self, step: int, last_good: str) -> None:
        fetched = self._parallel.fetch(self._device)
        for i, m in enumerate(fetched):
            if not m["finite"]:
                raise NonFiniteLossError(
                    f"loss is NaN or Inf at step {step - len(fetched) + i + 1}; training stopped, {last_good} "
                    "(lower config.learning_rate or set config.grad_clip_norm?)")
        self._host.extend(fetched)
        self._device = []

    def write(self, step: int) -> None:
        if not self._host:
            return
        sums = jax.tree.map(lambda *xs: np.sum(xs), *self._host)
        last = self._host[-1]
        elapsed = max(time.time() - self._tick, 1e-9)
        self._tick, self._host = time.time(), []
        scalars = steps.summarize(sums, "train")
        scalars.update({"train/tokens_per_sec": float(sums["tokens"]) / elapsed,
                        "train/grad_norm": float(last["grad_norm"]),
                        "train/learning_rate": float(last["learning_rate"])})
        # What the model reports of itself (e.g. the RNN's scheduled-sampling probability).
        scalars.update({f"train/{name}": float(value) for name, value in last["reported"].items()})
        self._writer.write_scalars(step, scalars)
        self._bar.set_postfix(loss=f"{scalars['train/nll']:.3f}", tok_s=f"{scalars['train/tokens_per_sec']:.0f}")


class _EvalAborted(Exception):
    """A stop signal arrived during an evaluation: its results are dropped."""


class _Abortable:
    """Eval batches that stop being produced once `guard` has seen a signal."""

    def __init__(self, batches, guard):
        self._batches, self._guard = batches, guard

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self):
        for batch in self._batches:
            if self._guard.should_stop():
                raise _EvalAborted
            yield batch


class _Budget:
    """When training ends: steps, wall-clock minutes or epochs, whichever binds first.

    The epoch budget is the data stream's (`data.num_epochs`: its iterator ends).
    `estimate_total` is the step at which the binding budget is expected to end,
    for the progress bar and its ETA.
    """

    def __init__(self, config, start_step: int, num_train_examples: int):
        self.max_steps = config.num_train_steps
        self.max_seconds = 60.0 * config.max_train_minutes if config.max_train_minutes > 0 else None
        self.epochs = config.data.num_epochs
        self._examples = num_train_examples
        self._start_step = start_step
        self._start = time.time()
        self._rows = 0  # real (non-padding) training pairs seen since the start
        self.reason = ""

    def add_rows(self, rows: int) -> None:
        self._rows += rows

    def time_up(self, log_step: bool) -> bool:
        """Checked after every step; with several hosts only at log steps, where process 0's clock
        decides for all (every host must stop at the same step)."""
        if self.max_seconds is None:
            return False
        up = time.time() - self._start >= self.max_seconds
        if jax.process_count() > 1:
            up = log_step and bool(multihost_utils.broadcast_one_to_all(np.asarray(up)))
        return up

    def estimate_total(self, step: int) -> int:
        total = self.max_steps
        done = step - self._start_step
        if done > 0 and self.max_seconds is not None:
            per_step = (time.time() - self._start) / done
            total = min(total, step + max(0, int((self.max_seconds - (time.time() - self._start)) / per_step)))
        if done > 0 and self.epochs > 0 and self._rows > 0:
            # Resumed runs count from the restore; an estimate, the iterator's end is exact.
            total = min(total, self._start_step + int(self.epochs * self._examples * done / self._rows))
        return max(total, step)


def _first_compile(train_step, state, batch, rng, shapes_seen: set) -> tuple[Any, Any, float | None]:
    """Runs one step; the first time a batch shape is seen, waits for it and returns its time."""
    shape = tuple(batch["targets"].shape)
    if shape in shapes_seen:
        return (*train_step(state, batch, rng), None)
    shapes_seen.add(shape)
    start = time.time()
    state, step_metrics = train_step(state, batch, rng)
    jax.block_until_ready(step_metrics)
    return state, step_metrics, time.time() - start


def _train(run: _Run, ckpt, writer, start_time: float) -> dict[str, Any]:
    config, parallel = run.config, run.parallel
    train_iter = iter(run.datasets.train)
    latest = ckpt.latest_step()
    tick = time.time()
    if latest is not None:
        state, rng = _restore(run, ckpt, latest, train_iter)
    else:
        init_rng, rng = jax.random.split(sharding.global_rng(config.seed))
        state = parallel.create_state(run.init_fn, init_rng)
        # From host data: a device array put on a multi-process sharding has broken shards.
        rng = jax.device_put(np.asarray(rng), parallel.rng_sharding)
    jax.block_until_ready(state)
    init_seconds = time.time() - tick
    run_config.save_config(config, run.workdir)
    shapes = jax.eval_shape(run.init_fn, sharding.global_rng(config.seed))  # no device-to-host copy
    step = int(parallel.fetch(state.step))
    _log.info("%s at step %d: %s model, %d parameters, %s over %d device(s), workdir %s",
              "Resuming" if latest is not None else "Starting", step, run.family,
              count_params(shapes.params),
              parallel.name, jax.device_count(), run.workdir)

    train_step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=run.model, label_smoothing=config.label_smoothing,
        learning_rate_fn=run.built.schedule, grad_accum_steps=config.grad_accum_steps))
    eval_fn, decode_fn = run.eval_fns
    placed_rng = parallel.put_rng(rng)
    val_split = next(iter(run.datasets.eval))  # the first eval split is validation
    last_good, interrupted = (step if latest is not None else None), False  # the restored step (after any fallback)
    budget = _Budget(config, step, run.datasets.num_train_examples)
    show = config.progress_bar and jax.process_index() == 0
    bar = tqdm.tqdm(total=budget.estimate_total(step), initial=step, disable=not show, unit="step",
                    dynamic_ncols=True)
    history = _TrainHistory(parallel, writer, bar)
    shapes_seen: set = set()
    first_step_logged = False

    def sync():
        history.sync(step, f"the last good checkpoint is step {last_good} in {ckpt.manager.directory}")

    def save(eval_metrics=None):
        nonlocal last_good
        sync()
        ckpt.save(step, parallel.host_state(state), rng, train_iter, _checkpoint_config(config, run.tokenizers),
                  eval_metrics)
        last_good = step
        _log.info("Saving checkpoint %d (async) to %s", step, ckpt.manager.directory)

    with checkpoint.PreemptionGuard() as guard:
        pending = None  # the metrics of the step in flight: at most two steps are queued
        while step < config.num_train_steps:
            try:
                batch = next(train_iter)
            except StopIteration:
                budget.reason = f"data.num_epochs={config.data.num_epochs} epochs done"
                break
            state, step_metrics, compile_seconds = _first_compile(
                train_step, state, parallel.put_batch(batch), placed_rng, shapes_seen)
            if compile_seconds is not None:
                _log.info("Compiled the train step for batch %s in %.1fs", list(batch["targets"].shape),
                          compile_seconds)
            if not first_step_logged:
                first_step_logged = True
                timings = run.datasets.timings
                _log.info("Start-up: %.1fs to the first step (data %.1fs, vocabulary %.1fs, init/restore %.1fs, "
                          "first step incl. compile %.1fs)", time.time() - start_time, timings.get("data", 0.0),
                          timings.get("vocabulary", 0.0), init_seconds, compile_seconds or 0.0)
            if pending is not None:
                jax.block_until_ready(pending)  # the previous step is done: bound the queue, honest bar
                bar.update(1)
            pending = step_metrics
            budget.add_rows(int(np.count_nonzero(batch["targets"] == EOS_ID)))  # pairs, packed or not
            step += 1
            history.append(step_metrics)
            bar.total = budget.estimate_total(step)  # every step: the ETA follows the binding budget at once
            if step % config.log_every_steps == 0:
                sync()
                history.write(step)
                bar.refresh()
            if budget.time_up(step % config.log_every_steps == 0):
                budget.reason = f"max_train_minutes={config.max_train_minutes:g} reached"
            if step % config.eval_every_steps == 0 and step < config.num_train_steps and not budget.reason:
                sync()
                try:
                    scalars, _ = _evaluate_split(run, state, val_split, eval_fn=eval_fn, decode_fn=decode_fn,
                                                 max_examples=config.eval_decode_examples, step=step,
                                                 tag=f"step{step}", guard=guard)
                except _EvalAborted:
                    _log.info("Evaluation at step %d aborted by %s", step, guard.signal_name)
                else:
                    writer.write_scalars(step, scalars)
                    save({"bleu": scalars[f"{val_split}/bleu"]})
            elif step % config.checkpoint_every_steps == 0 and step < config.num_train_steps:
                save()  # the last step is saved after the final evaluation, with its BLEU
            if guard.should_stop(step):
                _log.info("Received %s: saving step %d and exiting", guard.signal_name or "stop signal", step)
                if last_good != step:
                    save()
                interrupted = True
                break
            if budget.reason:
                break
        if pending is not None:
            jax.block_until_ready(pending)
            bar.update(1)
        sync()
        history.write(step)
        bar.total = step
        bar.close()
        if budget.reason:
            _log.info("Training stopped at step %d: %s", step, budget.reason)
        if not interrupted:
            try:
                final_state = state
                if config.average_last_checkpoints > 1:  # the final state joins the average
                    if last_good != step:
                        save()
                    ckpt.wait()
                    final_state = _averaged(run, ckpt, step)
                summary = _final_evaluation(run, final_state, step, writer, guard)
            except _EvalAborted:
                _log.info("Final evaluation aborted by %s; saving step %d without it", guard.signal_name, step)
                interrupted = True
        if interrupted:
            if last_good != step:
                save()
            ckpt.wait()
            return {"step": step, "wall_time": time.time() - start_time, "interrupted": True}
        if last_good != step:
            save({"bleu": summary[f"{val_split}/bleu"]})
        ckpt.wait()
    summary.update(step=step, wall_time=time.time() - start_time, interrupted=False, workdir=run.workdir)
    return summary


def _select_step(ckpt, which: str) -> int:
    if which not in CHECKPOINT_CHOICES:
        raise UserError(f"checkpoint: got {which!r}, expected one of {CHECKPOINT_CHOICES}")
    step = ckpt.select(which)  # checked file by file; a damaged one falls back to the next, saying so
    if step is None:
        raise UserError(f"workdir: no checkpoint in {ckpt.directory}; train first")
    return step


def _open_checkpoints(workdir: str):
    directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise UserError(f"workdir: no checkpoints in {workdir!r}; train first")
    return checkpoint.Checkpointer(directory, keep=1, read_only=True)


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint_name: str = "latest") -> dict[str, Any]:
    """Evaluates a trained checkpoint on every eval split of its data (writes samples)."""
    start_time = time.time()
    ckpt = _open_checkpoints(workdir)
    try:
        _select_step(ckpt, "latest" if checkpoint_name == "average" else checkpoint_name)  # before data prep
        built = run_config.build(config)
        run_config.check_workdir(config, workdir)
        run = _prepare(config, workdir, built)
        state, step = _restore_named(run, ckpt, checkpoint_name)
        writer = metrics.MetricWriter(workdir)
        try:
            summary = _final_evaluation(run, state, step, writer)
        finally:
            writer.close()
    finally:
        ckpt.close()
    summary.update(step=step, workdir=workdir, wall_time=time.time() - start_time)
    return summary


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained model restored from a workdir, ready for `model.apply` and decoding."""

    config: ml_collections.ConfigDict
    model: Any
    params: Any
    tokenizers: Tokenizers
    step: int


def load_trained(config: ml_collections.ConfigDict, workdir: str, checkpoint_name: str = "latest") -> Trained:
    """Restores the latest, best or averaged (`CHECKPOINT_CHOICES`) checkpoint in `workdir` on one device.

    Notebooks use it after `train_and_evaluate` to look inside the model:
    `trained.model.apply({"params": trained.params}, inputs, targets)`.
    """
    built = run_config.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]))
    run_config.check_workdir(config, workdir)
    ckpt = _open_checkpoints(workdir)
    try:
        _select_step(ckpt, "latest" if checkpoint_name == "average" else checkpoint_name)  # before the vocabulary
        tokenizers = load_tokenizers(os.path.join(workdir, "vocab"), shared=config.data.shared_vocab)
        run = _build(config, workdir, tokenizers, built)
        state, step = _restore_named(run, ckpt, checkpoint_name)
    finally:
        ckpt.close()
    return Trained(config, run.model, state.params, tokenizers, step)


def translate(config: ml_collections.ConfigDict, workdir: str, sentences: Sequence[str],
              checkpoint_name: str = "latest") -> list[str]:
    """Translates `sentences` with the latest (or best) checkpoint in `workdir` ("" for a blank one).

    Batched and sorted by length (`train.translation.Translator`, which also gives n-best lists
    and scores), decoded as `--mode=eval` decodes.
    """
    return translation.Translator(load_trained(config, workdir, checkpoint_name)).translate(sentences)
