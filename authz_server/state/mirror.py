"""A local, immutable copy of one kind of records, kept fresh by a background thread.

Checks that run on every request (is this agent revoked?) must not cost a store round trip. A
:class:`Mirror` polls the kind's :meth:`~Store.version` every ``interval`` seconds (a single-row
read), re-lists the kind only when the version moved, and publishes a new :class:`Snapshot` by
swapping one reference; a request reads :meth:`Mirror.get` without any lock or I/O.

``build`` turns the live records into whatever the caller matches against (an index by subject,
say), once per change instead of once per request. Records that expire are dropped from the
snapshot at the next poll after their expiry, without waiting for a write.

The mirror never pretends to be fresh: :attr:`Mirror.staleness` is the time since the store last
answered a poll, and :meth:`Mirror.get` raises :class:`MirrorStale` (a :class:`StoreUnavailable`)
past the caller's bound, so a check that could match fails closed instead of trusting old data.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from authz_server.state.errors import StoreUnavailable, StoreValueError
from authz_server.state.store import Record, Store, check_name

log = logging.getLogger(__name__)

T = TypeVar("T")


class MirrorStale(StoreUnavailable):
    """The mirror has not been refreshed within the caller's bound."""


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """The kind as of ``version``: its live records and what ``build`` made of them."""

    version: int
    records: tuple[Record, ...]
    value: T


def _records(records: tuple[Record, ...]) -> tuple[Record, ...]:
    return records


class Mirror(Generic[T]):
    """Keeps :class:`Snapshot` of one kind current; :meth:`start` it, :meth:`stop` it."""

    def __init__(
        self,
        store: Store,
        kind: str,
        build: Callable[[tuple[Record, ...]], T] = _records,  # type: ignore[assignment]
        *,
        interval: float = 0.5,
    ) -> None:
        if not 0 < interval <= 1.0:
            raise StoreValueError("a mirror polls at least once a second")
        self._store = store
        self._kind = check_name("kind", kind)
        self._build = build
        self._interval = interval
        self._snapshot: Snapshot[T] | None = None
        self._all: tuple[Record, ...] = ()
        self._next_expiry = math.inf
        self._checked = -math.inf
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def staleness(self) -> float:
        """Seconds since the store last answered a poll (infinite before the first answer)."""
        return time.monotonic() - self._checked

    @property
    def snapshot(self) -> Snapshot[T] | None:
        """The latest snapshot however old, None before the first successful load."""
        return self._snapshot

    def get(self, max_staleness: float) -> T:
        """The current value; :class:`MirrorStale` when the store has not answered for longer
        than ``max_staleness`` seconds (or never did)."""
        snapshot = self._snapshot
        staleness = self.staleness
        if snapshot is None or staleness > max_staleness:
            age = "never loaded" if snapshot is None else f"not refreshed for {staleness:.1f}s"
            raise MirrorStale(f"state mirror of {self._kind!r} is {age}")
        return snapshot.value

    def refresh(self) -> bool:
        """Poll once; True when a new snapshot was published. Raises :class:`StoreUnavailable`
        (and keeps the old snapshot) when the store does not answer."""
        # The version is read before the records: a write in between is seen again next poll.
        version = self._store.version(self._kind)
        now = time.time()
        current = self._snapshot
        if current is None or version != current.version:
            self._all = self._store.list(self._kind)
        elif now < self._next_expiry:
            self._checked = time.monotonic()
            return False
        live = tuple(r for r in self._all if not r.expired(now))
        self._snapshot = Snapshot(version, live, self._build(live))
        self._next_expiry = min(
            (r.expires for r in live if r.expires is not None), default=math.inf
        )
        self._checked = time.monotonic()
        return True

    def start(self) -> Mirror[T]:
        """Load once (a store that is down is retried by the thread) and start polling."""
        if self._thread is not None:
            return self
        self._poll()
        self._thread = threading.Thread(
            target=self._run, name=f"state-mirror-{self._kind}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        try:
            self.refresh()
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("state mirror of %r cannot refresh: %s", self._kind, exc)
            self._failing = True
            return
        except Exception:
            # A failing build keeps the last snapshot, which then goes stale: fail closed.
            if not self._failing:
                log.exception("state mirror of %r: building the snapshot failed", self._kind)
            self._failing = True
            return
        if self._failing:
            log.info("state mirror of %r refreshed again", self._kind)
        self._failing = False

    def __enter__(self) -> Mirror[T]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
