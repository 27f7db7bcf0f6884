"""Dynamic batching for a server: requests that arrive together are computed as one batch.

    batcher = Batcher(run_batch, wait_s=0.005, max_items=32)   # in the server's event loop
    results = await batcher.submit(key, items)                 # from each request handler

`run_batch(key, items) -> results` (one result per item, in order) is the blocking model call; it
runs on one worker thread, one batch at a time, so the accelerator is never shared between
threads. Requests queued while a batch runs go together into the next one. When others are on
their way (handlers inside `arriving()` that have not submitted yet) or under load (the last batch
held several requests), the first request of a batch also waits at most `wait_s` for them, no
longer once `max_items` items are in; a lone client never waits.
A request is never split: one larger than `max_items` is a batch alone.
Requests are merged only when their `key` is equal (e.g. the same decode settings); a failing
batch fails each of its requests with the same exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["Batcher", "BatchStats"]


@dataclasses.dataclass
class BatchStats:
    """What the batcher has done: requests answered, model calls made, items computed."""

    requests: int = 0
    batches: int = 0
    items: int = 0


@dataclasses.dataclass
class _Request:
    key: Hashable
    items: Sequence[Any]
    future: asyncio.Future


class Batcher:
    """Merges concurrent `submit` calls with the same key into one `run_batch` call."""

    def __init__(self, run_batch: Callable[[Hashable, list[Any]], list[Any]], *, wait_s: float, max_items: int):
        if wait_s < 0 or max_items < 1:
            raise ValueError(f"wait_s, max_items: got {wait_s}, {max_items}, expected >= 0 and >= 1")
        self._run_batch, self._wait_s, self._max_items = run_batch, wait_s, max_items
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._task: asyncio.Task | None = None
        self._shared = False  # whether the last batch held more than one request: there is load
        self._arriving = 0  # requests being read by their handlers (`arriving`) and not yet answered
        self.stats = BatchStats()

    @contextlib.contextmanager
    def arriving(self):
        """Wraps a request handler from its start: while it reads and checks its request, a batch
        starting meanwhile waits (at most `wait_s`) for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Runs `fn(*args)` on the model thread, between batches (for work that is not batched)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        """The results of `items`, computed in a batch with those of concurrent requests with `key`."""
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="batcher")
        request = _Request(key, list(items), asyncio.get_running_loop().create_future())
        await self._queue.put(request)
        return await request.future

    async def close(self) -> None:
        """Stops taking batches (requests in flight should be answered first) and the model thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self._queue.get()]
            deadline = loop.time() + self._wait_s
            while sum(len(r.items) for r in waiting) < self._max_items:
                if not self._queue.empty():  # queued while the last batch ran: no waiting for these
                    waiting.append(self._queue.get_nowait())
                    continue
                if not self._shared and self._arriving <= len(waiting):  # nobody else on the way: go now
                    break
                try:
                    waiting.append(await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0.0)))
                except TimeoutError:
                    break
            groups: dict[Hashable, list[_Request]] = {}
            for request in waiting:
                groups.setdefault(request.key, []).append(request)
            self._shared = len(waiting) > 1
            for key, requests in groups.items():
                await self._run(key, requests)

    async def _run(self, key: Hashable, requests: list[_Request]) -> None:
        items = [item for r in requests for item in r.items]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, key, items)
        except Exception as e:  # each request answers with it  # noqa: BLE001
            for r in requests:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        if len(results) != len(items):
            raise RuntimeError(f"run_batch: returned {len(results)} results for {len(items)} items")
        self.stats.requests += len(requests)
        self.stats.batches += 1
        self.stats.items += len(items)
        start = 0
        for r in requests:
            if not r.future.done():  # a client that went away cancelled its future
                r.future.set_result(results[start:start + len(r.items)])
            start += len(r.items)
