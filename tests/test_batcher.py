"""train.batcher: concurrent requests with one key become one call; keys never mix; errors reach
every request of the failed batch; results go back to their requests in order."""

import asyncio
import threading
import time

import pytest

from train.batcher import Batcher


class Recorder:
    """A `run_batch` that records its calls (and may fail or take a while)."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls, self.threads, self.delay, self.fail_on = [], set(), delay, fail_on

    def __call__(self, key, items):
        self.calls.append((key, list(items)))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on!r}")
        return [f"{key}:{item}" for item in items]


def _run(coroutine):
    return asyncio.run(coroutine)


def test_requests_arriving_together_share_one_call_and_keys_never_mix():
    record = Recorder()

    async def main():
        batcher = Batcher(record, wait_s=0.2, max_items=100)
        answers = await asyncio.gather(batcher.submit("a", [1, 2]), batcher.submit("b", [3]),
                                       batcher.submit("a", [4]), batcher.submit("a", []))
        await batcher.close()
        return answers, batcher.stats

    answers, stats = _run(main())
    assert answers == [["a:1", "a:2"], ["b:3"], ["a:4"], []]
    assert sorted(record.calls) == [("a", [1, 2, 4]), ("b", [3])]
    assert (stats.requests, stats.batches, stats.items) == (4, 2, 4)
    assert len(record.threads) == 1 and threading.get_ident() not in record.threads  # one model thread


def test_a_lone_request_never_waits_and_a_full_batch_goes_at_once():
    record = Recorder()

    async def main():
        batcher = Batcher(record, wait_s=5.0, max_items=2)
        start = time.perf_counter()
        alone = await batcher.submit("k", [1])
        waited = time.perf_counter() - start
        start = time.perf_counter()
        full = await asyncio.gather(batcher.submit("k", [2, 3]), batcher.submit("k", [4]))
        await batcher.close()
        return alone, waited, full, time.perf_counter() - start

    alone, waited, full, took = _run(main())
    assert alone == ["k:1"] and waited < 1.0  # nobody else was on the way: no 5 s wait
    assert full == [["k:2", "k:3"], ["k:4"]] and took < 1.0
    assert record.calls[1] == ("k", [2, 3])  # max_items reached: it did not wait for the third


def test_the_wait_for_a_late_request_is_bounded():
    record = Recorder()

    async def main():
        batcher = Batcher(record, wait_s=0.2, max_items=100)

        async def late():
            await asyncio.sleep(0.6)
            return await batcher.submit("k", [2])
        await asyncio.gather(batcher.submit("k", [0]), batcher.submit("k", [0]))  # load: a shared batch
        started = time.perf_counter()
        first = asyncio.create_task(batcher.submit("k", [1]))
        second = asyncio.create_task(late())
        answers = [await first, time.perf_counter() - started, await second]
        await batcher.close()
        return answers

    first, waited, second = _run(main())
    assert first == ["k:1"] and second == ["k:2"]
    assert 0.15 <= waited < 0.55  # under load it waited for company (`wait_s`), not for the late one
    assert [items for _, items in record.calls] == [[0, 0], [1], [2]]


def test_requests_queued_during_a_batch_go_together_into_the_next():
    record = Recorder(delay=0.3)

    async def main():
        batcher = Batcher(record, wait_s=0.0, max_items=100)
        first = asyncio.create_task(batcher.submit("k", [0]))
        await asyncio.sleep(0.1)  # the first batch is running
        rest = await asyncio.gather(*(batcher.submit("k", [i]) for i in range(1, 6)))
        await first
        await batcher.close()
        return rest

    assert _run(main()) == [[f"k:{i}"] for i in range(1, 6)]
    assert [items for _, items in record.calls] == [[0], [1, 2, 3, 4, 5]]


def test_a_failed_batch_fails_each_of_its_requests_and_the_batcher_goes_on():
    record = Recorder(fail_on="bad")

    async def main():
        batcher = Batcher(record, wait_s=0.1, max_items=100)
        failed = await asyncio.gather(batcher.submit("k", ["ok"]), batcher.submit("k", ["bad"]),
                                      return_exceptions=True)
        after = await batcher.submit("k", ["fine"])
        await batcher.close()
        return failed, after

    failed, after = _run(main())
    assert all(isinstance(e, ValueError) and "bad item 'bad'" in str(e) for e in failed)
    assert after == ["k:fine"]


def test_call_runs_on_the_model_thread_between_batches():
    record = Recorder()

    async def main():
        batcher = Batcher(record, wait_s=0.0, max_items=4)
        await batcher.submit("k", [1])
        thread = await batcher.call(threading.get_ident)
        await batcher.close()
        return thread

    assert {_run(main())} == record.threads


@pytest.mark.parametrize("wait_s, max_items", [(-1.0, 4), (0.0, 0)])
def test_bad_settings_are_refused(wait_s, max_items):
    with pytest.raises(ValueError, match="wait_s, max_items"):
        Batcher(Recorder(), wait_s=wait_s, max_items=max_items)


def test_a_batch_waits_for_a_request_still_being_read():
    record = Recorder()

    async def main():
        batcher = Batcher(record, wait_s=2.0, max_items=100)

        async def slow_reader():
            with batcher.arriving():
                await asyncio.sleep(0.2)  # reading its body
                return await batcher.submit("k", [2])
        second = asyncio.create_task(slow_reader())
        await asyncio.sleep(0)
        with batcher.arriving():
            first = await batcher.submit("k", [1])
        answers = [first, await second]
        await batcher.close()
        return answers

    assert _run(main()) == [["k:1"], ["k:2"]]
    assert record.calls == [("k", [1, 2])]  # one batch: the first waited for the one on its way
