"""Evaluating a run's state on its eval splits: loss, decoding, BLEU / chrF / exact match, samples, heatmaps.

The training loop evaluates the validation split every `eval_every_steps`
(`evaluate_split`, abortable by a stop signal) and every split at the end
(`final_evaluation`); `--mode=eval` runs the final evaluation of a checkpoint.
"""

import dataclasses
import logging
import os
from typing import Any

import jax

from train import evaluation, steps
from train.run import Run

__all__ = ["EvalAborted", "evaluate_split", "final_evaluation"]

_log = logging.getLogger(__name__)


class EvalAborted(Exception):
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
                raise EvalAborted
            yield batch


def evaluate_split(run: Run, state, split: str, *, max_examples: int, step: int, tag: str,
                   guard=None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Scalars (`<split>/nll`, `/bleu`, ...) and decoded rows of `split`; samples go to `samples/<split>_<tag>.txt`.

    Args:
      max_examples: pairs decoded (0 = all); the loss covers the whole split.
      tag: "final" also writes every prediction as JSON lines.
      guard: a `train.stopping.PreemptionGuard`: its signal aborts the evaluation (`EvalAborted`).
    """
    eval_fn, decode_fn = run.eval_fns
    eval_set = run.datasets.eval[split]
    if guard is not None:
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


def final_evaluation(run: Run, state, step: int, writer, guard=None) -> dict[str, Any]:
    """Every eval split in full, written to `writer`; heatmaps of the last split's first pairs."""
    summary = {"eval_splits": list(run.datasets.eval)}
    _log.info("Final evaluation of step %d on %s", step, summary["eval_splits"])
    rows = []
    for split in run.datasets.eval:
        scalars, rows = evaluate_split(run, state, split, max_examples=0, step=step, tag="final", guard=guard)
        writer.write_scalars(step, scalars)
        summary.update(scalars)
    if run.config.num_heatmaps > 0 and rows and jax.process_index() == 0:
        paths = evaluation.write_heatmaps(os.path.join(run.workdir, "heatmaps"),
                                          run.capture_model(), run.parallel.params(state), rows, run.tokenizers,
                                          run.config.num_heatmaps)
        if paths:
            _log.info("Wrote %d attention heatmaps to %s", len(paths), os.path.dirname(paths[0]))
    return summary
