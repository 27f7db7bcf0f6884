"""The run modes on a trained workdir: `evaluate`, `load_trained`, `translate` (`--mode=eval/translate/score`).

Each reads a snapshot of the workdir's checkpoints (a trainer may be writing
beside it) and the checkpoint `--checkpoint` names (`train.run.CHECKPOINT_CHOICES`).
With `ensemble` (other workdirs of the same vocabulary, `--ensemble`), the model is the
`jaxattn.models.Ensemble` of the run's model and theirs, each read at the same checkpoint
choice, decoded with the run's decode settings.
"""

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from jaxattn import models as models_lib
from train import build, eval_run, metrics, run, saved_config, sharding, translation
from train.data import Tokenizers, load_tokenizers
from train.errors import UserError

__all__ = ["Trained", "evaluate", "load_trained", "translate"]

_log = logging.getLogger(__name__)


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint_name: str = "latest",
             ensemble: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluates a trained checkpoint on every eval split of its data (writes samples and metrics).

    With `ensemble`, the ensemble of the run and those workdirs' runs (no heatmaps: they show one
    model's attention).

    Returns:
      The final metrics (`<split>/bleu`, ...) with `step`, `workdir`, `wall_time` and `eval_splits`.
    """
    start_time = time.time()
    ckpt = run.open_checkpoints(workdir, config)
    try:
        run.select_step(ckpt, checkpoint_name)  # no checkpoint: said before the data is prepared
        built = build.build(config)
        saved_config.check_workdir(config, workdir)
        the_run = run.prepare(config, workdir, built)
        state, step = run.restore_named(the_run, ckpt, checkpoint_name)
        if ensemble:
            model, params = _ensemble(the_run.model, state.params, the_run.tokenizers, workdir, ensemble,
                                      checkpoint_name, the_run.parallel)
            config = ml_collections.ConfigDict(config.to_dict())
            config.num_heatmaps = 0
            the_run = dataclasses.replace(the_run, config=config,
                                          built=dataclasses.replace(the_run.built, model=model))
            state = state.replace(params=params)
        writer = metrics.MetricWriter(workdir)
        try:
            summary = eval_run.final_evaluation(the_run, state, step, writer)
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


def load_trained(config: ml_collections.ConfigDict, workdir: str, checkpoint_name: str = "latest",
                 ensemble: Sequence[str] = ()) -> Trained:
    """Restores the latest, best or averaged checkpoint in `workdir` on one device.

    Notebooks use it after `train.loop.train_and_evaluate` to look inside the model:
    `trained.model.apply({"params": trained.params}, inputs, targets)`. With `ensemble`, the model
    is the ensemble of this run and those workdirs' runs (`step` is this run's).
    """
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]), data=False)
    saved_config.check_workdir(config, workdir)
    ckpt = run.open_checkpoints(workdir, config)
    try:
        run.select_step(ckpt, checkpoint_name)  # no checkpoint: said before the vocabulary is read
        tokenizers = load_tokenizers(os.path.join(workdir, "vocab"), shared=config.data.shared_vocab)
        the_run = run.for_vocabulary(config, workdir, tokenizers, built)
        state, step = run.restore_named(the_run, ckpt, checkpoint_name)
    finally:
        ckpt.close()
    model, params = the_run.model, state.params
    if ensemble:
        model, params = _ensemble(model, params, tokenizers, workdir, ensemble, checkpoint_name, built.parallel)
    return Trained(config, model, params, tokenizers, step)


def _ensemble(model, params, tokenizers: Tokenizers, workdir: str, others: Sequence[str], checkpoint_name: str,
              parallel) -> tuple[Any, Any]:
    """(Ensemble, its params) of the run's (model, params) and the runs in `others` (one vocabulary)."""
    models, trees = [model], [params]
    for other in others:
        if os.path.abspath(other) == os.path.abspath(workdir):
            raise UserError(f"--ensemble: {other!r} is --workdir itself; list the other runs")
        other_config = saved_config.trained_run_config(other, {})
        theirs = load_tokenizers(os.path.join(other, "vocab"), shared=other_config.data.shared_vocab)
        if theirs.fingerprint() != tokenizers.fingerprint():
            raise UserError(f"--ensemble: {other!r} has another vocabulary than {workdir!r} (an ensemble's models "
                            "share one: train them with the same vocabulary, e.g. by --config.init_from or by "
                            "copying vocab/ before training)")
        member, member_params, step = run.restore_params(other, checkpoint_name, tokenizers, parallel, other_config)
        _log.info("Ensemble member %s: %s model, checkpoint %d (%s)", other, type(member).__name__, step,
                  checkpoint_name)
        models.append(member)
        trees.append(member_params)
    return models_lib.Ensemble(tuple(models)), models_lib.ensemble_params(trees)


def translate(config: ml_collections.ConfigDict, workdir: str, sentences: Sequence[str],
              checkpoint_name: str = "latest") -> list[str]:
    """Translates `sentences` with the latest (or best) checkpoint in `workdir` ("" for a blank one).

    Batched and sorted by length (`train.translation.Translator`, which also gives n-best lists
    and scores), decoded as `--mode=eval` decodes.
    """
    return translation.Translator(load_trained(config, workdir, checkpoint_name)).translate(sentences)
