"""Stores for the oversight tests: each test that takes ``store_url`` runs on a SQLite file and on
a real ``redis-server`` (one per session, a fresh key prefix per test)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_server.state import Store, open_store
from tests.state.redis_server import RedisServer, start_redis

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, for tests that stop or freeze it."""
    server = start_redis()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # Twenty threads in two processes queue for SQLite's write lock: on a busy machine a
        # wait can pass the default 1 s, which would be a timeout, not a wrong answer.
        return f"sqlite://{tmp_path / 'state.db'}?timeout=5"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url(f"o{next(_prefixes)}:")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()
