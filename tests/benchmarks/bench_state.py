"""Micro-benchmark of the state store's operations (not collected by pytest).

Run: ``.venv/bin/python -m tests.benchmarks.bench_state`` (needs ``redis-server`` on the PATH for
the Redis column). Prints the mean time per call, from one thread, for what the request path will
do: a DPoP ``claim`` (a new key each time), ``incr``, ``version`` (a mirror's poll), a single-use
``transition``, and ``Mirror.get`` (the per-request revocation lookup, no I/O). SQLite runs on a
file in a temporary directory; Redis on loopback.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from authz_server.state import Mirror, Store, open_store
from tests.state.redis_server import start_redis


def per_call(fn: Callable[[], object], seconds: float = 0.5) -> float:
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(50):
            fn()
        calls += 50
    return (time.perf_counter() - started) / calls


def measure(store: Store) -> dict[str, float]:
    keys = (f"jti-{i}" for i in itertools.count())
    ids = iter(range(10**9))
    for i in range(20000):
        store.put("approval", f"a{i}", {"tool": "merge"}, state="approved", ttl=600)
    for i in range(100):
        store.put("revocation", f"r{i}", {"subject": f"agent-{i}"}, state="on")
    mirror: Mirror[frozenset[str]] = Mirror(
        store, "revocation", lambda rs: frozenset(r.plain()["subject"] for r in rs)
    ).start()
    try:
        return {
            "claim": per_call(lambda: store.claim("dpop", next(keys), 300)),
            "incr": per_call(lambda: store.incr("rate", "agent", 60)),
            "version": per_call(lambda: store.version("revocation")),
            "transition": per_call(
                lambda: store.transition("approval", f"a{next(ids) % 20000}", "approved", "used")
            ),
            "mirror.get": per_call(lambda: "agent-7" in mirror.get(max_staleness=2)),
        }
    finally:
        mirror.stop()


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-state-"))
    server = start_redis()
    try:
        results = {}
        for name, url in (
            ("sqlite", f"sqlite://{directory / 'state.db'}"),
            ("redis", server.url()),
        ):
            with open_store(url) as store:
                results[name] = measure(store)
        print(f"{'operation':<12}{'sqlite us':>12}{'redis us':>12}")
        for op in results["sqlite"]:
            row = [results[name][op] * 1e6 for name in ("sqlite", "redis")]
            print(f"{op:<12}{row[0]:>12.1f}{row[1]:>12.1f}")
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
