"""What every mode builds from (config, workdir): the `Run`, and reading its checkpoints back into it.

`prepare` makes a run's data (prepared once, then read from the workdir) and
sizes the built model for the trained vocabulary; `for_vocabulary` does the
same from a vocabulary alone (translation needs no data). `restore` reads one
checkpoint into the run's sharded state after checking that it holds this
model and vocabulary; `restore_named` reads the one `--checkpoint` names:
the latest, the best by validation BLEU (or the early-stopping metric), or the average of
the last k.
"""

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from train import build, checkpoint, early_stopping, evaluation, optim, saved_config, sharding, steps
from train import data
from train.data import Tokenizers, load_tokenizers
from train.errors import UserError

__all__ = ["CHECKPOINT_CHOICES", "Run", "prepare", "for_vocabulary", "checkpoint_config", "restore",
           "restore_named", "restore_params", "select_step", "checkpointer", "open_checkpoints"]

_log = logging.getLogger(__name__)
CHECKPOINT_CHOICES = ("latest", "best", "average")


@dataclasses.dataclass
class Run:
    """A run's config, workdir, vocabulary, built parts (model sized for the vocabulary) and data."""

    config: ml_collections.ConfigDict
    workdir: str
    tokenizers: Tokenizers
    built: build.Built
    datasets: Any = None  # `train.data.Datasets`; None where only the model is needed

    @property
    def model(self):
        return self.built.model

    @property
    def parallel(self):
        return self.built.parallel

    @functools.cached_property
    def init_fn(self):
        """rng -> TrainState of this model and optimizer (shapes from a [1, 8] batch)."""
        return functools.partial(steps.init_state, model=self.model, tx=self.built.optimizer, input_shape=(1, 8),
                                 target_shape=(1, 8))

    @functools.cached_property
    def eval_fns(self):
        """(eval_step, decode) compiled once per run."""
        eval_fn = self.parallel.compile_eval_step(
            functools.partial(steps.eval_step, model=self.model, label_smoothing=self.config.label_smoothing))
        return eval_fn, evaluation.make_decode_fn(self.model, self.config.decode, self.parallel.decode_sharding)

    def capture_model(self):
        """The model with attention capture on (for heatmaps)."""
        return self.model.clone(config=self.model.config.replace(capture_attention=True))


def for_vocabulary(config, workdir: str, tokenizers: Tokenizers, built: build.Built, datasets=None) -> Run:
    """The run of `config` with its model sized for `tokenizers`."""
    built = built.with_vocab_size(max(tokenizers.source.vocab_size, tokenizers.target.vocab_size))
    return Run(config, workdir, tokenizers, built, datasets)


def prepare(config, workdir: str, built: build.Built) -> Run:
    """The run's data (prepared or read from the workdir) and its model sized for the vocabulary.

    `built` is `build.build(config)`; the caller has also checked the workdir.
    """
    # A fine-tuning run's vocabulary is its parent's (`train.finetune` copied it), not one of this data.
    tokenizers = (load_tokenizers(os.path.join(workdir, "vocab"), shared=config.data.shared_vocab)
                  if config.init_from else None)
    datasets = data.make_datasets(config.data, workdir, tokenizers=tokenizers, vocab_from=config.init_from)
    _log.info("Data ready: %d training pairs, eval splits %s, vocabulary %d/%d (in %s)",
              datasets.num_train_examples, list(datasets.eval), datasets.tokenizers.source.vocab_size,
              datasets.tokenizers.target.vocab_size, os.path.join(workdir, "vocab"))
    return for_vocabulary(config, workdir, datasets.tokenizers, built, datasets)


def checkpoint_config(run: Run) -> dict[str, Any]:
    """The `config` item saved with each checkpoint: the run config and the vocabulary's fingerprint."""
    return {"config": run.config.to_dict(), "vocab": run.tokenizers.fingerprint()}


def _check_checkpoint(ckpt: checkpoint.Checkpointer, step: int, run: Run) -> None:
    stored = ckpt.restore_config(step)
    if not {"config", "vocab"} <= set(stored):
        raise checkpoint.DamagedCheckpointError(step, f"{step}/config", "no 'config' and 'vocab' entries")
    run.tokenizers.check(stored["vocab"])
    differences = saved_config.diff(saved_config.identity(ml_collections.ConfigDict(stored["config"])),
                               saved_config.identity(run.config))
    if differences:
        raise UserError(f"checkpoint {step} holds a different model ({'; '.join(differences[:3])})")


