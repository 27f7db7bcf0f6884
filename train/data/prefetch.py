"""A background thread that prepares batches ahead, checkpointable like any grain iterator.

The JAX step runs asynchronously; while it does, this thread fills the next pool (bucketing or
packing), so the host loop only ever pops a ready batch.
"""

from __future__ import annotations

import copy
import queue
import threading

import grain

from train.errors import UserError

__all__ = ["PrefetchIterDataset"]


def _produce(parent: grain.DatasetIterator, out: queue.Queue, stop: threading.Event) -> None:
    """Producer thread; holds no reference to the iterator, so dropping it stops the thread."""
    while not stop.is_set():
        try:
            element = next(parent)
            item = (element, copy.deepcopy(parent.get_state()), None)
        except Exception as e:  # pylint: disable=broad-except  (StopIteration included)
            item = (None, None, e)
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        if item[2] is not None:
            return


class _PrefetchIterator(grain.DatasetIterator):
    """See `PrefetchIterDataset`."""

    def __init__(self, parent: grain.DatasetIterator, buffer_size: int):
        super().__init__(parent)
        self._size = buffer_size
        self._state = copy.deepcopy(parent.get_state())  # state after the last consumed batch
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = self._queue = self._stop = None

    def __next__(self):
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._queue, self._stop = queue.Queue(self._size), threading.Event()
            self._thread = threading.Thread(target=_produce, daemon=True,
                                            args=(self._parent, self._queue, self._stop))
            self._thread.start()
        element, state, error = self._queue.get()
        if error is not None:
            self._error = error
            self._halt()
            raise error
        self._state = state
        return element

    def get_state(self) -> dict:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict) -> None:
        self._halt()
        self._error = None
        self._parent.set_state(copy.deepcopy(state))
        self._state = copy.deepcopy(state)

    def close(self) -> None:
        # Also called from __del__, possibly during interpreter shutdown: only signal the
        # (daemon) producer thread to stop; it exits at its next queue timeout.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


class PrefetchIterDataset(grain.IterDataset):
    """Prepares `buffer_size` elements ahead in a background thread; checkpointable.

    The state is the parent's state after the last element the caller consumed, so a restored
    iterator yields exactly what the saved one would have. (grain's ThreadPrefetchIterDataset
    does the same but prints a traceback when its iterator is garbage-collected during
    interpreter shutdown.)
    """

    def __init__(self, parent: grain.IterDataset, *, buffer_size: int):
        super().__init__(parent)
        if buffer_size < 1:
            raise UserError(f"buffer_size: got {buffer_size}, expected >= 1")
        self._buffer_size = int(buffer_size)

    def __iter__(self) -> _PrefetchIterator:
        return _PrefetchIterator(self._parent.__iter__(), self._buffer_size)

    def __str__(self) -> str:
        return f"PrefetchIterDataset(buffer_size={self._buffer_size})"
