"""`train_and_evaluate(config, workdir)`: the training loop.

Host code only: it feeds batches to the compiled step (`train.steps`, compiled
by `train.sharding`), writes metrics, evaluates, saves checkpoints and reacts
to SIGTERM / SIGINT (`train.stopping`). Everything about the config and the
workdir is checked before anything is written (`train.build`,
`train.saved_config`). Re-running with the same workdir resumes from the latest
checkpoint, and the resumed run is bitwise the uninterrupted one: parameters,
optimizer state, the base RNG key (dropout is `fold_in(rng, step)`) and the
data iterator position are all restored.

The loop runs until a reason to end appears -- a budget (`train.budget`), the
end of the data's epochs, early stopping (`train.early_stopping`) or a stop
signal -- then evaluates (unless stopped by a signal; after early stopping, the
best checkpoint), saves and returns, on one path.
"""

import contextlib
import functools
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from jaxattn.models import count_params
from train import (build, checkpoint, early_stopping, eval_run, finetune, metrics, run, saved_config, sharding, steps,
                   stopping, workdir_lock)
from train.budget import Budget
from train.data import EOS_ID

__all__ = ["train_and_evaluate"]

_log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints), then evaluates.

    Args:
      config: a run config (see train/configs/).
      workdir: run directory: vocabulary, checkpoints, metrics, samples, heatmaps.

    Returns:
      Final metrics (`<split>/bleu`, `/chrf`, `/exact_match`, `/loss`, ...; none after a stop
      signal), plus `step`, `wall_time`, `workdir`, `stopped` (why training ended),
      `interrupted` (True after SIGTERM / SIGINT) and, after early stopping, `best_step` (the
      checkpoint the final metrics are of).
    """
    start_time = time.time()
    built = build.build(config)  # every check of the config, before anything is written
    finetune.check(config)
    saved_config.check_workdir(config, workdir)
    with workdir_lock.held(workdir):  # a second trainer on the same workdir is refused
        if config.init_from:
            finetune.copy_vocabulary(config, workdir)
        the_run = run.prepare(config, workdir, built)
        ckpt = run.checkpointer(config, workdir)
        writer = metrics.MetricWriter(workdir)
        with contextlib.closing(iter(the_run.datasets.train)) as train_iter:  # closing stops its prefetch thread
            try:
                return _train(the_run, ckpt, writer, train_iter, start_time)
            finally:
                ckpt.close()  # waits for the last save (the iterator's state included)
                writer.close()


class _Saves:
    """The run's checkpoint saves, and the step of the last one (where a failed run can resume)."""

    def __init__(self, the_run: run.Run, ckpt: checkpoint.Checkpointer, rng, train_iter, history, last: int | None):
        self._run, self._ckpt, self._rng, self._iter, self._history = the_run, ckpt, rng, train_iter, history
        self.last = last

    def sync(self, step: int) -> None:
        """Fetches the step metrics in flight (a non-finite loss stops the run here)."""
        self._history.sync(step, f"the last good checkpoint is step {self.last} in {self._ckpt.directory}")

    def save(self, step: int, state, eval_metrics: dict[str, float] | None = None) -> None:
        """Saves `step` unless it is the last saved one (async: returns once arrays are on the host)."""
        if self.last == step:
            return
        self.sync(step)
        self._ckpt.save(step, self._run.parallel.host_state(state), self._rng, self._iter,
                        run.checkpoint_config(self._run), eval_metrics)
        self.last = step
        _log.info("Saving checkpoint %d (async) to %s", step, self._ckpt.directory)


def _start(the_run: run.Run, ckpt: checkpoint.Checkpointer, train_iter):
    """(state, rng, resumed): restored from the newest intact checkpoint, else freshly initialized."""
    if ckpt.latest_step() is not None:
        state, rng = run.restore(the_run, ckpt, ckpt.latest_step(), train_iter)
        return state, rng, True
    init_rng, rng = jax.random.split(sharding.global_rng(the_run.config.seed))
    state = the_run.parallel.create_state(the_run.init_fn, init_rng)
    if the_run.config.init_from:  # fine-tuning: the parent's parameters, a fresh optimizer state
        state = state.replace(params=finetune.initial_params(the_run))
    # From host data: a device array put on a multi-process sharding has broken shards.
    return state, jax.device_put(np.asarray(rng), the_run.parallel.rng_sharding), False


def _timed_step(train_step, state, batch, rng, shapes_seen: set) -> tuple[Any, Any, float | None]:
    """Runs one step; the first time a batch shape is seen, waits for it and returns its time (compile incl.)."""
    shape = tuple(batch["targets"].shape)
    if shape in shapes_seen:
        return (*train_step(state, batch, rng), None)
    shapes_seen.add(shape)
    start = time.time()
    state, step_metrics = train_step(state, batch, rng)
    jax.block_until_ready(step_metrics)
    return state, step_metrics, time.time() - start


