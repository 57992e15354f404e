"""Envoy's external processing protocol (ext_proc v3), as Envoy and agentgateway speak it.

One gRPC stream carries one HTTP exchange, and its messages carry no request id, so
:class:`ExtProcStream` holds the exchange's state:

* **request phase**: headers, then the body (BUFFERED from Envoy; held until complete in the
  streamed modes), judged exactly as a ``Check`` of the same request would be (the same
  :class:`~authz_server.request.Request`, built through the ext_authz adapter, so policies see
  the same ``object``). A denial is an immediate response with the decision's status, headers
  and JSON-RPC body; an allow continues, with the decision's header mutations.
* **response phase**: only a response to a list request (``tools/list``, ``prompts/list``,
  ``resources/list``, ``resources/templates/list``, known by its JSON-RPC id from the request
  phase) is read. A JSON body is held whole and rewritten (``content-length`` set to the new
  length); an SSE stream is cut into events, and each ``message`` event answering a list
  request is rewritten while the others pass as they came (an event split across chunks is
  held until complete). Everything else passes untouched: from Envoy the response headers
  answer asks for no body at all (``mode_override``), so it costs one small message.

Body answers follow the gateway's mode, which it states in ``protocol_config``:
FULL_DUPLEX_STREAMED (agentgateway's default) is answered with ``streamed_response`` chunks,
sent when ready; the other modes answer every chunk with its replacement (possibly empty while
an event or a JSON body is incomplete).

Fail closed: a list response that cannot be read, that is compressed, or that outgrows
``max_body_bytes`` (unless the operator chose ``oversize: pass``) ends the exchange with a 502
carrying a JSON-RPC error; once the response has started, the gateway resets it instead. An
exchange whose request phase was not seen (the gateway skips it) cannot be filtered and is
refused.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from google.protobuf import json_format

from authz_server.decision import AppendAction, Decision, HeaderMutation
from authz_server.envoy.adapter import CheckRequest, request_from_check
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.envoy.pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz_server.errors import AuthzServerError
from authz_server.mcp import responses, sse
from authz_server.request import Request

log = logging.getLogger(__name__)

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse
Mode = processing_mode_pb2.ProcessingMode
FULL_DUPLEX = Mode.FULL_DUPLEX_STREAMED

Judge = Callable[[Request], Decision]
"""Decide a request as ``Check`` would; never raises."""
FilterList = Callable[[Request, dict[str, Any], str], tuple[dict[str, Any], int]]
"""(the list request, a list result, its method) -> (the result without hidden entries, how
many were hidden)."""

MIB = 1024 * 1024
# Where a gateway puts request_attributes; agentgateway uses Envoy's name too.
ATTRIBUTES_NAMESPACE = "envoy.filters.http.ext_proc"
# The namespace of the dynamic metadata sent back (the decision id, the policy), which the
# Envoy recipe lists in metadata_options.receiving_namespaces.
METADATA_NAMESPACE = "envoy.filters.http.ext_proc"

# The response body modes asked of Envoy in the response headers answer. Envoy takes an override
# only when its filter allows overrides and, with allowed_override_modes, only one listed there
# exactly (request_header_mode aside): deploy/envoy lists these three.
PASS_MODE = Mode(response_body_mode=Mode.NONE)
JSON_MODE = Mode(response_body_mode=Mode.BUFFERED)
SSE_MODE = Mode(response_body_mode=Mode.STREAMED)
OVERRIDES = (PASS_MODE, JSON_MODE, SSE_MODE)

LIST_FILTER_ERROR = -32603


class Oversize(enum.StrEnum):
    """What happens to a list response (or one SSE event) larger than the cap."""

    DENY = "deny"
    PASS = "pass"


@dataclass(frozen=True, slots=True)
class ExtProcSettings:
    """``max_body_bytes``: the most of a list response (a JSON body, or one SSE event) held for
    filtering; ``oversize``: beyond it, refuse the exchange (default) or let the rest of that
    response through unfiltered; ``max_request_bytes``: the request body judged (a longer one is
    judged as truncated, which denies it)."""

    max_body_bytes: int = 4 * MIB
    oversize: Oversize = Oversize.DENY
    max_request_bytes: int = 4 * MIB


class ExtProcError(AuthzServerError):
    """The gateway sent what this exchange cannot take (a message out of order)."""


class _Body(enum.Enum):
    """How the response body is treated."""

    PASS = "pass"  # not a list result: untouched
    JSON = "json"  # held whole, then rewritten
    SSE = "sse"  # event by event


class _ResponseRefused(AuthzServerError):
    """The list response cannot be passed on: refuse the exchange with a 502."""

    def __init__(self, reason: str, details: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class ExtProcStream:
    """The state of one ext_proc stream (one HTTP exchange); :meth:`handle` answers each message.

    Not thread-safe: one stream is served by one thread, message after message.
    """

    def __init__(self, judge: Judge, filter_list: FilterList, settings: ExtProcSettings) -> None:
        self._judge = judge
        self._filter_list = filter_list
        self._settings = settings
        self.finished = False
        self.hidden = 0
        self._request_mode: int | None = None
        self._response_mode: int | None = None
        self._attributes: dict[str, Any] = {}
        self._metadata: Any = None
        self._headers: list[tuple[str, str]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._unanswered = 0
        self._request: Request | None = None
        self._decision: Decision | None = None
        self._lists: responses.ListRequests | None = {}
        self._body = _Body.PASS
        self._response_chunks: list[bytes] = []
        self._response_size = 0
        self._response_messages = 0
        self._events: sse.EventSplitter | None = None

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, message: Any) -> list[Any]:
        """The answers to one ProcessingRequest, in order (none while chunks are held)."""
        if message.HasField("protocol_config"):
            config = message.protocol_config
            self._request_mode = config.request_body_mode
            self._response_mode = config.response_body_mode
        if message.attributes and not self._attributes:
            for struct in message.attributes.values():
                self._attributes.update(_plain(struct))
        if message.HasField("metadata_context") and self._metadata is None:
            self._metadata = message.metadata_context
        which = message.WhichOneof("request")
        try:
            if which == "request_headers":
                return self._request_headers(message.request_headers)
            if which == "request_body":
                return self._request_body(message.request_body)
            if which == "request_trailers":
                return self._request_trailers()
            if self._decision is None:
                raise _ResponseRefused(
                    "the authorizer did not see this request",
                    "authz_server_no_request_phase",
                )
            if which == "response_headers":
                return self._response_headers(message.response_headers)
            if which == "response_body":
                return self._response_body(message.response_body)
            if which == "response_trailers":
                return self._response_trailers()
        except _ResponseRefused as refused:
            log.warning("ext_proc: response refused: %s", refused.reason)
            return self._refuse(refused)
        raise ExtProcError(f"unexpected ext_proc message {which!r}")

    # -- request phase ----------------------------------------------------------------------

    def _request_headers(self, headers: Any) -> list[Any]:
        if self._headers or self._decision is not None:
            raise ExtProcError("request headers twice on one stream")
        self._headers = _header_list(headers.headers)
        if headers.end_of_stream:
            return self._decide(answer="request_headers")
        # The body follows; the decision waits for it. A compressed list response could not be
        # filtered, so the upstream is not invited to compress.
        common = pb.CommonResponse(
            header_mutation=pb.HeaderMutation(remove_headers=["accept-encoding"])
        )
        return [ProcessingResponse(request_headers=pb.HeadersResponse(response=common))]

    def _request_body(self, body: Any) -> list[Any]:
        if self._decision is not None:
            # A chunk after the decision (the gateway sent the body on after a trailer, say).
            return [self._body_continue("request_body", body.body)]
        room = self._settings.max_request_bytes + 1 - self._size
        if room > 0:
            self._chunks.append(body.body[:room])
        self._size += len(body.body)
        self._unanswered += 1
        if not body.end_of_stream:
            return []
        return self._decide(answer="request_body")

    def _request_trailers(self) -> list[Any]:
        answers = self._decide(answer="request_body") if self._decision is None else []
        if self.finished:
            return answers
        return [*answers, ProcessingResponse(request_trailers=pb.TrailersResponse())]

    def _decide(self, answer: str) -> list[Any]:
        body = b"".join(self._chunks)
        complete = self._size <= self._settings.max_request_bytes
        request = request_from_processing(
            self._headers, body, self._attributes, self._metadata, complete=complete
        )
        decision = self._judge(request)
        self._decision = decision
        self._request = request
        metadata = _metadata(decision)
        if not decision.allowed:
            self.finished = True
            return [immediate_response(decision, metadata)]
        self._lists = (
            responses.list_requests(body) if request.method.upper() != "GET" and body else {}
        )
        mutation = _request_mutation(decision, self._path())
        if answer == "request_headers":
            common = pb.CommonResponse(header_mutation=mutation)
            return [
                ProcessingResponse(
                    request_headers=pb.HeadersResponse(response=common), dynamic_metadata=metadata
                )
            ]
        if self._request_mode == FULL_DUPLEX:
            common = pb.CommonResponse(
                header_mutation=mutation,
                body_mutation=pb.BodyMutation(
                    streamed_response=pb.StreamedBodyResponse(body=body, end_of_stream=True)
                ),
            )
            self._unanswered = 0
            return [
                ProcessingResponse(
                    request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
                )
            ]
        # Every chunk held gets its answer, unchanged; the mutations ride on the last one
        # (Envoy applies a body answer's header mutations in BUFFERED mode).
        count, self._unanswered = max(self._unanswered, 1), 0
        answers = [
            ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse()))
            for _ in range(count - 1)
        ]
        common = pb.CommonResponse(header_mutation=mutation)
        answers.append(
            ProcessingResponse(
                request_body=pb.BodyResponse(response=common), dynamic_metadata=metadata
            )
        )
        return answers

    def _path(self) -> str:
        for key, value in self._headers:
            if key == ":path":
                return value
        return ""

    # -- response phase ---------------------------------------------------------------------

    def _response_headers(self, headers: Any) -> list[Any]:
        fields = _header_list(headers.headers)
        mutation = pb.HeaderMutation(
            set_headers=_header_options(self._decision.response_headers_to_add)
            if self._decision is not None
            else ()
        )
        self._body = _Body.PASS if headers.end_of_stream else self._classify(fields)
        answer = ProcessingResponse(
            response_headers=pb.HeadersResponse(
                response=pb.CommonResponse(header_mutation=mutation)
            )
        )
        if self._body is _Body.PASS:
            if self._response_mode != FULL_DUPLEX:
                answer.mode_override.CopyFrom(PASS_MODE)
            return [answer]
        if self._response_mode == Mode.NONE:
            # Configured never to send bodies: a list would pass unfiltered.
            raise _ResponseRefused(
                "the gateway sends no response bodies, so lists cannot be filtered",
                "authz_server_no_response_body",
            )
        encoding = _get(fields, "content-encoding").strip().lower()
        if encoding not in ("", "identity"):
            raise _ResponseRefused(
                f"a list response arrived compressed ({encoding[:32]})",
                "authz_server_encoded_list",
            )
        if self._body is _Body.SSE:
            self._events = sse.EventSplitter()
        if self._response_mode == FULL_DUPLEX:
            # The new length is not known until the end: the gateway frames the body itself.
            answer.response_headers.response.header_mutation.remove_headers.append("content-length")
        elif self._body is _Body.JSON:
            answer.mode_override.CopyFrom(JSON_MODE)
        else:
            answer.mode_override.CopyFrom(SSE_MODE)
        return [answer]

    def _classify(self, fields: Sequence[tuple[str, str]]) -> _Body:
        if self._lists == {}:
            return _Body.PASS
        if not _get(fields, ":status", "200").startswith("2"):
            return _Body.PASS
        content_type = _get(fields, "content-type").split(";", 1)[0].strip().lower()
        if content_type == "text/event-stream":
            return _Body.SSE
        if content_type == "application/json" or content_type.endswith("+json"):
            return _Body.JSON
        return _Body.PASS

    def _response_body(self, body: Any) -> list[Any]:
        chunk, end = body.body, body.end_of_stream
        self._response_messages += 1
        if self._body is _Body.PASS:
            return [self._body_continue("response_body", chunk, end)]
        if self._body is _Body.JSON:
            return self._json_chunk(chunk, end)
        return self._sse_chunk(chunk, end)

    def _response_trailers(self) -> list[Any]:
        # The body ended without end_of_stream (trailers follow): let out what is held.
        answers: list[Any] = []
        if self._body is _Body.JSON and self._response_chunks:
            answers = self._json_chunk(b"", True, eos_sent=False)
        elif self._body is _Body.SSE and self._events is not None and self._events.held:
            answers = self._sse_chunk(b"", True, eos_sent=False)
        if self.finished:
            return answers
        if answers and self._response_mode != FULL_DUPLEX:
            # Only a streamed answer can carry bytes after the last chunk was answered.
            raise _ResponseRefused(
                "a list response ended with trailers", "authz_server_list_trailers"
            )
        return [*answers, ProcessingResponse(response_trailers=pb.TrailersResponse())]

    def _json_chunk(self, chunk: bytes, end: bool, eos_sent: bool = True) -> list[Any]:
        self._response_chunks.append(chunk)
        self._response_size += len(chunk)
        if self._response_size > self._settings.max_body_bytes:
            # A body that arrived whole (BUFFERED) passes as it is, without a mutation.
            whole = b"".join(self._response_chunks)
            return self._oversize(whole, end, changed=self._response_messages > 1 or not end)
        if not end:
            return self._replace(b"", False, changed=True)
        whole = b"".join(self._response_chunks)
        self._response_chunks.clear()
        new, _ = self._rewrite(whole)
        changed = new is not None or self._response_messages > 1
        out = new if new is not None else whole
        return self._replace(out, eos_sent, changed=changed, length=len(out))

    def _sse_chunk(self, chunk: bytes, end: bool, eos_sent: bool = True) -> list[Any]:
        events = self._events
        assert events is not None
        complete = events.feed(chunk, end)
        cap = self._settings.max_body_bytes
        large = next((i for i, e in enumerate(complete) if len(e) > cap), None)
        if large is not None or events.held > cap:
            # From the first event over the cap on, nothing is read: what comes before it is
            # filtered, the rest is refused or (oversize: pass) let through as it came.
            large = len(complete) if large is None else large
            done = b"".join(self._event(e) for e in complete[:large])
            held = done + b"".join(complete[large:]) + events.take()
            return self._oversize(held, end, changed=held != chunk)
        out = b"".join(self._event(e) for e in complete)
        return self._replace(out, end and eos_sent, changed=out != chunk)

    def _event(self, raw: bytes) -> bytes:
        event = sse.parse_event(raw)
        if event.type != "message" or event.data is None:
            return raw
        new, _ = self._rewrite(event.data)
        return raw if new is None else sse.replace_data(raw, new)

    def _rewrite(self, body: bytes) -> tuple[bytes | None, int]:
        request = self._request
        assert request is not None

        def keep(result: dict[str, Any], method: str) -> tuple[dict[str, Any], int]:
            return self._filter_list(request, result, method)

        try:
            new, hidden = responses.rewrite(body, self._lists, keep)
        except responses.ResponseError as exc:
            raise _ResponseRefused(str(exc), "authz_server_unreadable_list") from None
        self.hidden += hidden
        return new, hidden

    def _oversize(self, held: bytes, end: bool, changed: bool = True) -> list[Any]:
        if self._settings.oversize is Oversize.DENY:
            raise _ResponseRefused(
                f"a list response is larger than {self._settings.max_body_bytes} bytes",
                "authz_server_list_too_large",
            )
        log.warning(
            "ext_proc: a list response is larger than %d bytes; passing the rest unfiltered "
            "(--ext-proc-oversize pass)",
            self._settings.max_body_bytes,
        )
        self._body = _Body.PASS
        self._response_chunks.clear()
        return self._replace(held, end, changed=changed)

    def _replace(
        self, out: bytes, end: bool, *, changed: bool, length: int | None = None
    ) -> list[Any]:
        """The answer to a response chunk: ``out`` goes on in its place."""
        if self._response_mode == FULL_DUPLEX:
            if not out and not end:
                return []
            mutation = pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=out, end_of_stream=end)
            )
            return [
                ProcessingResponse(
                    response_body=pb.BodyResponse(
                        response=pb.CommonResponse(body_mutation=mutation)
                    )
                )
            ]
        common = pb.CommonResponse()
        if changed:
            if out:
                common.body_mutation.body = out
            else:
                common.body_mutation.clear_body = True
            if length is not None:
                # BUFFERED with response headers sent: Envoy requires the new length.
                common.header_mutation.set_headers.append(_option("content-length", str(length)))
        return [ProcessingResponse(response_body=pb.BodyResponse(response=common))]

    def _body_continue(self, phase: str, chunk: bytes, end: bool = False) -> Any:
        mode = self._request_mode if phase == "request_body" else self._response_mode
        common = pb.CommonResponse()
        if mode == FULL_DUPLEX:
            common.body_mutation.streamed_response.body = chunk
            common.body_mutation.streamed_response.end_of_stream = end
        return ProcessingResponse(**{phase: pb.BodyResponse(response=common)})

    def _refuse(self, refused: _ResponseRefused) -> list[Any]:
        self.finished = True
        ids = [key[1] for key in (self._lists or {})]
        error: dict[str, Any] = {
            "code": LIST_FILTER_ERROR,
            "message": f"the authorizer could not filter this response: {refused.reason}",
        }
        message: dict[str, Any] = {"jsonrpc": "2.0", "error": error}
        if len(ids) == 1:
            message = {"jsonrpc": "2.0", "id": ids[0], "error": error}
        body = json.dumps(message, separators=(",", ":")).encode()
        return [
            ProcessingResponse(
                immediate_response=pb.ImmediateResponse(
                    status={"code": 502},
                    headers=pb.HeaderMutation(
                        set_headers=[_option("content-type", "application/json")]
                    ),
                    body=body,
                    details=refused.details,
                )
            )
        ]


# -- building messages ----------------------------------------------------------------------


def request_from_processing(
    headers: Sequence[tuple[str, str]],
    body: bytes,
    attributes: dict[str, Any],
    metadata: Any = None,
    *,
    complete: bool = True,
) -> Request:
    """The :class:`Request` a ``Check`` of the same exchange would have produced.

    The CheckRequest policies read as ``object`` is assembled from the ext_proc headers
    (pseudo-headers included), the body and the request attributes the gateway was configured
    to send (``source.address``, ``destination.address``, ``request.id``,
    ``request.protocol``, ``connection.uri_san_peer_certificate``). A body cut at the limit is
    marked truncated (``size`` -1), which denies it.
    """
    check = CheckRequest()
    http = check.attributes.request.http
    merged: dict[str, str] = {}
    for key, value in headers:
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    http.headers.update(merged)
    http.method = merged.get(":method", "")
    http.path = merged.get(":path", "")
    http.host = merged.get(":authority", "") or merged.get("host", "")
    http.scheme = merged.get(":scheme", "")
    http.protocol = str(attributes.get("request.protocol", ""))
    http.id = str(attributes.get("request.id", "") or merged.get("x-request-id", ""))
    if body:
        http.raw_body = body
    http.size = len(body) if complete else -1
    _address(check.attributes.source, attributes, "source")
    _address(check.attributes.destination, attributes, "destination")
    principal = attributes.get("connection.uri_san_peer_certificate")
    if principal:
        check.attributes.source.principal = str(principal)
    if metadata is not None:
        check.attributes.metadata_context.CopyFrom(metadata)
    return request_from_check(check)


def _address(peer: Any, attributes: dict[str, Any], side: str) -> None:
    address = attributes.get(f"{side}.address")
    port = attributes.get(f"{side}.port")
    if not address and port is None:
        return
    host, _, tail = str(address or "").rpartition(":")
    if not host or not tail.isdigit():
        host, tail = str(address or ""), ""
    socket = peer.address.socket_address
    socket.address = host.strip("[]")
    number = port if port is not None else (int(tail) if tail else 0)
    try:
        socket.port_value = int(number)
    except (TypeError, ValueError):
        socket.port_value = 0


def immediate_response(decision: Decision, metadata: Any = None) -> Any:
    """The local reply for a denial: its status, headers and body, as Check's denied_response."""
    response = ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status={"code": decision.http_status or 403},
            headers=pb.HeaderMutation(set_headers=_header_options(decision.headers)),
            body=decision.body.encode(),
            details="authz_server_denied",
        )
    )
    if metadata is not None:
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def _request_mutation(decision: Decision, path: str) -> Any:
    mutation = pb.HeaderMutation(
        set_headers=_header_options(decision.headers),
        remove_headers=list(decision.headers_to_remove),
    )
    if decision.query_parameters_to_set or decision.query_parameters_to_remove:
        mutation.set_headers.append(_option(":path", _rewrite_query(path, decision)))
    return mutation


