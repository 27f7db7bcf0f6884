"""The run modes on a trained workdir: `evaluate`, `load_trained`, `translate` (`--mode=eval/translate/score`).

Each reads a snapshot of the workdir's checkpoints (a trainer may be writing
beside it) and the checkpoint `--checkpoint` names (`train.run.CHECKPOINT_CHOICES`).
"""

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from train import build, eval_run, metrics, run, saved_config, sharding, translation
from train.data import Tokenizers, load_tokenizers

__all__ = ["Trained", "evaluate", "load_trained", "translate"]


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint_name: str = "latest") -> dict[str, Any]:
    """Evaluates a trained checkpoint on every eval split of its data (writes samples and metrics).

    Returns:
      The final metrics (`<split>/bleu`, ...) with `step`, `workdir`, `wall_time` and `eval_splits`.
    """
    start_time = time.time()
    ckpt = run.open_checkpoints(workdir)
    try:
        run.select_step(ckpt, checkpoint_name)  # no checkpoint: said before the data is prepared
        built = build.build(config)
        saved_config.check_workdir(config, workdir)
        the_run = run.prepare(config, workdir, built)
        state, step = run.restore_named(the_run, ckpt, checkpoint_name)
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


def load_trained(config: ml_collections.ConfigDict, workdir: str, checkpoint_name: str = "latest") -> Trained:
    """Restores the latest, best or averaged checkpoint in `workdir` on one device.

    Notebooks use it after `train.loop.train_and_evaluate` to look inside the model:
    `trained.model.apply({"params": trained.params}, inputs, targets)`.
    """
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]))
    saved_config.check_workdir(config, workdir)
    ckpt = run.open_checkpoints(workdir)
    try:
        run.select_step(ckpt, checkpoint_name)  # no checkpoint: said before the vocabulary is read
        tokenizers = load_tokenizers(os.path.join(workdir, "vocab"), shared=config.data.shared_vocab)
        the_run = run.for_vocabulary(config, workdir, tokenizers, built)
        state, step = run.restore_named(the_run, ckpt, checkpoint_name)
    finally:
        ckpt.close()
    return Trained(config, the_run.model, state.params, tokenizers, step)


def translate(config: ml_collections.ConfigDict, workdir: str, sentences: Sequence[str],
              checkpoint_name: str = "latest") -> list[str]:
    """Translates `sentences` with the latest (or best) checkpoint in `workdir` ("" for a blank one).

    Batched and sorted by length (`train.translation.Translator`, which also gives n-best lists
    and scores), decoded as `--mode=eval` decodes.
    """
    return translation.Translator(load_trained(config, workdir, checkpoint_name)).translate(sentences)