def restore(run: Run, ckpt: checkpoint.Checkpointer, step: int, data_iterator=None):
    """(state, base rng) of checkpoint `step`, sharded as the run's parallel strategy places them.

    With `data_iterator` (a resumed training run) the newest intact checkpoint is
    used instead of `step`, damaged newer ones set aside, and the iterator's
    position is restored in place.
    """
    if data_iterator is not None:
        step = ckpt.select("latest", checkpoint.RESUME_ITEMS)
    _check_checkpoint(ckpt, step, run)
    rng = sharding.global_rng(run.config.seed)
    abstract = run.parallel.abstract_state(run.init_fn, rng)
    abstract_rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=run.parallel.rng_sharding)
    state, train_rng = ckpt.restore(step, abstract, abstract_rng, data_iterator)
    _log.info("Restored checkpoint %d from %s", step, ckpt.directory)
    return run.parallel.place_state(state), train_rng


def averaged(run: Run, ckpt: checkpoint.Checkpointer, step: int):
    """The state of checkpoint `step` with the mean parameters of the last k checkpoints up to it.

    k = `config.average_last_checkpoints` (Vaswani et al. 2017 sec. 6.1 average the last 5 checkpoints);
    the mean is taken in float32 and kept as a running sum, so two states are in memory at a time.
    """
    chosen = [s for s in ckpt.steps() if s <= step][-run.config.average_last_checkpoints:]
    total, state = None, None
    for s in chosen:
        state, _ = restore(run, ckpt, s)
        params = jax.tree.map(lambda x: x.astype(np.float32), state.params)
        total = params if total is None else jax.tree.map(lambda a, b: a + b, total, params)
    mean = jax.tree.map(lambda t, x: (t / len(chosen)).astype(x.dtype), total, state.params)
    _log.info("Averaged the parameters of checkpoints %s", chosen)
    return state.replace(params=mean)


def restore_params(workdir: str, which: str, tokenizers: Tokenizers, parallel: Any,
                   config: ml_collections.ConfigDict | None = None) -> tuple[Any, Any, int]:
    """(model, params, step) of `--checkpoint=which` of the run in `workdir`, for another run's use.

    The run's saved config gives its model (sized for `tokenizers`, which its checkpoints must
    have been trained with) and the optimizer whose state its checkpoints hold; `parallel` (the
    reading run's) places the parameters. A fine-tuning run starts from them; an ensemble
    decodes with them.
    """
    config = config if config is not None else saved_config.trained_run_config(workdir, {})  # its saved config
    schedule = optim.make_schedule(config)
    model = build.build_model(config, vocab_size=max(config.data.vocab_size, 8))
    other = for_vocabulary(config, workdir, tokenizers,
                           build.Built(model, schedule, optim.make_optimizer(config, schedule), parallel))
    ckpt = open_checkpoints(workdir, config)
    try:
        state, step = restore_named(other, ckpt, which)
    finally:
        ckpt.close()
    return other.model, state.params, step


def select_step(ckpt: checkpoint.Checkpointer, which: str) -> int:
    """The step `--checkpoint=which` reads ("average": the latest, averaged with the ones before it)."""
    if which not in CHECKPOINT_CHOICES:
        raise UserError(f"checkpoint: got {which!r}, expected one of {CHECKPOINT_CHOICES}")
    step = ckpt.select("latest" if which == "average" else which)  # a damaged one falls back, saying so
    if step is None:
        raise UserError(f"workdir: no checkpoint in {ckpt.directory}; train first")
    return step


def restore_named(run: Run, ckpt: checkpoint.Checkpointer, which: str) -> tuple[Any, int]:
    """(state, step) of `--checkpoint=which`: "latest", "best", or "average" (of the last k up to latest)."""
    step = select_step(ckpt, which)
    if which == "average":
        if run.config.average_last_checkpoints < 2:
            raise UserError(f"--checkpoint=average: config.average_last_checkpoints is "
                            f"{run.config.average_last_checkpoints}, expected k >= 2 checkpoints to average "
                            "(e.g. --config.average_last_checkpoints=5)")
        return averaged(run, ckpt, step), step
    return restore(run, ckpt, step)[0], step


def checkpointer(config: ml_collections.ConfigDict | None, workdir: str, read_only: bool = False
                 ) -> checkpoint.Checkpointer:
    """The workdir's checkpoints; the best is picked by the run's `early_stopping.best_metric` (no
    config: validation BLEU)."""
    metric = early_stopping.best_metric(config) if config is not None else checkpoint.BEST_METRIC
    return checkpoint.Checkpointer(os.path.join(workdir, checkpoint.CHECKPOINT_DIR),
                                   keep=1 if read_only else config.keep_checkpoints, read_only=read_only,
                                   best_metric=metric, larger_is_better=early_stopping.METRICS[metric])


def open_checkpoints(workdir: str, config: ml_collections.ConfigDict | None = None) -> checkpoint.Checkpointer:
    """The workdir's checkpoints, read-only (a snapshot: a trainer may be writing beside us)."""
    if not os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)):
        raise UserError(f"workdir: no checkpoints in {workdir!r}; train first")
    return checkpointer(config, workdir, read_only=True)
