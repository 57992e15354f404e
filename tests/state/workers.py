"""What the child processes of the concurrency tests run (importable, for the spawn start method).

Each child opens the store from its URL, waits at a barrier so that all of them start together,
then races the others and reports what it won. Each goes through the keys in its own order, so
that processes collide all along instead of one sweeping every key before the next wakes up.
"""

from __future__ import annotations

import os
import random
from multiprocessing.synchronize import Barrier
from queue import Queue

from authz_server.state import open_store


def race_claims(url: str, keys: list[str], barrier: Barrier, results: Queue[list[str]]) -> None:
    with open_store(url) as store:
        store.ping()  # connected (and the SQLite schema made) before the race starts
        keys = _shuffled(keys)
        barrier.wait(30)
        results.put([key for key in keys if store.claim("dpop", key, 60)])


def race_transitions(url: str, ids: list[str], barrier: Barrier, results: Queue[list[str]]) -> None:
    with open_store(url) as store:
        store.ping()
        ids = _shuffled(ids)
        barrier.wait(30)
        results.put([i for i in ids if store.transition("approval", i, "approved", "used")])


def race_takes(url: str, ids: list[str], barrier: Barrier, results: Queue[list[str]]) -> None:
    with open_store(url) as store:
        store.ping()
        ids = _shuffled(ids)
        barrier.wait(30)
        results.put([i for i in ids if store.take("approval", i) is not None])


def write_record(url: str, kind: str, id: str) -> None:
    with open_store(url) as store:
        store.put(kind, id, {"written_by": "another process"}, state="on")


def _shuffled(items: list[str]) -> list[str]:
    return random.Random(os.getpid()).sample(items, len(items))
