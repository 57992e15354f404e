"""Several real processes sharing one store: every race has exactly one winner, and a mirror
sees another process's write within 2 seconds."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from authz_server.state import Mirror, Record, Store, open_store

from . import workers

PROCESSES = 6
KEYS = 1000  # enough work per process that the processes overlap even on a busy machine
# Children are forked from a fork server that imported the store once: a fresh interpreter per
# child (spawn) would cost half a second of imports each; forking the test process itself would
# copy whatever threads and connections other tests left in it.
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["authz_server.state.redis_store", "tests.state.workers"])


def race(target: Callable[..., None], url: str, keys: list[str]) -> list[list[str]]:
    with open_store(url) as store:
        store.ping()  # the SQLite file and schema made here, not by six children at once
    barrier = CONTEXT.Barrier(PROCESSES)
    results = CONTEXT.Queue()
    procs = [
        CONTEXT.Process(target=target, args=(url, keys, barrier, results)) for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    won = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    return won


def raced(attempt: Callable[[int], list[list[str]]]) -> None:
    """Run ``attempt`` (which checks its own outcome) until several processes won some keys:
    the race was a race. SQLite's lock is not fair, so one process may take every key while the
    others back off; each attempt is still checked for exactly-once."""
    for number in range(ATTEMPTS):
        if sum(1 for wins in attempt(number) if wins) > 1:
            return
    raise AssertionError(f"one process won every key in {ATTEMPTS} attempts: no race was run")


ATTEMPTS = 3


def test_a_claim_is_won_exactly_once_across_processes(store_url: str) -> None:
    def attempt(number: int) -> list[list[str]]:
        keys = [f"jti-{number}-{i}" for i in range(KEYS)]
        won = race(workers.race_claims, store_url, keys)
        assert Counter(key for wins in won for key in wins) == Counter(keys)
        return won

    raced(attempt)


def test_a_single_use_transition_is_won_exactly_once_across_processes(
    store: Store, store_url: str
) -> None:
    def attempt(number: int) -> list[list[str]]:
        ids = [f"approval-{number}-{i}" for i in range(KEYS)]
        for i in ids:
            store.put("approval", i, {"tool": "merge"}, state="approved", ttl=60)
        won = race(workers.race_transitions, store_url, ids)
        assert Counter(i for wins in won for i in wins) == Counter(ids)
        return won

    raced(attempt)
    assert {r.state for r in store.list("approval")} == {"used"}


def test_take_is_won_exactly_once_across_processes(store: Store, store_url: str) -> None:
    def attempt(number: int) -> list[list[str]]:
        ids = [f"approval-{number}-{i}" for i in range(KEYS)]
        for i in ids:
            store.put("approval", i, {"tool": "merge"}, state="approved")
        won = race(workers.race_takes, store_url, ids)
        assert Counter(i for wins in won for i in wins) == Counter(ids)
        return won

    raced(attempt)
    assert store.list("approval") == ()


def test_a_mirror_sees_another_process_write_within_two_seconds(
    store: Store, store_url: str
) -> None:
    store.put("revocation", "old", {"subject": "a"}, state="on")
    mirror: Mirror[frozenset[str]] = Mirror(
        store, "revocation", lambda records: frozenset(r.id for r in records)
    )
    with mirror:
        assert mirror.get(max_staleness=2) == {"old"}
        for expected, action in (
            (
                {"old", "new"},
                lambda: _in_child(workers.write_record, store_url, "revocation", "new"),
            ),
            ({"new"}, lambda: store.delete("revocation", "old")),
        ):
            action()
            written = time.monotonic()
            while mirror.get(max_staleness=2) != expected:
                assert time.monotonic() - written < 2.0, "the mirror did not follow in 2 s"
                time.sleep(0.02)


def _in_child(target: Callable[..., None], *args: str) -> None:
    proc = CONTEXT.Process(target=target, args=args)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0


READ_ONLY_ROOT_CHILD = """
import os, sys
from authz_server.state import open_store, default_url
store = open_store()
assert store.claim("dpop", "jti", 60) and not store.claim("dpop", "jti", 60)
store.put("revocation", "r1", {"subject": "a"}, ttl=60)
assert store.take("revocation", "r1") is not None
assert store.health().ok, store.health()
try:
    open(os.path.join(os.path.dirname(os.path.dirname(default_url()[9:])), "x"), "w")
    print("ROOT WRITABLE")
except OSError:
    print("ROOT READ-ONLY")
"""


def test_sqlite_works_with_a_read_only_root_and_a_writable_state_directory(
    tmp_path: Path,
) -> None:
    """In a mount namespace whose root is remounted read-only, with only the state directory
    writable (what the Kubernetes Deployment does). Where user namespaces are not allowed, the
    same child runs without them; it then only shows that nothing is written outside."""
    state = tmp_path / "state"
    state.mkdir()
    env = {
        **os.environ,
        "AUTHZ_STATE_DIR": str(state),
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": str(tmp_path / "no-such-dir"),
    }
    child = [sys.executable, "-c", READ_ONLY_ROOT_CHILD]
    unshare = shutil.which("unshare")
    sandboxed = (
        unshare is not None
        and subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode == 0
    )
    if sandboxed:
        script = f'mount --bind "{state}" "{state}" && mount -o remount,bind,ro / && exec "$@"'
        child = [unshare, "-rm", "sh", "-c", script, "sh", *child]
    done = subprocess.run(child, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if sandboxed:
        assert "ROOT READ-ONLY" in done.stdout
    assert {p.name for p in state.iterdir()} <= {"state.db", "state.db-wal", "state.db-shm"}
    assert {p.name for p in tmp_path.iterdir()} == {"state"}


def test_mirror_keeps_records_objects(store: Store) -> None:
    record = store.put("revocation", "r", {"subject": "s"})
    with Mirror(store, "revocation") as mirror:
        assert mirror.get(max_staleness=2) == (record,)
        assert isinstance(mirror.get(max_staleness=2)[0], Record)
