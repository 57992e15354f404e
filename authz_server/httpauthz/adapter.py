"""Translate between a plain HTTP request and the pipeline's values, as Kyverno's HTTP mode reads
one.

The request the HTTP authorizer receives is the one being authorized, whatever its method and
path: Envoy's ``http_service`` and agentgateway's HTTP protocol forward the agent's method, path,
headers and body. With ``nested`` (``--http-authz-nested-request``, Kyverno's
``--nested-request``) the received body is instead a raw HTTP/1.x request, which is judged.

Two views are built, as the envoy adapter does for a CheckRequest: the :class:`Request` every
stage reads (lower-case header names, repeated lines joined with ``,`` as Envoy joins them,
Envoy's pseudo-headers), and ``object`` for HTTP-mode policies (Kyverno's ``http.CheckRequest``:
Go's canonical header names, one list entry per header line, the decoded path, the parsed query,
no ``Host`` among the headers, as Go's server leaves it).

A body is held to be cut only when the gateway says so (``x-envoy-auth-partial-body: true``,
which Envoy and agentgateway send in HTTP mode); a body longer than the listener reads is passed
on one byte over the decoder's limit, so the decoder refuses it as too large.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from authz_server.cel import http as http_lib
from authz_server.decision import Decision
from authz_server.errors import AuthzServerError
from authz_server.request import HTTP, Request

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
DECISION_ID_HEADER = "x-authz-decision-id"
# Go's server moves these out of Request.Header (into Host and TransferEncoding).
_NOT_IN_OBJECT = frozenset({"host", "transfer-encoding"})
_SCHEMES = frozenset({"http", "https"})
TEXT = "text/plain; charset=utf-8"


class NestedRequestError(AuthzServerError, ValueError):
    """The body of a request to judge with ``--http-authz-nested-request`` is not one complete
    HTTP/1.x request."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request as the listener read it: header names and values as sent (latin-1 decoded),
    in order; ``body_cut`` when the listener stopped reading at its limit."""

    method: str
    target: str
    http_version: str = "1.1"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    body_cut: bool = False

    def header(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), "")


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def request_from_http(incoming: HttpRequest, *, nested: bool = False) -> Request:
    """The :class:`Request` (transport ``http``) for a received request, or for the raw request
    in its body when ``nested``; raises :class:`NestedRequestError` for a body that is not one."""
    if nested:
        incoming = parse_raw_request(incoming.body)
    method = incoming.method
    scheme, host, raw_path, query, fragment = _target(incoming.target)
    host = host or incoming.header("host")
    headers = _joined(incoming.headers)
    if not scheme:
        forwarded = headers.get("x-forwarded-proto", "").strip().lower()
        scheme = forwarded if forwarded in _SCHEMES else ""
    pseudo = {":method": method, ":path": raw_path + (f"?{query}" if query else "")}
    if host:
        pseudo[":authority"] = host
    if scheme:
        pseudo[":scheme"] = scheme
    body = incoming.body
    check_request = http_lib.request_message(
        method=method,
        headers=((k, v) for k, v in incoming.headers if k.lower() not in _NOT_IN_OBJECT),
        host=host,
        protocol=f"HTTP/{incoming.http_version}",
        body=body,
        scheme=scheme,
        path=unquote(raw_path),
        query=parse_qsl(query, keep_blank_values=True),
        fragment=fragment,
    )
    return Request(
        method=method,
        path=raw_path,
        query=query,
        host=host,
        scheme=scheme,
        protocol=f"HTTP/{incoming.http_version}",
        request_id=headers.get("x-request-id", ""),
        headers={**pseudo, **headers},
        body=body,
        body_truncated=headers.get(PARTIAL_BODY_HEADER, "").strip().lower() == "true",
        size=len(body),
        check_request=check_request,
        transport=HTTP,
    )


def _target(target: str) -> tuple[str, str, str, str, str]:
    """(scheme, host, path, query, fragment) of a request target: origin form (``/p?q``),
    absolute form (``http://h/p?q``, a proxy's), or another (``*``, an authority)."""
    if "://" in target and not target.startswith("/"):
        parts = urlsplit(target)
        return parts.scheme.lower(), parts.netloc, parts.path or "/", parts.query, parts.fragment
    without_fragment, _, fragment = target.partition("#")
    path, _, query = without_fragment.partition("?")
    return "", "", path, query, fragment


def _joined(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def parse_raw_request(data: bytes) -> HttpRequest:
    """One complete HTTP/1.x request from ``data`` (Kyverno's nested request)."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=len(data) + 1)
    connection.receive_data(data)
    connection.receive_data(b"")
    head: h11.Request | None = None
    body = bytearray()
    try:
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise NestedRequestError("the body is not a complete HTTP/1.x request")
    except h11.RemoteProtocolError as exc:
        raise NestedRequestError(f"the body is not an HTTP/1.x request: {exc}") from None
    if head is None:
        raise NestedRequestError("the body is not an HTTP/1.x request")
    return HttpRequest(
        method=head.method.decode("ascii", "replace"),
        target=head.target.decode("latin-1"),
        http_version=head.http_version.decode("ascii", "replace"),
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
        body=bytes(body),
    )


def reply_from_decision(decision: Decision) -> HttpReply:
    """The HTTP answer to a decision, as Kyverno's default output gives it: 200 and no body for
    an allow; for a denial its status (403 unless the pipeline chose another 4xx or 5xx), its
    headers and its body. A denial is never a 2xx: Envoy and agentgateway read any 2xx as allow
    (the -32042 approval answer, a 200 denial over gRPC, is sent as 403 here)."""
    decision_id = str(decision.dynamic_metadata.get("decision_id", ""))
    extra = ((DECISION_ID_HEADER, decision_id),) if decision_id else ()
    if decision.allowed:
        return HttpReply(200, extra)
    status = decision.http_status if 400 <= decision.http_status <= 599 else 403
    headers = [(h.key.lower(), h.value) for h in decision.headers]
    body = decision.body.encode("utf-8")
    if body and not any(key == "content-type" for key, _ in headers):
        headers.append(("content-type", TEXT))
    return HttpReply(status, (*headers, *extra), body)
