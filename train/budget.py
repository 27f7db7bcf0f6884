"""When training ends: steps, wall-clock minutes or epochs, whichever binds first.

The epoch budget is the data stream's (`data.num_epochs`: its iterator ends,
and the loop says so); `Budget.end_reason` answers for the other two after
every step. `estimate_total` is the step at which the binding budget is
expected to end, for the progress bar and its ETA.
"""

import time

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["Budget"]


class Budget:
    """The step, time and epoch budgets of one launch (`config.num_train_steps`, `.max_train_minutes`,
    `.data.num_epochs`), counted from `start_step`."""

    def __init__(self, config, start_step: int, num_train_examples: int):
        self.max_steps = config.num_train_steps
        self.max_minutes = config.max_train_minutes
        self.max_seconds = 60.0 * config.max_train_minutes if config.max_train_minutes > 0 else None
        self.epochs = config.data.num_epochs
        self._examples = num_train_examples
        self._start_step = start_step
        self._start = time.time()
        self._rows = 0  # real (non-padding) training pairs seen since the start

    def add_rows(self, rows: int) -> None:
        self._rows += rows

    def _time_up(self, log_step: bool) -> bool:
        """With several hosts only at log steps, where process 0's clock decides for all (every host
        must stop at the same step)."""
        if self.max_seconds is None:
            return False
        up = time.time() - self._start >= self.max_seconds
        if jax.process_count() > 1:
            up = log_step and bool(multihost_utils.broadcast_one_to_all(np.asarray(up)))
        return up

    def end_reason(self, step: int, log_step: bool) -> str:
        """Why training ends after `step` ("" = it goes on); called after every step."""
        if step >= self.max_steps:
            return f"num_train_steps={self.max_steps} reached"
        if self._time_up(log_step):
            return f"max_train_minutes={self.max_minutes:g} reached"
        return ""

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
