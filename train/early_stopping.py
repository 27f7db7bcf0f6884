"""Early stopping: end training when the validation metric stops improving.

`config.early_stopping.metric` names a validation scalar of `train.eval_run` ("" = off), and
`patience` how many evaluations in a row may fail to improve on the best by more than
`min_delta` before the run stops. The loop then saves, and the final evaluation reads the best
checkpoint (by the same metric: `train.checkpoint` keeps it). A resumed run replays the
evaluations already in `metrics.jsonl`, so stopping does not depend on where a run was resumed.
"""

from __future__ import annotations

import json
import logging
import os

import ml_collections

from train.errors import UserError

__all__ = ["METRICS", "EarlyStopping", "check_config", "best_metric"]

_log = logging.getLogger(__name__)

# metric -> True when larger is better (every one is a validation scalar of `train.eval_run`)
METRICS = {"bleu": True, "chrf": True, "exact_match": True, "nll": False, "loss": False}


def check_config(config: ml_collections.ConfigDict) -> None:
    """One-line errors for `config.early_stopping` fields that cannot work."""
    es = config.early_stopping
    if es.metric and es.metric not in METRICS:
        raise UserError(f"config.early_stopping.metric: got {es.metric!r}, expected '' (off) or one of "
                        f"{sorted(METRICS)}")
    if es.patience < 1:
        raise UserError(f"config.early_stopping.patience: got {es.patience}, expected >= 1 evaluation")
    if es.min_delta < 0:
        raise UserError(f"config.early_stopping.min_delta: got {es.min_delta}, expected >= 0")
    if es.metric and config.average_last_checkpoints > 1:
        raise UserError("config.early_stopping.metric: the final evaluation reads the best checkpoint, which "
                        f"cannot also be the average of the last {config.average_last_checkpoints} "
                        "(config.average_last_checkpoints); set one of them")


def best_metric(config: ml_collections.ConfigDict) -> str:
    """The validation metric that picks a run's best checkpoint: the early-stopping one, else BLEU."""
    return config.early_stopping.metric or "bleu"


class EarlyStopping:
    """Counts evaluations without improvement; `update` says when to stop (inert when metric is "")."""

    def __init__(self, config: ml_collections.ConfigDict, split: str):
        es = config.early_stopping
        self.metric, self.patience, self.min_delta = es.metric, es.patience, es.min_delta
        self.key = f"{split}/{self.metric}"
        self.best: float | None = None
        self.best_step: int | None = None
        self.stale = 0  # evaluations since the best

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if METRICS[self.metric] else value < self.best - self.min_delta

    def update(self, step: int, scalars: dict[str, float]) -> str:
        """Takes one evaluation's scalars; returns why training should stop, or ""."""
        if not self.metric:
            return ""
        value = scalars[self.key]
        if self._improves(value):
            self.best, self.best_step, self.stale = value, step, 0
            return ""
        self.stale += 1
        if self.stale < self.patience:
            return ""
        return (f"early stopping: {self.key} did not improve on {self.best:.4g} (step {self.best_step}) by more "
                f"than {self.min_delta:g} in {self.stale} evaluations")

    def replay(self, workdir: str, step: int) -> None:
        """Replays the evaluations up to `step` recorded in `<workdir>/metrics.jsonl` (a resumed run)."""
        path = os.path.join(workdir, "metrics.jsonl")
        if not self.metric or not os.path.exists(path):
            return
        rows = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if self.key in row and row["step"] <= step:
                    rows[row["step"]] = row  # a resumed run writes a step again: the last row counts
        for s in sorted(rows):
            self.update(s, rows[s])
        if rows:
            _log.info("Early stopping on %s: best %.4g at step %s, %d evaluation(s) without improvement",
                      self.key, self.best, self.best_step, self.stale)
