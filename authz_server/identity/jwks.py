"""JWK sets, fetched in the background and never on the request path.

Each issuer's keys live in an immutable :class:`KeySet` that a background thread replaces on the
configured refresh interval; the request path only reads the current one. Rules, from
identity.md §2 (and the failures of the clients it surveys):

- A failed fetch keeps the last good keys (PyJWT's ``PyJWKClient`` wipes them, so it is not used).
- An unknown ``kid`` may ask for one early refetch per issuer per :data:`REFETCH_INTERVAL`
  seconds; the request that asked is refused (``unknown_key``) rather than made to wait, and the
  next one finds the new key. Scheduled refreshes do not restart that interval, so a key rotated
  just after a refresh is still picked up at once.
- Keys that never arrived leave that issuer unready (``keys_unavailable``); other issuers work.
- ``uri`` is https, or plain http to a loopback host; redirects are not followed; the document is
  capped at :data:`MAX_DOCUMENT` bytes. ``file`` is re-read on the same schedule (a mounted
  ConfigMap changes under a running pod); ``inline`` is parsed once.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from authz_server.identity.config import AuthenticationConfig, JwksSource
from authz_server.identity.errors import InvalidKey, JwksFetchError
from authz_server.identity.jws import JwsFormatError, json_object
from authz_server.identity.keys import VerificationKey, parse_key_set

log = logging.getLogger(__name__)

REFETCH_INTERVAL = 30.0
MAX_DOCUMENT = 1 << 20
FETCH_TIMEOUT = 5.0
# After a failed fetch, retry sooner than the refresh interval: 1 s, doubling up to this.
MAX_RETRY = 60.0


class JwksObserver(Protocol):
    """Metrics hooks. ``source`` is an issuer from the configuration (a bounded label)."""

    def fetched(self, source: str, ok: bool) -> None:
        """A fetch of ``source`` ended; ``ok`` is False when it failed (old keys kept)."""

    def key_count(self, source: str, count: int) -> None:
        """``source`` now serves ``count`` keys."""


class _NoObserver:
    def fetched(self, source: str, ok: bool) -> None:
        pass

    def key_count(self, source: str, count: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class KeySet:
    """One issuer's keys as of one successful fetch. ``document`` is the JWK set as published
    (what ``jwks.Fetch(url)`` hands to a policy); ``fetched_at`` is on the store's clock."""

    keys: Mapping[str, VerificationKey]
    document: Mapping[str, Any]
    fetched_at: float


def _no_redirects() -> urllib.request.OpenerDirector:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect)


_OPENER = _no_redirects()


