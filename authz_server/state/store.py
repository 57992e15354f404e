"""The store interface every later feature builds on, and the values it returns.

Primitives only; what they mean belongs to the callers:

- :meth:`Store.claim`: atomic claim-once with expiry (a DPoP proof's ``jti``);
- :meth:`Store.incr`: counters in a fixed window that starts at the first increment;
- records: JSON values of a *kind* (``revocation``, ``approval`` ...) with an id, a short
  ``state`` string and an optional expiry; :meth:`Store.transition` changes the state only from an
  expected one and :meth:`Store.take` removes a record, each atomically, so exactly one of many
  concurrent callers on any worker or replica wins (an approval used once);
- :meth:`Store.version`: a number that changes on every write to a kind, cheap to poll
  (:class:`~authz_server.state.mirror.Mirror` keeps a local snapshot with it).

Every method raises :class:`StoreUnavailable` when the store cannot answer within the URL's
``timeout``, never a driver's own exception.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from authz_server.state.errors import StoreUnavailable, StoreValueError
from authz_server.state.url import StoreUrl

NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
STATE = re.compile(r"[a-z0-9_.-]{0,64}")
MAX_KEY_LENGTH = 512
MAX_TTL = 10 * 365 * 86400.0


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a kind. ``value`` is deeply immutable (mappings are read-only views, lists
    are tuples) because a mirror shares one snapshot among all request threads; :meth:`plain`
    gives the JSON-ready copy. Times are seconds since the epoch."""

    kind: str
    id: str
    state: str
    value: Mapping[str, Any]
    created: float
    updated: float
    expires: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def plain(self) -> dict[str, Any]:
        """The value as plain dicts and lists."""
        return json.loads(encode_value(self.value))


@dataclass(frozen=True, slots=True)
class Health:
    """The answer for ``/readyz``: ``detail`` names the store (without password) and the cause."""

    ok: bool
    backend: str
    detail: str


class Store(ABC):
    """A state store; open one with :func:`~authz_server.state.open_store`.

    Thread-safe; a process opens one store and shares it. Nothing is connected until the first
    operation, so a server starts (unready) while its store is down.
    """

    url: StoreUrl

    @property
    def backend(self) -> str:
        return "redis" if self.url.scheme.startswith("redis") else "sqlite"

    @abstractmethod
    def claim(self, namespace: str, key: str, ttl: float) -> bool:
        """True for the first caller to claim ``key`` (on every worker and replica sharing the
        store) until ``ttl`` seconds have passed; False while the claim lasts."""

    @abstractmethod
    def incr(self, namespace: str, key: str, ttl: float, amount: int = 1) -> int:
        """Add ``amount`` and return the new count. The window starts with the first increment
        and ends ``ttl`` seconds later; later increments do not extend it."""

    @abstractmethod
    def put(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        *,
        state: str = "",
        ttl: float | None = None,
    ) -> Record:
        """Create or replace a record (``created`` restarts). ``ttl`` None: until deleted."""

    @abstractmethod
    def create(
        self,
        kind: str,
        id: str,
        value: Mapping[str, Any],
        *,
        state: str = "",
        ttl: float | None = None,
    ) -> Record | None:
        """Like :meth:`put`, but only when no live record has this id; None when one has."""

    @abstractmethod
    def get(self, kind: str, id: str) -> Record | None:
        """The live record, or None (absent or expired)."""

    @abstractmethod
    def delete(self, kind: str, id: str) -> bool:
        """Remove a record; True when there was a live one."""

    @abstractmethod
    def list(self, kind: str) -> tuple[Record, ...]:
        """Every live record of a kind, oldest first (by ``created``, then id)."""

    @abstractmethod
    def transition(
        self, kind: str, id: str, expect: str, to: str, *, value: Mapping[str, Any] | None = None
    ) -> Record | None:
        """Atomically move a live record from state ``expect`` to ``to`` (replacing its value
        when given); the updated record, or None when it is absent, expired or in another state.
        Of many concurrent callers with the same ``expect``, exactly one gets the record."""

    @abstractmethod
    def take(self, kind: str, id: str) -> Record | None:
        """Atomically remove and return a live record; of concurrent callers, one gets it."""

    @abstractmethod
    def version(self, kind: str) -> int:
        """A number that changes with every write to ``kind`` (put, create, delete, transition,
        take) by any process. Expiry alone does not change it; a reset store may restart it, so
        compare for inequality."""

    @abstractmethod
    def ping(self) -> None:
        """Return when the store answers and accepts writes; raise StoreUnavailable otherwise."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store reconnects if used again."""

    def health(self) -> Health:
        try:
            self.ping()
        except StoreUnavailable as exc:
            return Health(False, self.backend, str(exc))
        return Health(True, self.backend, self.url.display)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.display!r})"


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise StoreValueError(f"{what} must be 1-64 of a-z 0-9 _ . - starting with a letter")
    return name


def check_key(what: str, key: str) -> str:
    # Keys may be attacker-chosen (a proof's jti): bounded, and never quoted back.
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise StoreValueError(f"{what} must be a non-empty string of at most {MAX_KEY_LENGTH}")
    if "\x00" in key:
        raise StoreValueError(f"{what} must not contain NUL")
    return key


def check_state(state: str) -> str:
    if not isinstance(state, str) or not STATE.fullmatch(state):
        raise StoreValueError("state must be at most 64 of a-z 0-9 _ . -")
    return state


def check_ttl(ttl: float | None, *, optional: bool = False) -> float | None:
    if ttl is None and optional:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_TTL
    ):
        raise StoreValueError(f"ttl must be a number of seconds above 0 and at most {MAX_TTL:.0f}")
    return float(ttl)


def _plain(obj: object) -> object:
    if isinstance(obj, MappingProxyType):
        return dict(obj)
    raise TypeError


def encode_value(value: Mapping[str, Any]) -> str:
    """Compact JSON of a record value; refuses what JSON cannot carry (NaN, sets, objects)."""
    if not isinstance(value, Mapping):
        raise StoreValueError("a record value must be a mapping")
    try:
        return json.dumps(
            value, default=_plain, allow_nan=False, separators=(",", ":"), ensure_ascii=False
        )
    except (TypeError, ValueError, RecursionError):
        raise StoreValueError(
            "a record value must be JSON (strings, numbers, lists, maps)"
        ) from None


def freeze(value: Any) -> Any:
    """A read-only copy of decoded JSON."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def decode_value(text: str) -> Mapping[str, Any]:
    try:
        return freeze(json.loads(text))
    except ValueError:
        # Only the store writes these rows: a broken one means a damaged store.
        raise StoreUnavailable("the state store holds a record that is not JSON") from None
