"""The HTTP authorizer in the serving process: its listener, fed to the same dispatcher as gRPC's
checks.

An HTTP check is decided the way the gRPC ones are (:meth:`Dispatcher.run`: on the decision
thread, in turn with them, or with ``--dispatch inline`` on the waiting thread itself); the
listener's coroutine waits for it on a small pool of threads, never deciding on the event loop.
Whatever raises, the request still gets a decision with an id, a metric and an audit line (the
authorizer's ``internal_error``), and a last-resort 500 if even that fails.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from typing import Any

from authz_server.authorizer import Authorizer
from authz_server.httpauthz import (
    HttpAuthzListener,
    HttpReply,
    HttpRequest,
    reply_from_decision,
    request_from_http,
)
from authz_server.request import HTTP, Request
from authz_server.serve.serial import Dispatcher

log = logging.getLogger(__name__)

# Threads that wait for decisions (or make them, with --dispatch inline).
WAITING_THREADS = 8
# A nested request's head, beyond the body limit.
NESTED_HEAD = 64 * 1024
_LAST_RESORT = HttpReply(500, (("content-type", "text/plain; charset=utf-8"),), b"internal error\n")


class HttpAuthzService:
    def __init__(
        self, authorizer: Authorizer, decider: Dispatcher[Any, Any], *, nested: bool, max_body: int
    ) -> None:
        """``decider`` is the gRPC service's :class:`~authz_server.serve.serial.Dispatcher`."""
        self._authorizer = authorizer
        self._decider = decider
        self._nested = nested
        self._pool = futures.ThreadPoolExecutor(WAITING_THREADS, thread_name_prefix="http-authz")
        self.listener = HttpAuthzListener(
            self._handle, max_body=max_body + (NESTED_HEAD if nested else 0)
        )

    async def _handle(self, incoming: HttpRequest) -> HttpReply:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._decider.run, self._respond, incoming, _LAST_RESORT
        )

    def _respond(self, incoming: HttpRequest) -> HttpReply:
        """Adapt, decide, adapt back (through the dispatcher)."""
        try:
            request = request_from_http(incoming, nested=self._nested)
        except Exception as exc:
            # Not readable (a nested request that is not one): recorded as a check the
            # transport could not read.
            path = incoming.target.partition("?")[0]  # a query may carry a token
            seen = Request(method=incoming.method, path=path, transport=HTTP)
            decision = self._authorizer.internal_error(exc, seen)
        else:
            try:
                decision = self._authorizer.check(request)
            except Exception as exc:
                decision = self._authorizer.internal_error(exc, request)
        try:
            return reply_from_decision(decision)
        except Exception as exc:
            log.error("the HTTP authorizer could not encode a decision: %s", type(exc).__name__)
            return _LAST_RESORT

    async def close(self, grace: float) -> None:
        await self.listener.close(grace)
        self._pool.shutdown(wait=False, cancel_futures=True)
