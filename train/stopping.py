"""Stopping on a signal: SIGTERM / SIGINT become a flag that the training loop checks after every step.

The loop finishes the step, saves, waits for the save and exits 0. A second
signal while the first is pending kills the process as usual. Multi-host jobs
stop together at JAX's preemption sync point (see `PreemptionGuard`).
"""

import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["PreemptionGuard"]


class PreemptionGuard:
    """Context manager: SIGTERM / SIGINT set `.requested` instead of killing the process.

    Only the main thread can install signal handlers; elsewhere (e.g. a
    notebook's worker thread) the guard is inert. Previous handlers come back
    on exit. A second signal while the first is pending restores the default
    behaviour, so a stuck run can still be stopped.

    Multi-host jobs (`jax.process_count() > 1`) stop together without a
    collective per step: SIGTERM is left to JAX's preemption service (its
    handler, installed by `jax.distributed.initialize`, tells every process
    through the coordination service), SIGINT is forwarded to it as a SIGTERM,
    and `should_stop(step)` asks `multihost_utils.reached_preemption_sync_point`,
    which is true on every process at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        self._synced = False  # multi-host: stop where JAX's preemption service says

    def _handle(self, signum, frame):
        del frame
        if self.requested:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._synced:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice for every process of the job

    def __enter__(self) -> "PreemptionGuard":
        self._synced = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT,) if self._synced else self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def should_stop(self, step: int | None = None) -> bool:
        """True if any process received a signal (all processes agree).

        Args:
          step: the training step just finished; a multi-host job must ask at
            every step (the processes agree on the step to stop at). Without
            it (between steps, e.g. during an evaluation) a multi-host job
            answers False: the stop waits for the next step.
        """
        if jax.process_count() == 1:
            return self.requested
        if self._synced:
            if step is None or not multihost_utils.reached_preemption_sync_point(step):
                return False
            self.signal_name = self.signal_name or "a preemption notice (SIGTERM to a process of the job)"
            return True
        # JAX's preemption service is off (jax_enable_preemption_service): ask every process.
        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(flags.any())
