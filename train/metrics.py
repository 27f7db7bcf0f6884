"""Metric writers: JSON lines and TensorBoard event files, without TensorFlow.

`MetricWriter` appends one JSON object per call to `<workdir>/metrics.jsonl`
(`{"step": ..., "split/name": value, ...}`; easy to load with pandas) and writes
the same scalars to TensorBoard event files in `<workdir>/tensorboard` through
tensorboardX, which needs no TensorFlow. Only process 0 writes.
"""

import json
import os
from collections.abc import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter

__all__ = ["MetricWriter"]


class MetricWriter:
    """Writes scalar metrics and text to JSONL and TensorBoard (process 0 only).

    Args:
      workdir: the run directory; created if needed.
      enabled: write at all (default: only on process 0).
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._file = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.jsonl_path, "a", encoding="utf-8")
            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Records `scalars` at `step` in both formats."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in scalars.items():
            value = float(np.asarray(value))
            row[name] = value
            self._tb.add_scalar(name, value, int(step))
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk, typically: say which file
            raise OSError(e.errno, e.strerror, self.jsonl_path) from None

    def write_text(self, step: int, name: str, text: str) -> None:
        """Records a text blob (e.g. sample translations) in TensorBoard."""
        if self.enabled:
            self._tb.add_text(name, text, int(step))

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled and self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = None