def read_source(source: JwksSource, timeout: float = FETCH_TIMEOUT) -> bytes:
    """The bytes of a ``uri`` or ``file`` source. Blocking: call it off the request path."""
    if source.file:
        try:
            with Path(source.file).open("rb") as f:
                data = f.read(MAX_DOCUMENT + 1)
        except OSError as exc:
            raise JwksFetchError(f"cannot read {source.file}: {exc.strerror}") from None
    else:
        request = urllib.request.Request(source.uri, headers={"Accept": "application/json"})
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                if response.status != 200:
                    raise JwksFetchError(f"HTTP status {response.status}")
                data = response.read(MAX_DOCUMENT + 1)
        except urllib.error.HTTPError as exc:
            raise JwksFetchError(f"HTTP status {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JwksFetchError(f"fetch failed: {type(reason).__name__}") from None
    if len(data) > MAX_DOCUMENT:
        raise JwksFetchError(f"document larger than {MAX_DOCUMENT} bytes")
    return data


def load_key_set(data: bytes | Mapping[str, Any], fetched_at: float) -> KeySet:
    """Parse a JWK set; raises :class:`JwksFetchError` when it holds no usable key (the last
    good set then stays in use)."""
    try:
        document = json_object(data) if isinstance(data, bytes) else dict(data)
        keys, refused = parse_key_set(document)
    except (JwsFormatError, InvalidKey) as exc:
        raise JwksFetchError(f"not a JWK set: {exc}") from None
    if refused:
        log.warning("JWK set: %d key(s) refused: %s", len(refused), refused[0][1])
    if not keys:
        raise JwksFetchError("the JWK set holds no usable signing key")
    return KeySet(MappingProxyType(keys), MappingProxyType(document), fetched_at)


@dataclass
class _Source:
    name: str
    spec: JwksSource
    current: KeySet | None = None
    generation: int = 0
    last_early: float | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class KeyStore:
    """The key cache of every configured issuer (and any other named JWK set source).

    Reads (:meth:`key_set`) cost one dict lookup. :meth:`start` starts one daemon thread per
    fetched source; call it in the process that verifies (after a fork). ``clock`` (monotonic
    seconds) drives the early-refetch rate limit and ``KeySet.fetched_at``; ``reader`` replaces
    :func:`read_source` in tests.
    """

    def __init__(
        self,
        sources: Mapping[str, JwksSource],
        *,
        observer: JwksObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        reader: Callable[[JwksSource], bytes] = read_source,
        refetch_interval: float = REFETCH_INTERVAL,
    ) -> None:
        self._observer = observer or _NoObserver()
        self._clock = clock
        self._reader = reader
        self._refetch_interval = refetch_interval
        self._sources = {name: _Source(name, spec) for name, spec in sources.items()}
        self._changed = threading.Condition()
        self._closed = threading.Event()
        for source in self._sources.values():
            if source.spec.inline is not None:
                self._install(source, load_key_set(source.spec.inline, clock()))

    @classmethod
    def from_config(cls, config: AuthenticationConfig, **kwargs: Any) -> KeyStore:
        return cls({name: issuer.jwks for name, issuer in config.issuers.items()}, **kwargs)

    # -- the request path ------------------------------------------------------------------

    def key_set(self, source: str) -> KeySet | None:
        """The current keys of ``source``; None when none ever arrived."""
        entry = self._sources.get(source)
        return entry.current if entry is not None else None

    def request_refetch(self, source: str) -> bool:
        """Ask for an early refetch of ``source`` (an unknown ``kid`` was seen). Never waits;
        returns False when the rate limit (one per interval per source) or the source kind
        (inline) refuses it."""
        entry = self._sources.get(source)
        if entry is None or entry.spec.inline is not None:
            return False
        now = self._clock()
        with self._changed:
            if entry.last_early is not None and now - entry.last_early < self._refetch_interval:
                return False
            entry.last_early = now
        entry.wake.set()
        return True

    # -- readiness and tests ---------------------------------------------------------------

    def unready(self) -> tuple[str, ...]:
        """Sources whose keys never arrived, sorted (for ``/readyz``)."""
        return tuple(sorted(name for name, s in self._sources.items() if s.current is None))

    def generation(self, source: str) -> int:
        """How many fetches of ``source`` ended, successful or not."""
        return self._sources[source].generation

    def wait_for_fetch(self, source: str, after: int, timeout: float) -> bool:
        """Wait until a fetch of ``source`` ends after generation ``after``."""
        entry = self._sources[source]
        with self._changed:
            return self._changed.wait_for(lambda: entry.generation > after, timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every source has keys (or ``timeout`` seconds pass)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self.unready(), timeout)

    # -- the background side ---------------------------------------------------------------

    def start(self) -> None:
        """Start fetching (first fetch at once). Idempotent."""
        for source in self._sources.values():
            if source.spec.inline is None and source.thread is None:
                source.thread = threading.Thread(
                    target=self._run, args=(source,), name=f"jwks:{source.name}", daemon=True
                )
                source.thread.start()

    def close(self, timeout: float = 1.0) -> None:
        self._closed.set()
        for source in self._sources.values():
            source.wake.set()
        for source in self._sources.values():
            if source.thread is not None:
                source.thread.join(timeout)

    def refresh(self, source: str) -> bool:
        """Fetch ``source`` now, on the calling thread; True on success."""
        entry = self._sources[source]
        try:
            key_set = load_key_set(self._reader(entry.spec), self._clock())
        except JwksFetchError as exc:
            log.warning("JWK set of %s: %s (keeping the last good keys)", entry.name, exc)
            self._observer.fetched(entry.name, False)
            self._bump(entry)
            return False
        except Exception:
            log.exception("JWK set of %s: unexpected error (keeping the old keys)", entry.name)
            self._observer.fetched(entry.name, False)
            self._bump(entry)
            return False
        self._observer.fetched(entry.name, True)
        self._install(entry, key_set)
        return True

    def _install(self, entry: _Source, key_set: KeySet) -> None:
        entry.current = key_set
        self._observer.key_count(entry.name, len(key_set.keys))
        self._bump(entry)

    def _bump(self, entry: _Source) -> None:
        with self._changed:
            entry.generation += 1
            self._changed.notify_all()

    def _run(self, entry: _Source) -> None:
        retry = 1.0
        while not self._closed.is_set():
            ok = self.refresh(entry.name)
            delay = entry.spec.refresh if ok else min(retry, entry.spec.refresh, MAX_RETRY)
            retry = 1.0 if ok else retry * 2
            entry.wake.wait(delay)
            entry.wake.clear()
