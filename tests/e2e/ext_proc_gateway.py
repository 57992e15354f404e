"""A test-only forwarding proxy that asks authz-server the way Envoy's ext_proc filter does, with
the settings of ``deploy/envoy/envoy-ext-proc.yaml``: request headers and the BUFFERED request
body, response headers and a STREAMED response body, ``allow_mode_override`` (the processor may
switch the response body to NONE, BUFFERED or STREAMED in its response headers answer), fail
closed.

It stands in for Envoy so the end-to-end tests need no Envoy binary; the Envoy behaviour it copies
is listed in /work/shared/reference/gateway-hooks.md §2 (a body answer replaces the chunk it
answers; a BUFFERED answer that changes the body must set content-length; STREAMED drops
content-length; an immediate response before the response started is the client's reply, after
it the response is reset; a failed stream is a 500).

Every exchange's Process answers are kept in ``exchanges`` for the tests. HTTP/1.1 on loopback,
one upstream, no retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx2

from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.envoy.pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from .gateway import HOP_BY_HOP, Headers, Receive, Scope, Send, _path, _read_body, _relay, _reply

Mode = processing_mode_pb2.ProcessingMode


class StreamFailed(Exception):
    """The processor failed the stream or answered out of turn: Envoy fails closed (500)."""


@dataclass
class ExtProcExchange:
    """The answers of one Process stream, in order."""

    method: str
    answers: list[Any] = field(default_factory=list)


class _Stream:
    """One Process stream driven message by message."""

    def __init__(self, stub: Any, record: ExtProcExchange) -> None:
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._call = stub.Process(self._messages(), timeout=30)
        self._record = record
        self._closed = False

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def ask(self, message: Any, expected: str) -> Any:
        await self._outbox.put(message)
        try:
            answer = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise StreamFailed(err.code().name) from None
        if answer is grpc.aio.EOF:
            raise StreamFailed("the processor closed the stream")
        self._record.answers.append(answer)
        kind = answer.WhichOneof("response")
        if kind not in (expected, "immediate_response"):
            raise StreamFailed(f"spurious message {kind}")
        return answer

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._outbox.put(None)
            self._call.cancel()


@dataclass
class ExtProcGateway:
    """An ASGI app; serve it with uvicorn (``lifespan="on"`` closes its connections)."""

    upstream: str
    authz_target: str
    exchanges: list[ExtProcExchange] = field(default_factory=list)
    _channel: grpc.aio.Channel | None = field(default=None, init=False, repr=False)
    _client: httpx2.AsyncClient | None = field(default=None, init=False, repr=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await self._handle(scope, receive, send)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.authz_target)
        return external_processor_pb2_grpc.ExternalProcessorStub(self._channel)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = ExtProcExchange(scope["method"])
        self.exchanges.append(record)
        stream = _Stream(self._stub(), record)
        try:
            await self._exchange(scope, receive, send, stream)
        except StreamFailed:
            await _reply(send, 500, [], b"")
        finally:
            await stream.close()

    async def _exchange(self, scope: Scope, receive: Receive, send: Send, stream: _Stream) -> None:
        body = await _read_body(receive)
        headers: Headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
        ]
        authority = next((v for k, v in headers if k == "host"), "")
        headers = [(k, v) for k, v in headers if k != "host"]
        path = _path(scope)
        pseudo = [(":authority", authority), (":method", scope["method"]), (":path", path)]
        first = pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(
                headers=_header_map([*pseudo, (":scheme", "http"), *headers]),
                end_of_stream=not body,
            )
        )
        first.protocol_config.request_body_mode = Mode.BUFFERED
        first.protocol_config.response_body_mode = Mode.STREAMED
        client = scope.get("client") or ("127.0.0.1", 0)
        first.attributes["envoy.filters.http.ext_proc"].update(
            {"source.address": f"{client[0]}:{client[1]}"}
        )
        answer = await stream.ask(first, "request_headers")
        if await _immediate(answer, send):
            return
        headers = _apply(headers, answer.request_headers.response.header_mutation)
        if body:
            answer = await stream.ask(
                pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
                "request_body",
            )
            if await _immediate(answer, send):
                return
            headers = _apply(headers, answer.request_body.response.header_mutation)
        upstream = [(k, v) for k, v in headers if k not in HOP_BY_HOP and not k.startswith(":")]
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=None))
        request = self._client.build_request(
            scope["method"], self.upstream + path, headers=upstream, content=body or None
        )
        response = await self._client.send(request, stream=True)
        try:
            await self._respond(response, stream, receive, send)
        finally:
            await response.aclose()

    async def _respond(
        self, response: httpx2.Response, stream: _Stream, receive: Receive, send: Send
    ) -> None:
        reply = [(k.lower(), v) for k, v in response.headers.multi_items()]
        reply = [(k, v) for k, v in reply if k not in HOP_BY_HOP]
        empty = response.status_code in (204, 304) or response.headers.get("content-length") == "0"
        answer = await stream.ask(
            pb.ProcessingRequest(
                response_headers=pb.HttpHeaders(
                    headers=_header_map([(":status", str(response.status_code)), *reply]),
                    end_of_stream=empty,
                )
            ),
            "response_headers",
        )
        if await _immediate(answer, send):
            return
        reply = _apply(reply, answer.response_headers.response.header_mutation)
        mode = Mode.STREAMED
        if answer.HasField("mode_override"):
            mode = answer.mode_override.response_body_mode
        if empty or mode == Mode.NONE:
            # Nothing more to ask: Envoy ends the stream and relays the body as it comes.
            await stream.close()
            await _relay(response, reply, receive, send)
            return
        if mode == Mode.BUFFERED:
            whole = b"".join([c async for c in response.aiter_raw()])
            answer = await stream.ask(
                pb.ProcessingRequest(response_body=pb.HttpBody(body=whole, end_of_stream=True)),
                "response_body",
            )
            if await _immediate(answer, send):
                return
            common = answer.response_body.response
            reply = _apply(reply, common.header_mutation)
            new = _replaced(whole, common.body_mutation)
            length = next((v for k, v in reply if k == "content-length"), None)
            if length is not None and int(length) != len(new):
                raise StreamFailed("content-length does not match the mutated body")
            await _start(send, response.status_code, reply)
            await _body(send, new, more=False)
            return
        # STREAMED: Envoy drops content-length, sends the headers, then each answered chunk,
        # and the end of the body as an empty last chunk.
        reply = [(k, v) for k, v in reply if k != "content-length"]
        await _start(send, response.status_code, reply)
        async for chunk in response.aiter_raw():
            await _body(send, await self._chunk(stream, chunk, False))
        await _body(send, await self._chunk(stream, b"", True), more=False)

    @staticmethod
    async def _chunk(stream: _Stream, chunk: bytes, end: bool) -> bytes:
        message = pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=end))
        answer = await stream.ask(message, "response_body")
        if answer.HasField("immediate_response"):
            raise ConnectionResetError("the response was reset")
        return _replaced(chunk, answer.response_body.response.body_mutation)


def _header_map(pairs: Headers) -> Any:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1")) for k, v in pairs]
    )


def _apply(headers: Headers, mutation: Any) -> Headers:
    removed = {name.lower() for name in mutation.remove_headers}
    out = [(k, v) for k, v in headers if k not in removed]
    for option in mutation.set_headers:
        key = option.header.key.lower()
        value = option.header.raw_value.decode() if option.header.raw_value else option.header.value
        exists = any(k == key for k, _ in out)
        if option.append_action == 0:  # APPEND_IF_EXISTS_OR_ADD
            out.append((key, value))
        elif (option.append_action, exists) not in ((1, True), (3, False)):
            out = [(k, v) for k, v in out if k != key] + [(key, value)]
    return out


def _replaced(chunk: bytes, mutation: Any) -> bytes:
    kind = mutation.WhichOneof("mutation")
    if kind is None:
        return chunk
    if kind == "body":
        return bytes(mutation.body)
    if kind == "clear_body":
        return b""
    raise StreamFailed("streamed_response outside FULL_DUPLEX_STREAMED")


async def _immediate(answer: Any, send: Send) -> bool:
    if not answer.HasField("immediate_response"):
        return False
    reply = answer.immediate_response
    headers = _apply([], reply.headers)
    if reply.body and not any(k == "content-type" for k, _ in headers):
        headers.append(("content-type", "text/plain"))
    await _reply(send, reply.status.code or 200, headers, bytes(reply.body))
    return True


async def _start(send: Send, status: int, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )


async def _body(send: Send, chunk: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": more})