def _rewrite_query(path: str, decision: Decision) -> str:
    base, _, query = path.partition("?")
    removed = set(decision.query_parameters_to_remove)
    removed |= {key for key, _ in decision.query_parameters_to_set}
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in removed]
    params += list(decision.query_parameters_to_set)
    return f"{base}?{urlencode(params)}" if params else base


def _metadata(decision: Decision) -> Any:
    if not decision.dynamic_metadata:
        return None
    response = ProcessingResponse()
    response.dynamic_metadata.update({METADATA_NAMESPACE: dict(decision.dynamic_metadata)})
    return response.dynamic_metadata


def _header_options(mutations: Iterable[HeaderMutation]) -> list[Any]:
    return [_option(m.key, m.value, m.action, m.keep_empty_value) for m in mutations]


def _option(
    key: str,
    value: str,
    action: AppendAction = AppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    keep_empty: bool = False,
) -> Any:
    # ext_proc reads header values from raw_value.
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=int(action),
        keep_empty_value=keep_empty,
    )


def _header_list(header_map: Any) -> list[tuple[str, str]]:
    return [
        (
            entry.key.lower(),
            entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value,
        )
        for entry in header_map.headers
    ]


def _get(fields: Sequence[tuple[str, str]], key: str, default: str = "") -> str:
    for name, value in fields:
        if name == key:
            return value
    return default


def _plain(struct: Any) -> dict[str, Any]:
    value = json_format.MessageToDict(struct)
    return value if isinstance(value, dict) else {}
