"""The dispatchers: the decision thread (every caller gets the answer to its own call, and nobody
waits forever) and deciding in place (the same contract, on the caller's thread)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import pytest

from authz_server.serve.serial import InlineRunner, SerialRunner, dispatcher


def _square_on(threads: list[str]):  # type: ignore[no-untyped-def]
    def square(n: int) -> int:
        threads.append(threading.current_thread().name)
        return n * n

    return square


def test_many_callers_each_get_their_own_result_computed_on_the_runner_thread() -> None:
    threads: list[str] = []
    runner = SerialRunner(_square_on(threads), fallback=-1, name="decider")
    runner.start()
    try:
        with futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(runner, range(2000), timeout=60))
    finally:
        runner.stop()
    assert results == [n * n for n in range(2000)]
    assert set(threads) == {"decider"}
    assert len(threads) == 2000


def test_a_raising_function_gives_the_fallback_and_the_next_call_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def picky(n: int) -> int:
        if n == 13:
            raise ValueError("unlucky")
        return n

    runner = SerialRunner(picky, fallback=-1, name="decider")
    runner.start()
    try:
        assert runner(13) == -1
        assert runner(14) == 14
    finally:
        runner.stop()
    assert "decider failed" in caplog.text
    assert "unlucky" in caplog.text


def test_calls_before_start_and_after_stop_run_on_the_callers_thread() -> None:
    threads: list[str] = []
    runner = SerialRunner(_square_on(threads), fallback=-1, name="decider")
    assert runner(3) == 9
    runner.start()
    assert runner(4) == 16
    runner.stop()
    assert runner(5) == 25
    here = threading.current_thread().name
    assert threads == [here, "decider", here]


def test_stop_answers_every_call_already_waiting() -> None:
    release = threading.Event()
    entered = threading.Event()
    threads: list[str] = []

    def slow(n: int) -> int:
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
        return n

    runner = SerialRunner(slow, fallback=-1, name="decider")
    runner.start()
    with futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(runner, 0)
        assert entered.wait(5)
        queued = [pool.submit(runner, n) for n in range(1, 4)]
        deadline = time.monotonic() + 5
        while runner._queue.qsize() < 3 and time.monotonic() < deadline:  # queued behind call 0
            time.sleep(0.001)
        stopping = threading.Thread(target=runner.stop)
        stopping.start()
        release.set()
        stopping.join(10)
        assert not stopping.is_alive()
        assert first.result(5) == 0
        assert [f.result(5) for f in queued] == [1, 2, 3]
    assert threads == ["decider"] * 4


def test_inline_runs_every_call_on_its_callers_thread_at_once() -> None:
    threads: list[str] = []
    runner = InlineRunner(_square_on(threads), fallback=-1, name="decider")
    runner.start()
    try:
        with futures.ThreadPoolExecutor(8, thread_name_prefix="pool") as pool:
            results = list(pool.map(runner, range(500), timeout=60))
    finally:
        runner.stop()
    assert results == [n * n for n in range(500)]
    assert len(threads) == 500
    assert all(name.startswith("pool") for name in threads)


def test_inline_gives_the_fallback_of_the_call_that_raised_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def picky(n: int) -> int:
        if n == 13:
            raise ValueError("unlucky")
        return n

    runner = InlineRunner(picky, fallback=-1, name="decider")
    assert runner(13) == -1
    assert runner(14) == 14
    # Another function through the same seam: its own fallback, not the runner's.
    assert runner.run(picky, 13, "other fallback") == "other fallback"
    assert runner.run(str, 7, "unused") == "7"
    assert caplog.text.count("decider failed") == 2
    assert "unlucky" in caplog.text


def test_dispatch_modes_pick_the_runner() -> None:
    here = threading.current_thread().name
    for mode, runs_on in (("thread", "check"), ("inline", here)):
        threads: list[str] = []
        runner = dispatcher(mode, _square_on(threads), -1, "check")
        runner.start()
        try:
            assert runner(6) == 36
        finally:
            runner.stop()
        assert threads == [runs_on], mode
    with pytest.raises(ValueError):
        dispatcher("fibers", _square_on([]), -1, "check")
