"""What the child processes of the approval races run (importable by the forkserver).

Each child opens its own store from the URL, starts ``threads`` threads, waits at a barrier
shared with the other processes so that everyone starts together, and reports the keys it won.
"""

from __future__ import annotations

import random
import threading
from multiprocessing.synchronize import Barrier
from queue import Queue

from authz_server.oversight import Approvals
from authz_server.state import open_store


def race_consume(
    url: str, keys: list[str], threads: int, barrier: Barrier, results: Queue[list[str]]
) -> None:
    with open_store(url) as store:
        store.ping()  # connected before the race starts
        approvals = Approvals(store)
        won: list[str] = []
        lock = threading.Lock()
        local = threading.Barrier(threads)

        def consume() -> None:
            mine = random.sample(keys, len(keys))
            local.wait(30)
            got = [key for key in mine if approvals.consume(key) is not None]
            with lock:
                won.extend(got)

        workers = [threading.Thread(target=consume) for _ in range(threads - 1)]
        for worker in workers:
            worker.start()
        barrier.wait(30)  # every process ready
        consume()
        for worker in workers:
            worker.join(60)
        results.put(won)
