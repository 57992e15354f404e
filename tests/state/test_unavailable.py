"""A store that cannot answer raises StoreUnavailable (never a driver's exception), within its
timeout (never a hang), and says so in ``health()``; a mirror then goes stale and recovers."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_server.state import Mirror, MirrorStale, Store, StoreUnavailable, open_store

from .redis_server import PASSWORD, RedisServer, start_redis

OPERATIONS: list[tuple[str, Callable[[Store], Any]]] = [
    ("ping", lambda s: s.ping()),
    ("claim", lambda s: s.claim("dpop", "jti", 60)),
    ("incr", lambda s: s.incr("rate", "agent", 60)),
    ("put", lambda s: s.put("approval", "a", {"x": 1})),
    ("create", lambda s: s.create("approval", "b", {"x": 1})),
    ("get", lambda s: s.get("approval", "a")),
    ("list", lambda s: s.list("approval")),
    ("transition", lambda s: s.transition("approval", "a", "", "used")),
    ("take", lambda s: s.take("approval", "a")),
    ("delete", lambda s: s.delete("approval", "a")),
    ("version", lambda s: s.version("approval")),
]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def assert_unavailable(store: Store, within: float, *, mentions: str = "") -> None:
    for name, operation in OPERATIONS:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            operation(store)
        assert time.monotonic() - started < within, f"{name} waited too long"
        assert PASSWORD not in str(caught.value)
        assert mentions in str(caught.value)
    health = store.health()
    assert not health.ok and PASSWORD not in health.detail


def test_redis_stopped_mid_test(own_redis: RedisServer) -> None:
    with open_store(own_redis.url()) as store:
        assert store.claim("dpop", "jti", 60)
        own_redis.stop()
        assert_unavailable(store, within=2, mentions=f"127.0.0.1:{own_redis.port}")


def test_a_frozen_redis_times_out_instead_of_hanging(own_redis: RedisServer) -> None:
    with open_store(own_redis.url(timeout=0.1)) as store:
        store.ping()
        own_redis.pause()
        try:
            assert_unavailable(store, within=2, mentions="no answer within 0.1s")
        finally:
            own_redis.resume()
        store.ping()  # and it recovers


def test_a_wrong_redis_password_is_unavailable_without_echoing_it(
    redis_server: RedisServer,
) -> None:
    wrong = "wrong-password-not-to-be-shown"
    with (
        open_store(redis_server.url(password=wrong)) as store,
        pytest.raises(StoreUnavailable) as caught,
    ):
        store.claim("dpop", "jti", 60)
    assert wrong not in str(caught.value) and "***" in str(caught.value)


def test_sqlite_in_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with open_store(f"sqlite://{blocker}/state/state.db") as store:
        assert_unavailable(store, within=2, mentions="AUTHZ_STATE_DIR")


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not an sqlite file" * 100)
    with open_store(f"sqlite://{tmp_path / 'state.db'}") as store:
        assert_unavailable(store, within=2)


def test_sqlite_locked_longer_than_the_timeout(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}?timeout=0.2"
    with open_store(url) as store:
        store.ping()
        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked by another process for more"):
                store.claim("dpop", "jti", 60)
            assert time.monotonic() - started < 2
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.claim("dpop", "jti", 60)


def test_a_mirror_goes_stale_when_redis_stops_and_recovers_when_it_returns(
    own_redis: RedisServer,
) -> None:
    with open_store(own_redis.url(timeout=0.2)) as store:
        store.put("revocation", "r1", {"subject": "a"})
        with Mirror(store, "revocation", lambda rs: {r.id for r in rs}, interval=0.05) as mirror:
            assert mirror.get(max_staleness=1) == {"r1"}
            own_redis.stop()
            deadline = time.monotonic() + 5
            while mirror.staleness < 0.5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with pytest.raises(MirrorStale, match="not refreshed for"):
                mirror.get(max_staleness=0.5)
            assert mirror.snapshot is not None  # kept, but not served past the bound
            # The same port, a fresh empty server: its versions restart at 0.
            own_redis.start()
            deadline = time.monotonic() + 5
            while True:
                try:
                    if mirror.get(max_staleness=0.5) == set():
                        break
                except MirrorStale:
                    pass
                assert time.monotonic() < deadline, "the mirror did not recover"
                time.sleep(0.05)
