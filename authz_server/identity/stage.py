"""The identity stage as the server runs it: one :class:`Verifier` for the policy set in force.

A policy set carries its ``Authentication`` document; this keeps the verifier (with its token
cache) and the key store (with its fetch threads) that serve it, and replaces both only when a
reload brings a *different* document: an unchanged one keeps its cached tokens and keys. The
replacement is prepared on the reload thread before the new set goes live (:meth:`prepare`), so a
request never starts a fetch or waits for one. The same key store serves ``jwks.Fetch(url)`` for
the URLs the policies name, under the name ``jwks.Fetch <url>``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from authz_server.identity.config import AuthenticationConfig, JwksSource
from authz_server.identity.dpop import Claim
from authz_server.identity.jwks import JwksObserver, KeySet, KeyStore
from authz_server.identity.model import Identity
from authz_server.identity.verifier import Verifier
from authz_server.request import Request

log = logging.getLogger(__name__)

NO_AUTHENTICATION = AuthenticationConfig()
FETCH_PREFIX = "jwks.Fetch "
# How long a reload waits for a new document's keys before the set goes live anyway (their
# issuers then answer keys_unavailable and /readyz names them until the keys arrive).
READY_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class _Prepared:
    config: AuthenticationConfig
    urls: frozenset[str]
    keys: KeyStore
    verifier: Verifier


class Authenticator:
    """Verifies requests under whichever ``Authentication`` document the live set holds.

    ``claim`` is the state store's single-use claim (DPoP replay); ``observer`` receives the key
    stores' fetch results; ``clock`` gives Unix seconds to the verifiers.
    """

    def __init__(
        self,
        claim: Claim | None,
        *,
        observer: JwksObserver | None = None,
        clock: Callable[[], float] = time.time,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self._claim = claim
        self._observer = observer
        self._clock = clock
        self._ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._current = self._build(NO_AUTHENTICATION, frozenset())

    def prepare(self, config: AuthenticationConfig | None, fetch_urls: Iterable[str] = ()) -> None:
        """Make ``config`` (None: no document) the one :meth:`verify` serves; blocks up to the
        ready timeout for new keys. Call it before the set that holds ``config`` goes live."""
        self._switch(config or NO_AUTHENTICATION, frozenset(fetch_urls), wait=True)

    def verify(
        self, request: Request, config: AuthenticationConfig | None, *, claim: bool = True
    ) -> Identity:
        """The caller's identity under ``config`` (the live set's document); never raises.
        ``claim=False``: see :meth:`Verifier.verify`."""
        current = self._current
        if current.config is not (config or NO_AUTHENTICATION):
            # A set that was not prepared (tests, or a race with a reload): switch now, without
            # waiting for keys.
            current = self._switch(config or NO_AUTHENTICATION, current.urls, wait=False)
        return current.verifier.verify(request, claim=claim)

    def key_set(self, url: str) -> KeySet | None:
        """The keys fetched for ``jwks.Fetch(url)``; None when they have not arrived."""
        return self._current.keys.key_set(FETCH_PREFIX + url)

    def request_refetch(self, url: str) -> bool:
        """Ask for an early fetch of ``jwks.Fetch(url)``'s keys (a token named a ``kid`` they
        lack); never waits, and the key store's rate limit applies."""
        return self._current.keys.request_refetch(FETCH_PREFIX + url)

    def fetched_document(self, url: str) -> Mapping[str, Any] | None:
        """What ``jwks.Fetch(url)`` reads: the JWK set as last fetched, None before it
        arrives."""
        key_set = self.key_set(url)
        return None if key_set is None else key_set.document

    def unready(self) -> tuple[str, ...]:
        """Issuers (and ``jwks.Fetch`` URLs) whose keys never arrived, for ``/readyz``."""
        return self._current.keys.unready()

    def close(self) -> None:
        with self._lock:
            self._current.keys.close()

    def _switch(
        self, config: AuthenticationConfig, urls: frozenset[str], *, wait: bool
    ) -> _Prepared:
        with self._lock:
            current = self._current
            if current.config == config and current.urls == urls:
                # The same document reloaded: keep the keys and the token cache.
                self._current = _Prepared(config, urls, current.keys, current.verifier)
                return self._current
            prepared = self._build(config, urls)
            prepared.keys.start()
        if wait and not prepared.keys.wait_ready(self._ready_timeout):
            log.warning(
                "keys not yet available for %s; their tokens are refused (keys_unavailable) "
                "until they arrive",
                ", ".join(prepared.keys.unready()),
            )
        with self._lock:
            old, self._current = self._current, prepared
        if old is not prepared:
            old.keys.close(timeout=0)
        return prepared

    def _build(self, config: AuthenticationConfig, urls: frozenset[str]) -> _Prepared:
        sources = {name: issuer.jwks for name, issuer in config.issuers.items()}
        sources.update({FETCH_PREFIX + url: JwksSource(uri=url) for url in urls})
        keys = KeyStore(sources, observer=self._observer)
        return _Prepared(config, urls, keys, Verifier(config, keys, self._claim, clock=self._clock))
