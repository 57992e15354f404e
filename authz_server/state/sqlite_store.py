"""The SQLite store: one file shared by every worker of one host.

WAL journal (readers never wait for the writer), ``synchronous=NORMAL`` (a commit survives a
process crash; a power loss may lose the last commits, the price of not syncing on every claim),
temporary tables in memory, and the URL's timeout as the busy timeout, so a lock held too long
fails with :class:`StoreUnavailable` instead of waiting. Only the database's directory is written
(the file and its ``-wal``/``-shm`` companions), which is what a container with a read-only root
and a writable state volume allows. Each thread has its own connection (sqlite3 connections are
not shared between threads) and a forked child opens its own.

Every read-modify-write is one statement or one ``BEGIN IMMEDIATE`` transaction, so it is atomic
across processes; each write to a kind bumps its row in ``versions``. Expired claims, counters and
records are deleted at most once per ``purge_interval`` seconds per process, so the file stays
bounded by what is live.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from authz_server.state.errors import StoreUnavailable
from authz_server.state.store import (
    Record,
    Store,
    check_key,
    check_name,
    check_state,
    check_ttl,
    decode_value,
    encode_value,
)
from authz_server.state.url import STATE_DIR_VARIABLE, StoreUrl

T = TypeVar("T")
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    namespace TEXT NOT NULL, key TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (namespace, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_expires ON claims (expires);
CREATE TABLE IF NOT EXISTS counters (
    namespace TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (namespace, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_expires ON counters (expires);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, value TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, expires REAL,
    PRIMARY KEY (kind, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expires ON records (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS versions (kind TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
"""
LIVE = "(expires IS NULL OR expires > ?)"
COLUMNS = "kind, id, state, value, created, updated, expires"
# A kind's version starts at the clock in microseconds rather than at 1, so a database file
# deleted and created again does not pass for unchanged to a mirror (same rule as Redis).
BUMP = (
    "INSERT INTO versions (kind, version) "
    "VALUES (?, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)) "
    "ON CONFLICT (kind) DO UPDATE SET version = version + 1"
)