def _train(the_run: run.Run, ckpt: checkpoint.Checkpointer, writer: metrics.MetricWriter, train_iter,
           start_time: float) -> dict[str, Any]:
    config, parallel = the_run.config, the_run.parallel
    tick = time.time()
    state, rng, resumed = _start(the_run, ckpt, train_iter)
    jax.block_until_ready(state)
    init_seconds = time.time() - tick
    saved_config.save_config(config, the_run.workdir)
    step = int(parallel.fetch(state.step))
    shapes = jax.eval_shape(the_run.init_fn, sharding.global_rng(config.seed))  # no device-to-host copy
    _log.info("%s at step %d: %s model, %d parameters, %s over %d device(s), workdir %s",
              "Resuming" if resumed else "Starting", step, config.model.family, count_params(shapes.params),
              parallel.name, jax.device_count(), the_run.workdir)

    train_step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=the_run.model, label_smoothing=config.label_smoothing,
        learning_rate_fn=the_run.built.schedule, grad_accum_steps=config.grad_accum_steps))
    placed_rng = parallel.put_rng(rng)
    val_split = next(iter(the_run.datasets.eval))  # the first eval split is validation
    budget = Budget(config, step, the_run.datasets.num_train_examples)
    stopper = early_stopping.EarlyStopping(config, val_split)
    if resumed:
        stopper.replay(the_run.workdir, step)
    bar = tqdm.tqdm(total=budget.estimate_total(step), initial=step, unit="step", dynamic_ncols=True,
                    disable=not (config.progress_bar and jax.process_index() == 0))
    history = metrics.TrainHistory(parallel, writer, bar)
    saves = _Saves(the_run, ckpt, rng, train_iter, history, last=step if resumed else None)
    shapes_seen: set = set()
    pending = None  # the metrics of the step in flight: at most two steps are queued
    reason = budget.end_reason(step, log_step=False)  # why training ends ("" while it goes on)
    interrupted = False  # True when a stop signal ended it

    with stopping.PreemptionGuard() as guard:
        while not reason:
            batch = next(train_iter, None)
            if batch is None:
                reason = f"data.num_epochs={config.data.num_epochs} epochs done"
                continue
            state, step_metrics, compile_seconds = _timed_step(train_step, state, parallel.put_batch(batch),
                                                               placed_rng, shapes_seen)
            if compile_seconds is not None:
                _log.info("Compiled the train step for batch %s in %.1fs", list(batch["targets"].shape),
                          compile_seconds)
                if not shapes_seen - {tuple(batch["targets"].shape)}:  # the run's first step
                    timings = the_run.datasets.timings
                    _log.info("Start-up: %.1fs to the first step (data %.1fs, vocabulary %.1fs, init/restore "
                              "%.1fs, first step incl. compile %.1fs)", time.time() - start_time,
                              timings.get("data", 0.0), timings.get("vocabulary", 0.0), init_seconds,
                              compile_seconds)
            if pending is not None:
                jax.block_until_ready(pending)  # the previous step is done: bound the queue, honest bar
                bar.update(1)
            pending = step_metrics
            budget.add_rows(int(np.count_nonzero(batch["targets"] == EOS_ID)))  # pairs, packed or not
            step += 1
            history.append(step_metrics)
            bar.total = budget.estimate_total(step)  # every step: the ETA follows the binding budget at once
            log_step = step % config.log_every_steps == 0
            if log_step:
                saves.sync(step)
                history.write(step)
                bar.refresh()
            reason = budget.end_reason(step, log_step)
            if guard.should_stop(step):  # asked at every step: hosts agree on the step to stop at
                _log.info("Received %s: saving step %d and exiting", guard.signal_name or "stop signal", step)
                reason, interrupted = f"received {guard.signal_name or 'a stop signal'}", True
            elif not reason and step % config.eval_every_steps == 0:
                saves.sync(step)
                try:
                    scalars, _ = eval_run.evaluate_split(the_run, state, val_split,
                                                         max_examples=config.eval_decode_examples, step=step,
                                                         tag=f"step{step}", guard=guard)
                    writer.write_scalars(step, scalars)
                    saves.save(step, state, _checkpoint_metrics(scalars, val_split))
                    reason = stopper.update(step, scalars)
                except eval_run.EvalAborted:
                    _log.info("Evaluation at step %d aborted by %s", step, guard.signal_name)
                    reason, interrupted = f"received {guard.signal_name}", True
            elif not reason and step % config.checkpoint_every_steps == 0:
                saves.save(step, state)  # the last step is saved after the final evaluation, with its BLEU
        if pending is not None:
            jax.block_until_ready(pending)
            bar.update(1)
        saves.sync(step)
        history.write(step)
        bar.total = step
        bar.close()
        _log.info("Training stopped at step %d: %s", step, reason)

        summary, best_step = {}, None
        if not interrupted:
            try:
                final_state = state
                if config.average_last_checkpoints > 1:  # the final state joins the average
                    saves.save(step, state)
                    ckpt.wait()
                    final_state = run.averaged(the_run, ckpt, step)
                elif reason.startswith("early stopping"):  # the step that stopped it is saved already
                    ckpt.wait()
                    best_step = ckpt.best_step()  # by the same metric (min_delta only decides when to stop)
                    final_state, _ = run.restore(the_run, ckpt, best_step)
                    _log.info("The final evaluation reads the best checkpoint, step %d", best_step)
                summary = eval_run.final_evaluation(the_run, final_state, step, writer, guard)
            except eval_run.EvalAborted:
                _log.info("Final evaluation aborted by %s; saving step %d without it", guard.signal_name, step)
                interrupted = True
        saves.save(step, state, _checkpoint_metrics(summary, val_split) if summary else None)
        ckpt.wait()
    summary.update(step=step, wall_time=time.time() - start_time, interrupted=interrupted, stopped=reason,
                   workdir=the_run.workdir)
    if best_step is not None:
        summary["best_step"] = best_step
    return summary


def _checkpoint_metrics(scalars: dict[str, float], split: str) -> dict[str, float]:
    """The validation metrics saved with a checkpoint (the best one is picked by one of them)."""
    return {name: scalars[f"{split}/{name}"] for name in early_stopping.METRICS}
