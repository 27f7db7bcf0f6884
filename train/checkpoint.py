"""Orbax checkpoints: async saves, keep the last k and the best by BLEU, exact resume.

A checkpoint (`<workdir>/checkpoints/<step>/`) holds three items:

* `state`: parameters, optimizer state, step (the `TrainState`) and the run's
  base PRNG key; with the step, the key fixes every later dropout mask
  (`fold_in(rng, step)`), so a resumed run replays exactly;
* `data`: the grain iterator state (one JSON file per process), so the input
  pipeline resumes at the next unseen batch;
* `config`: the resolved config, to refuse resuming into a different model.

Saves are asynchronous: Orbax copies the arrays to host memory before `save`
returns (so the next step may donate the state's buffers), then writes in a
background thread. `close()` waits for the writes to finish.

`PreemptionGuard` turns SIGTERM / SIGINT into a flag the training loop checks
after every step: finish the step, save, wait, exit 0.
"""

import os
import signal
import threading
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["CHECKPOINT_DIR", "Checkpointer", "PreemptionGuard"]

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "bleu"


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


class Checkpointer:
    """A thin `ocp.CheckpointManager` for the trainer's three items.

    Args:
      directory: where step directories go (`<workdir>/checkpoints`).
      keep: how many of the latest checkpoints to keep; the best one by
        validation BLEU is kept in addition.
      read_only: open existing checkpoints without creating anything (used by
        the eval and translate modes).
    """

    def __init__(self, directory: str, keep: int, read_only: bool = False):
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            best_fn=_best_metric,
            best_mode="max",
            preservation_policy=policies.AnyPreservationPolicy(
                [
                    policies.LatestN(keep),
                    policies.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
                ]
            ),
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=options, item_names=("state", "data", "config")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(
        self,
        step: int,
        state: Any,
        rng: jax.Array,
        data_iterator: Any | None,
        config: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save (returns once arrays are on the host)."""
        items = {
            "state": ocp.args.StandardSave({"state": state, "rng": rng}),
            "config": ocp.args.JsonSave(config),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(
        self, step: int, abstract_state: Any, abstract_rng: Any, data_iterator: Any | None = None
    ) -> tuple[Any, jax.Array]:
        """Restores state and rng into the given abstract targets (shardings included).

        If `data_iterator` is given, its position is restored in place.
        """
        items = {"state": ocp.args.StandardRestore({"state": abstract_state, "rng": abstract_rng})}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]["state"], restored["state"]["rng"]

    def restore_config(self, step: int) -> dict[str, Any]:
        """The config saved with checkpoint `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionGuard:
    """Context manager: SIGTERM / SIGINT set `.requested` instead of killing the process.

    Only the main thread can install signal handlers; elsewhere (e.g. a
    notebook's worker thread) the guard is inert. Previous handlers come back
    on exit. A second signal while the first is pending restores the default
    behaviour, so a stuck run can still be stopped.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.requested:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def should_stop(self) -> bool:
        """True if any process received a signal (all processes agree)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(flags.any())