class SqliteStore(Store):
    def __init__(self, url: StoreUrl, *, purge_interval: float = 10.0) -> None:
        assert url.path is not None
        self.url = url
        self.path = url.path
        self.purge_interval = purge_interval
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._abandoned: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._next_purge = 0.0

    # --- connections -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            return conn
        if self._pid != os.getpid():
            # A forked child must not use, nor close, the parent's connections: closing one would
            # drop this process's file locks on the database. They are kept, unused.
            with self._lock:
                self._abandoned.extend(self._connections)
                self._connections = []
                self._pid = os.getpid()
        conn = self._open()
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self._lock:
                self._create_file()
        except OSError as exc:
            raise StoreUnavailable(
                f"state store {self.url.display}: cannot create it ({exc.strerror}); "
                f"point --state or {STATE_DIR_VARIABLE} at a writable directory"
            ) from None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.url.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        try:
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA synchronous = NORMAL")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"state store {self.url.display} was written by a newer authz-server "
                    f"(schema {version}, this one knows {SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                with _transaction(conn):
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            conn.close()
            raise self._unavailable(exc) from None
        except StoreUnavailable:
            conn.close()
            raise
        return conn

    def _create_file(self) -> None:
        """Create the database file, owner-only (approvals hold call arguments; the -wal and
        -shm files SQLite adds take its permissions), but never open an existing one: POSIX
        locks belong to the process, and closing any descriptor of the file would drop those
        this process's open connections hold. Another process closing its connection would then
        take itself for the last one and delete the WAL under them, and they would never see a
        later write (sqlite.org/howtocorrupt.html, section 2.2). Called under ``_lock``."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        os.close(fd)  # a file this call created: no connection of this process holds it yet

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        reason = str(exc) or type(exc).__name__
        if "locked" in reason or "busy" in reason:
            reason = f"locked by another process for more than {self.url.timeout:g}s"
        return StoreUnavailable(f"state store {self.url.display}: {reason}")

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connection())
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def in_transaction(conn: sqlite3.Connection) -> T:
            with _transaction(conn):
                return work(conn)

        return self._run(in_transaction)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def ping(self) -> None:
        def check(conn: sqlite3.Connection) -> None:
            # Taking the write lock proves the file is writable and not locked for too long.
            with _transaction(conn):
                conn.execute("SELECT count(*) FROM versions").fetchone()

        self._run(check)
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            raise StoreUnavailable(f"state store {self.url.display}: not writable")

    # --- claims and counters ---------------------------------------------------------------

    def claim(self, namespace: str, key: str, ttl: float) -> bool:
        check_name("namespace", namespace)
        check_key("key", key)
        ttl = check_ttl(ttl)
        now = time.time()
        self._maybe_purge(now)
        rows = self._run(
            lambda conn: conn.execute(
                "INSERT INTO claims (namespace, key, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET expires = excluded.expires "
                "WHERE claims.expires <= ? RETURNING 1",
                (namespace, key, now + ttl, now),
            ).fetchall()
        )
        return bool(rows)

    def incr(self, namespace: str, key: str, ttl: float, amount: int = 1) -> int:
        check_name("namespace", namespace)
        check_key("key", key)
        ttl = check_ttl(ttl)
        now = time.time()
        self._maybe_purge(now)
        rows = self._run(
            lambda conn: conn.execute(
                "INSERT INTO counters (namespace, key, count, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET "
                "count = CASE WHEN expires <= ? THEN excluded.count "
                "ELSE count + excluded.count END, "
                "expires = CASE WHEN expires <= ? THEN excluded.expires ELSE expires END "
                "RETURNING count",
                (namespace, key, int(amount), now + ttl, now, now),
            ).fetchall()
        )
        return int(rows[0][0])

    def _maybe_purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval

        def purge(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM claims WHERE expires <= ?", (now,))
            conn.execute("DELETE FROM counters WHERE expires <= ?", (now,))
            conn.execute("DELETE FROM records WHERE expires <= ?", (now,))

        self._write(purge)

    # --- records ---------------------------------------------------------------------------

    def put(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        *,
        state: str = "",
        ttl: float | None = None,
    ) -> Record:
        record = self._write_record(kind, id, value, state, ttl, replace=True)
        assert record is not None
        return record

    def create(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        *,
        state: str = "",
        ttl: float | None = None,
    ) -> Record | None:
        return self._write_record(kind, id, value, state, ttl, replace=False)

    def _write_record(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        state: str,
        ttl: float | None,
        *,
        replace: bool,
    ) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        check_state(state)
        ttl = check_ttl(ttl, optional=True)
        text = encode_value(value)
        now = time.time()
        self._maybe_purge(now)
        expires = None if ttl is None else now + ttl
        conflict = "DO UPDATE SET state = excluded.state, value = excluded.value, " + (
            "created = excluded.created, updated = excluded.updated, expires = excluded.expires"
        )
        where = "" if replace else f" WHERE NOT {LIVE.replace('expires', 'records.expires')}"

        def write(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                f"INSERT INTO records ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (kind, id) {conflict}{where} RETURNING {COLUMNS}",
                (kind, id, state, text, now, now, expires) + (() if replace else (now,)),
            ).fetchall()
            if rows:
                conn.execute(BUMP, (kind,))
            return rows

        rows = self._write(write)
        return _record(rows[0]) if rows else None

    def get(self, kind: str, id: str) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {COLUMNS} FROM records WHERE kind = ? AND id = ? AND {LIVE}",
                (kind, id, time.time()),
            ).fetchall()
        )
        return _record(rows[0]) if rows else None

    def list(self, kind: str) -> tuple[Record, ...]:
        check_name("kind", kind)
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {COLUMNS} FROM records WHERE kind = ? AND {LIVE} ORDER BY created, id",
                (kind, time.time()),
            ).fetchall()
        )
        return tuple(_record(row) for row in rows)

    def delete(self, kind: str, id: str) -> bool:
        return self.take(kind, id) is not None

    def take(self, kind: str, id: str) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        now = time.time()

        def take(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                f"DELETE FROM records WHERE kind = ? AND id = ? RETURNING {COLUMNS}", (kind, id)
            ).fetchall()
            rows = [row for row in rows if row[6] is None or row[6] > now]
            if rows:
                conn.execute(BUMP, (kind,))
            return rows

        rows = self._write(take)
        return _record(rows[0]) if rows else None

    def transition(
        self, kind: str, id: str, expect: str, to: str, *, value: Mapping[str, Any] | None = None
    ) -> Record | None:
        check_name("kind", kind)
        check_key("id", id)
        check_state(expect)
        check_state(to)
        text = None if value is None else encode_value(value)
        now = time.time()

        def move(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                "UPDATE records SET state = ?, updated = ?, value = coalesce(?, value) "
                f"WHERE kind = ? AND id = ? AND state = ? AND {LIVE} RETURNING {COLUMNS}",
                (to, now, text, kind, id, expect, now),
            ).fetchall()
            if rows:
                conn.execute(BUMP, (kind,))
            return rows

        rows = self._write(move)
        return _record(rows[0]) if rows else None

    def version(self, kind: str) -> int:
        check_name("kind", kind)
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT version FROM versions WHERE kind = ?", (kind,)
            ).fetchall()
        )
        return int(rows[0][0]) if rows else 0


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _record(row: tuple[Any, ...]) -> Record:
    kind, id, state, value, created, updated, expires = row
    return Record(kind, id, state, decode_value(value), created, updated, expires)
