"""A test-only forwarding proxy that asks authz-server the way Envoy's ext_authz filter does.

It stands in for Envoy so the end-to-end tests need no Envoy binary, and it follows what Envoy
sends and does (docs: /work/shared/reference/protocols.md §2.1-§2.5), because the server is
written against those facts:

* the body is buffered up to ``max_request_bytes``. With ``allow_partial_message`` off a bigger
  body gets 413 from the proxy itself and the authorizer is never asked; with it on, the first
  ``max_request_bytes`` are sent with ``x-envoy-auth-partial-body: true``;
* the CheckRequest carries lower-case headers including ``:authority :method :path :scheme``
  (no ``host``), the raw body in ``raw_body`` (``pack_as_bytes``), ``x-envoy-auth-partial-body``
  whenever a body was buffered (a client-sent one is dropped), and the peer addresses;
* ``status.code == 0`` allows: the ``ok_response`` mutations are applied and the request is
  forwarded, the reply streamed back (Server-Sent Events included). Anything else is relayed as a
  local reply with ``denied_response``'s status (default 403), headers and body, labelled
  ``text/plain`` when the policy gave no content type. A failed RPC is a 403 with no body
  (``failure_mode_allow: false``).

Every CheckRequest and its answer are kept in ``exchanges`` so tests can assert what the policy
saw. It is deliberately small: HTTP/1.1 on loopback, one upstream, no retries.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import grpc
import httpx2

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PARTIAL_BODY = "x-envoy-auth-partial-body"
# Connection-level headers a proxy never forwards (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# HeaderValueOption.HeaderAppendAction
APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS = range(4)

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Exchange:
    """One Check call: what the policy saw and what it answered (None when the RPC failed)."""

    request: external_auth_pb2.CheckRequest
    response: external_auth_pb2.CheckResponse | None


@dataclass
class Gateway:
    """An ASGI app; serve it with uvicorn (``lifespan="on"`` closes its connections)."""

    upstream: str
    """Base URL of the MCP server, e.g. ``http://127.0.0.1:8123``."""
    authz_target: str
    """gRPC address of authz-server, e.g. ``127.0.0.1:9000``."""
    max_request_bytes: int = 64 * 1024
    allow_partial_message: bool = False
    check_timeout: float = 5.0
    """Envoy's default is 200 ms; a loaded CI machine needs more, and no test depends on it."""
    exchanges: list[Exchange] = field(default_factory=list)
    _ids: itertools.count[int] = field(
        default_factory=lambda: itertools.count(1), init=False, repr=False
    )
    _channel: grpc.aio.Channel | None = field(default=None, init=False, repr=False)
    _client: httpx2.AsyncClient | None = field(default=None, init=False, repr=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._handle(scope, receive, send)

    async def aclose(self) -> None:
        """Close the gRPC channel and the upstream connection pool."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if len(body) > self.max_request_bytes and not self.allow_partial_message:
            # Envoy's decoder buffer overflows: it answers 413 itself, the authorizer is not asked.
            await _reply(send, 413, [("content-type", "text/plain")], b"Payload Too Large")
            return
        # What Envoy's connection manager adds before any filter runs.
        downstream = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
        ]
        downstream = [(k, v) for k, v in downstream if k != PARTIAL_BODY]
        if not _get(downstream, "x-request-id"):
            downstream.append(("x-request-id", str(uuid.uuid4())))
        _set(downstream, "x-forwarded-proto", scope.get("scheme", "http"))
        path = _path(scope)
        check = self._check_request(scope, downstream, path, body)
        try:
            answer = await self._stub().Check(check, timeout=self.check_timeout)
        except grpc.aio.AioRpcError:
            self.exchanges.append(Exchange(check, None))
            await _reply(send, 403, [], b"")  # status_on_error, no body
            return
        self.exchanges.append(Exchange(check, answer))
        if answer.status.code != 0:
            denied = (
                answer.error_response
                if answer.WhichOneof("http_response") == "error_response"
                else answer.denied_response
            )
            await self._local_reply(send, denied)
            return
        ok = answer.ok_response
        upstream = [(k, v) for k, v in downstream if k not in HOP_BY_HOP]
        for option in ok.headers:
            _mutate(upstream, option)
        removed = {name.lower() for name in ok.headers_to_remove if name.lower() != "host"}
        upstream = [(k, v) for k, v in upstream if k not in removed]
        path = _rewrite_query(path, ok.query_parameters_to_set, ok.query_parameters_to_remove)
        await self._forward(scope, receive, send, upstream, path, body, ok)

    def _check_request(
        self, scope: Scope, headers: Headers, path: str, body: bytes
    ) -> external_auth_pb2.CheckRequest:
        authority = _get(headers, "host") or ""
        check = external_auth_pb2.CheckRequest()
        attributes = check.attributes
        if scope.get("client"):
            source = attributes.source.address.socket_address
            source.address, source.port_value = scope["client"][0], scope["client"][1]
        if scope.get("server"):
            destination = attributes.destination.address.socket_address
            destination.address, destination.port_value = scope["server"][0], scope["server"][1]
        attributes.request.time.GetCurrentTime()
        http = attributes.request.http
        http.id = str(next(self._ids))  # Envoy's stream id, not x-request-id
        http.method = scope["method"]
        http.path = path
        http.host = authority
        http.scheme = scope.get("scheme", "http")
        http.protocol = f"HTTP/{scope.get('http_version', '1.1')}"
        http.size = len(body)
        merged: dict[str, str] = {}
        for key, value in headers:
            if key == "host":
                continue  # HTTP/1 Host becomes :authority
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        merged.update(
            {":authority": authority, ":method": scope["method"], ":path": path, ":scheme": "http"}
        )
        if body:
            sent = body[: self.max_request_bytes]
            merged[PARTIAL_BODY] = "true" if len(sent) < len(body) else "false"
            http.raw_body = sent
        http.headers.update(merged)
        return check

    def _stub(self) -> external_auth_pb2_grpc.AuthorizationStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.authz_target)
        return external_auth_pb2_grpc.AuthorizationStub(self._channel)

    async def _local_reply(self, send: Send, denied: external_auth_pb2.DeniedHttpResponse) -> None:
        status = denied.status.code or 403
        headers = [(o.header.key.lower(), o.header.value) for o in denied.headers]
        body = denied.body.encode()
        if body and not _get(headers, "content-type"):
            headers.append(("content-type", "text/plain"))
        if not body:
            headers = [(k, v) for k, v in headers if k not in ("content-type", "content-length")]
        await _reply(send, status, headers, body)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        path: str,
        body: bytes,
        ok: external_auth_pb2.OkHttpResponse,
    ) -> None:
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=None))
        request = self._client.build_request(
            scope["method"], self.upstream + path, headers=headers, content=body or None
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx2.TransportError:
            await _reply(send, 503, [("content-type", "text/plain")], b"upstream connect error")
            return
        reply = [(k.lower(), v) for k, v in response.headers.multi_items()]
        reply = [(k, v) for k, v in reply if k not in HOP_BY_HOP]
        for option in ok.response_headers_to_add:
            _mutate(reply, option)
        await _relay(response, reply, receive, send)


async def _relay(response: httpx2.Response, headers: Headers, receive: Receive, send: Send) -> None:
    """Stream the upstream reply chunk by chunk; stop when the downstream client goes away."""

    async def pump() -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pumping, watching = asyncio.create_task(pump()), asyncio.create_task(watch())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, watching):
            task.cancel()
        await asyncio.gather(pumping, watching, return_exceptions=True)
        await response.aclose()


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _reply(send: Send, status: int, headers: Headers, body: bytes) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _path(scope: Scope) -> str:
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def _get(headers: Headers, key: str) -> str | None:
    values = [v for k, v in headers if k == key]
    return ",".join(values) if values else None


def _set(headers: Headers, key: str, value: str) -> None:
    headers[:] = [(k, v) for k, v in headers if k != key]
    headers.append((key, value))


def _mutate(headers: Headers, option: Any) -> None:
    """Apply one HeaderValueOption as current Envoy does (protocols.md §1.3)."""
    key, value = option.header.key.lower(), option.header.value
    if option.HasField("append"):
        action = APPEND_IF_EXISTS_OR_ADD if option.append.value else OVERWRITE_IF_EXISTS_OR_ADD
    else:
        action = option.append_action
    exists = _get(headers, key) is not None
    if not value and not option.keep_empty_value:
        headers[:] = [(k, v) for k, v in headers if k != key]
    elif action == APPEND_IF_EXISTS_OR_ADD:
        headers.append((key, value))
    elif action == ADD_IF_ABSENT:
        if not exists:
            headers.append((key, value))
    elif action == OVERWRITE_IF_EXISTS:
        if exists:
            _set(headers, key, value)
    else:
        _set(headers, key, value)


def _rewrite_query(path: str, to_set: Any, to_remove: Any) -> str:
    if not to_set and not to_remove:
        return path
    base, _, query = path.partition("?")
    removed = set(to_remove) | {p.key for p in to_set}
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in removed]
    params += [(p.key, p.value) for p in to_set]
    return f"{base}?{urlencode(params)}" if params else base
