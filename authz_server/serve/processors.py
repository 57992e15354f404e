"""The response hooks on the gRPC port: Envoy's ExternalProcessor/Process and agentgateway's
ExtMcp, beside Check.

Both decide through the dispatcher that serves Check (``Dispatcher.run``: on the decision thread,
or in place with ``--dispatch inline``), so a request judged through ext_proc or ExtMcp is
decided exactly as a Check. The network side stays on grpcio's pool threads.

An ext_proc stream lasts as long as its HTTP exchange (until the upstream's response headers,
or the end of a list response) and holds a pool thread all that time: the pool gets one thread
per allowed stream on top of those that serve Check, and a stream beyond ``--ext-proc-streams``
is refused at once (RESOURCE_EXHAUSTED; the gateway fails the exchange closed) rather than
queued behind the others, so Checks always find a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from authz_server.agentgateway.ext_mcp import ExtMcpAdapter
from authz_server.authorizer import Authorizer
from authz_server.decision import DecidedBy, Decision, deny
from authz_server.envoy.ext_proc import ExtProcSettings, ExtProcStream
from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2, ext_mcp_pb2_grpc
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from authz_server.mcp.responses import ResponseError
from authz_server.request import Request
from authz_server.serve.serial import Dispatcher

log = logging.getLogger(__name__)

# Decided when even the authorizer's internal_error failed (see server._INTERNAL_ERROR).
_INTERNAL_ERROR = deny(
    500,
    reason="internal error",
    body="authorization failed: internal error\n",
    decided_by=DecidedBy.ERROR,
)
_FILTER_FAILED = object()


class Decisions:
    """The authorizer's two questions, asked through the dispatcher; the transports' view."""

    def __init__(self, authorizer: Authorizer, decider: Dispatcher[Any, Any]) -> None:
        self._authorizer = authorizer
        self._decider = decider
        self.last_call = 0.0

    def judge(self, request: Request) -> Decision:
        self.last_call = time.monotonic()
        decision: Decision = self._decider.run(self._check, request, _INTERNAL_ERROR)
        return decision

    def filter_list(
        self, request: Request, result: dict[str, Any], method: str
    ) -> tuple[dict[str, Any], int]:
        self.last_call = time.monotonic()
        answer = self._decider.run(self._filter, (request, result, method), _FILTER_FAILED)
        if answer is _FILTER_FAILED:
            raise ResponseError("the list filter failed")
        return answer  # type: ignore[no-any-return]

    def _check(self, request: Request) -> Decision:
        try:
            return self._authorizer.check(request)
        except Exception as exc:
            return self._authorizer.internal_error(exc, request)

    def _filter(self, call: tuple[Request, dict[str, Any], str]) -> Any:
        try:
            return self._authorizer.filter_list(*call)
        except Exception as exc:
            log.error("filtering a %s result failed: %s", call[2], type(exc).__name__)
            return _FILTER_FAILED


class ExtProcService(external_processor_pb2_grpc.ExternalProcessorServicer):
    """envoy.service.ext_proc.v3.ExternalProcessor/Process: one stream per HTTP exchange."""

    def __init__(self, decisions: Decisions, settings: ExtProcSettings, streams: int) -> None:
        self._decisions = decisions
        self._settings = settings
        self._slots = threading.BoundedSemaphore(streams)

    def Process(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many ext_proc streams")
        try:
            yield from self._serve(request_iterator, context)
        finally:
            self._slots.release()

    def _serve(self, messages: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        stream = ExtProcStream(self._decisions.judge, self._decisions.filter_list, self._settings)
        for message in messages:
            try:
                answers = stream.handle(message)
            except Exception as exc:
                # No answer would be right: fail the stream, and the gateway fails the
                # exchange closed (failure_mode_allow: false).
                log.error("ext_proc stream failed: %s: %s", type(exc).__name__, exc)
                context.abort(grpc.StatusCode.INTERNAL, "the ext_proc stream failed")
            yield from answers
            if stream.finished:
                return


class ExtMcpService(ext_mcp_pb2_grpc.ExtMcpServicer):
    """agentgateway.dev.ext_mcp.ExtMcp: CheckRequest before a call, CheckResponse after it."""

    def __init__(self, decisions: Decisions) -> None:
        self._adapter = ExtMcpAdapter(decisions.judge, decisions.filter_list)

    def CheckRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._adapter.check_request(request)
        except Exception as exc:
            log.error("ExtMcp CheckRequest failed: %s", type(exc).__name__)
            return _failure("the authorizer failed", ext_mcp_pb2.McpRequestResult)

    def CheckResponse(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._adapter.check_response(request)
        except Exception as exc:
            log.error("ExtMcp CheckResponse failed: %s", type(exc).__name__)
            return _failure(
                "the authorizer could not filter this result", ext_mcp_pb2.McpResponseResult
            )


def _failure(reason: str, kind: Any) -> Any:
    # An error, never an RPC failure: with failureMode failOpen an RPC failure would pass.
    error = ext_mcp_pb2.AuthorizationError(
        code=ext_mcp_pb2.AuthorizationError.UNKNOWN, reason=reason
    )
    return kind(error=error)
