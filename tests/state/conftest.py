"""Stores for the state tests: every test that takes ``store_url`` runs on SQLite and on a real
Redis. One ``redis-server`` serves the session; each test gets its own key prefix, so tests
never see each other's keys. Tests that stop or freeze Redis start their own server."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz_server.state import Store, open_store

from .redis_server import RedisServer, start_redis

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., str]:
    """URLs of one fresh store for this test (the same store for every call)."""
    if backend == "sqlite":
        return lambda timeout=1.0: f"sqlite://{tmp_path / 'state.db'}?timeout={timeout:g}"
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"t{next(_prefixes)}:"
    return lambda timeout=1.0: server.url(prefix, timeout=timeout)


@pytest.fixture
def store_url(make_url: Callable[..., str]) -> str:
    return make_url()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()
