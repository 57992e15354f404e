"""A single-use claim held in memory, for the offline runs (``authz-server test``, ``check
--policies``).

The server claims a DPoP proof's replay key in the shared state store; an offline run has no
store, yet a proof replayed within it must be refused as the server would refuse it
(``dpop_replayed``), or a test would pass that the server fails. The claims live as long as the
run: this is no replacement for the state store across processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class MemoryClaim:
    """``claim(key, ttl_seconds) -> bool`` (the shape of :data:`~authz_server.identity.Claim`):
    True the first time ``key`` is claimed, False while an earlier claim of it lasts. ``clock``
    gives Unix seconds (the run's clock, so a pinned clock keeps every claim alive)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}

    def __call__(self, key: str, ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            until = self._until.get(key)
            if until is not None and until > now:
                return False
            self._until[key] = now + ttl
            return True
