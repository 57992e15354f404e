"""Where a decision runs: on one thread that takes every caller's call in turn
(:class:`SerialRunner`, ``--dispatch thread``), or in place on the thread that received it
(:class:`InlineRunner`, ``--dispatch inline``). Both are a :class:`Dispatcher`, the one seam the
Check, ext_proc, ExtMcp and HTTP authorizer services decide through.

The case for one thread:

grpcio's synchronous server runs each Check on one of a pool of threads, between its own
work on the network. A decision made there starts with the CPU caches holding gRPC's code and
data, not the decision path's, and runs several times slower than the same decision in a
loop. The GIL lets only one thread decide at a time anyway, so nothing is lost by making them
all on one thread that takes the checks waiting in arrival order: under load it decides
several in a row with its code and data still cached (on the benchmark, about 10% less CPU per
check). The pool's threads keep doing the network round trips.

The case for deciding in place: each handoff costs two thread wake-ups and two GIL hand-overs
per check, which a sandboxed kernel (gVisor) makes several times dearer. Nothing on the decision
path needs one thread: its caches are locked or swapped whole, and the GIL still lets one
thread decide at a time. ``serve/server.py`` says which is the default and why.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")
T = TypeVar("T")
U = TypeVar("U")


class _Call:
    __slots__ = ("argument", "done", "fallback", "function", "result")

    def __init__(self, function: Callable[[Any], Any], argument: Any, fallback: Any) -> None:
        self.function = function
        self.argument = argument
        self.fallback = fallback
        self.result = fallback
        # Released by the runner once ``result`` is set: a bare lock is the cheapest handoff
        # between two threads that Python offers.
        self.done = threading.Lock()
        self.done.acquire()


_STOP = object()
# The most calls decided before their callers are woken: it bounds the wait a batch adds to its
# first call (the example policies decide in well under a millisecond each).
BATCH = 16


class Dispatcher(Protocol[A, R]):
    """Runs decisions for the serving threads; ``run`` never raises (a function that does gives
    its ``fallback``, logged)."""

    def __call__(self, argument: A) -> R: ...

    def run(self, function: Callable[[T], U], argument: T, fallback: U) -> U: ...

    def start(self) -> None: ...

    def stop(self, timeout: float | None = 10.0) -> None: ...


class InlineRunner(Generic[A, R]):
    """Calls ``function`` on the calling thread: no handoff. Same contract as
    :class:`SerialRunner`: an error is logged and the caller gets ``fallback``."""

    def __init__(self, function: Callable[[A], R], fallback: R, name: str) -> None:
        self._function = function
        self._fallback = fallback
        self._name = name

    def start(self) -> None:
        """Nothing to start: callers decide on their own threads."""

    def stop(self, timeout: float | None = 10.0) -> None:
        """Nothing to stop: a call in progress ends with its caller's RPC."""

    def __call__(self, argument: A) -> R:
        return self.run(self._function, argument, self._fallback)

    def run(self, function: Callable[[T], U], argument: T, fallback: U) -> U:
        try:
            return function(argument)
        except Exception:
            log.exception("%s failed; answering with the fallback", self._name)
            return fallback


def dispatcher(mode: str, function: Callable[[A], R], fallback: R, name: str) -> Dispatcher[A, R]:
    """The dispatcher of ``--dispatch MODE``: ``thread`` (:class:`SerialRunner`) or ``inline``."""
    if mode == "inline":
        return InlineRunner(function, fallback, name)
    if mode == "thread":
        return SerialRunner(function, fallback, name)
    raise ValueError(f"unknown dispatch mode {mode!r}")


class SerialRunner(Generic[A, R]):
    """Calls ``function`` on its own thread, for any number of calling threads.

    ``function`` should not raise; if it does, the error is logged and the caller gets
    ``fallback``. Before :meth:`start` and after :meth:`stop` calls run on the caller's thread,
    so a caller never waits for a runner that is not there.
    """

    def __init__(self, function: Callable[[A], R], fallback: R, name: str) -> None:
        self._function = function
        self._fallback = fallback
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held while enqueueing and while stopping: a call is either queued before the stop
        # marker, and run, or sees the runner stopped and runs in place.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Run what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join(timeout)

    def __call__(self, argument: A) -> R:
        return self.run(self._function, argument, self._fallback)

    def run(self, function: Callable[[T], U], argument: T, fallback: U) -> U:
        """Run another function on the same thread, in turn with the others (the ext_proc and
        ExtMcp services share the decision thread with Check)."""
        call = _Call(function, argument, fallback)
        with self._lock:
            queued = self._thread is not None
            if queued:
                self._queue.put(call)
        if not queued:
            return self._call(call)  # type: ignore[no-any-return]
        call.done.acquire()
        return call.result  # type: ignore[no-any-return]

    def _run(self) -> None:
        get, take, waiting = self._queue.get, self._queue.get_nowait, self._queue.qsize
        while True:
            # Decide what waits, then wake its callers: a caller woken at once would ask for
            # the GIL while the next check is being decided, and take it within the switch
            # interval, a handover in the middle of every check under load.
            batch = [get()]
            while len(batch) < BATCH and waiting():
                batch.append(take())
            try:
                for call in batch:
                    if call is not _STOP:
                        call.result = self._call(call)
            finally:
                for call in batch:
                    if call is not _STOP:
                        call.done.release()
            if batch[-1] is _STOP:
                return

    def _call(self, call: _Call) -> Any:
        try:
            return call.function(call.argument)
        except Exception:
            log.exception("%s failed; answering with the fallback", self._name)
            return call.fallback
