"""Look inside a store's backend (the SQLite file, the Redis keyspace) to show it stays bounded."""

from __future__ import annotations

import sqlite3

import redis

from authz_server.state import Store
from authz_server.state.sqlite_store import SqliteStore


def stored_rows(store: Store) -> int:
    """Rows (SQLite) or keys and dangling index entries (Redis) the store holds, live or not."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            return sum(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("claims", "counters", "records")
            )
    url = store.url
    client = redis.Redis(host=url.host, port=url.port, password=url.password, decode_responses=True)
    try:
        prefix = store.url.prefix
        rows = 0
        for key in client.scan_iter(f"{prefix}*"):
            if key.startswith(f"{prefix}idx:"):  # index entries whose record is gone
                kind = key.removeprefix(f"{prefix}idx:")
                ids = client.smembers(key)
                rows += sum(not client.exists(f"{prefix}rec:{kind}:{i}") for i in ids)
            elif not key.startswith(f"{prefix}ver:"):
                rows += client.exists(key)
        return rows
    finally:
        client.close()
