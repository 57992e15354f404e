"""The server's decision path without the server, for ``authz-server check --policies`` and
``authz-server test``: decode, verify the caller, refuse before the policies or judge.

It follows :class:`~authz_server.pipeline.PolicyAuthorizer.check` stage for stage (the same
:class:`~authz_server.identity.stage.Authenticator`, the same refusal rule from
``identity.challenge``), so an offline answer is the one the server would give; what differs is
what a single process run needs: DPoP proofs are claimed in memory rather than in the state
store, and the clock may be pinned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from authz_server.cel.jwt import key_set_provider, serve_key_sets
from authz_server.decision import Decision
from authz_server.envoy.adapter import request_from_check
from authz_server.identity.challenge import refusal_for
from authz_server.identity.memory import MemoryClaim
from authz_server.identity.model import Identity
from authz_server.identity.stage import Authenticator
from authz_server.mcp import decode
from authz_server.mcp.message import Decoded
from authz_server.policy import render
from authz_server.policy.engine import Engine, EngineOptions
from authz_server.policy.model import PolicySet
from authz_server.request import Request


def decode_request(request: Request, decompress: bool = False) -> Decoded:
    """The request's body as the server's decoder reads it (default limits)."""
    return decode(
        request.body,
        request.headers,
        method=request.method,
        truncated=request.body_truncated,
        decompress=decompress,
    )


class DecisionPath:
    """The server's path after the gRPC layer, for one policy set: decode, verify the caller
    under the set's ``Authentication`` document, refuse before the policies where the server
    would (``identity.challenge``), else judge with the engine.

    DPoP proofs are claimed in memory, so a proof replayed while this lives is refused. ``clock``
    (Unix seconds) is the one token and proof times are checked against. It holds key stores
    whose ``uri`` sources fetch on threads: close it (or use it as a context manager).
    """

    def __init__(
        self,
        policies: PolicySet,
        options: EngineOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        decompress: bool = False,
    ) -> None:
        self.engine = Engine(policies, options)
        self._config = policies.authentication
        self._decompress = decompress
        self._authenticator = Authenticator(MemoryClaim(clock), clock=clock)
        # jwks.Fetch URLs are fetched as the server fetches them (waiting up to its ready
        # timeout), so an offline answer is the server's.
        self._authenticator.prepare(self._config, policies.fetch_urls)
        serve_key_sets(self._authenticator.fetched_document, self._authenticator.request_refetch)

    def decide(self, check_request: Any, identity: Identity | None = None) -> Decision:
        """Decide ``check_request``; ``identity``, when given, stands for what verification
        would have found (the credentials in the request are then not read)."""
        request = request_from_check(check_request)
        decoded = decode_request(request, self._decompress)
        if identity is None:
            identity = self._authenticator.verify(request, self._config)
        refused = refusal_for(identity, self._config, request)
        if refused is not None:
            return render.render_refusal(refused, decoded)
        return self.engine.check(request, decoded, identity)

    def close(self) -> None:
        if key_set_provider() == self._authenticator.fetched_document:
            serve_key_sets(None)
        self._authenticator.close()

    def __enter__(self) -> DecisionPath:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
