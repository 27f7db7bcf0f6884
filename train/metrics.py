"""Training metrics on their way from the device to the writers: JSON lines and TensorBoard, without TensorFlow.

`MetricWriter` appends one JSON object per call to `<workdir>/metrics.jsonl`
(`{"step": ..., "split/name": value, ...}`; easy to load with pandas) and writes
the same scalars to TensorBoard event files in `<workdir>/tensorboard` through
tensorboardX, which needs no TensorFlow. Only process 0 writes. `TrainHistory`
collects the train step's metrics, stops the run on a non-finite loss and
writes their means at log steps.
"""

import json
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter

from train import steps

__all__ = ["MetricWriter", "NonFiniteLossError", "TrainHistory"]


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


class NonFiniteLossError(RuntimeError):
    """The training loss or gradient became NaN or Inf."""


class TrainHistory:
    """Step metrics on their way from the device to the writers.

    `sync` fetches what the steps returned since the last call and stops the
    run on a non-finite loss (before any checkpoint of that state is saved);
    `write` logs the means since the last write.
    """

    def __init__(self, parallel, writer: MetricWriter, bar):
        self._parallel, self._writer, self._bar = parallel, writer, bar
        self._device, self._host = [], []
        self._tick = time.time()

    def append(self, step_metrics) -> None:
        self._device.append(step_metrics)

    def sync(self, step: int, last_good: str) -> None:
        """Raises `NonFiniteLossError` naming the step and `last_good` (where to resume from)."""
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
