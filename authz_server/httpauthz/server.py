"""The HTTP authorizer's listener: HTTP/1.1 with keep-alive, any method, any path.

The wire protocol is h11's (chunked and fixed-length bodies, ``Expect: 100-continue``, pipelining
refused by design, framing errors answered 400), on the server's asyncio loop; deciding is the
caller's coroutine. Each connection serves one request at a time, as Envoy's and agentgateway's
HTTP clients use it. A body is read up to ``max_body`` bytes plus one: the pipeline refuses a
longer one as too large, and the connection is then closed rather than drained.

Closing stops accepting, lets requests being answered finish within the grace period and drops
idle keep-alive connections, which the gateways reopen elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Awaitable, Callable

import h11

from authz_server.httpauthz.adapter import TEXT, HttpReply, HttpRequest

log = logging.getLogger(__name__)

Handler = Callable[[HttpRequest], Awaitable[HttpReply]]

# Envoy's default limit for a request's headers is 60 KiB; a head larger than that (give or take a
# read) is refused with 431.
MAX_HEAD = 60 * 1024
READ_SIZE = 64 * 1024


class HttpAuthzListener:
    def __init__(
        self,
        handle: Handler,
        *,
        max_body: int,
        idle_timeout: float = 75.0,
        read_timeout: float = 15.0,
    ) -> None:
        self._handle = handle
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._read_timeout = read_timeout
        self._server: asyncio.base_events.Server | None = None
        # Connection task -> whether it is answering a request now.
        self._connections: dict[asyncio.Task[None], bool] = {}
        self._closing = False

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start listening; return the bound port."""
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_port=reuse_port or None, limit=READ_SIZE
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, finish the requests in progress (within ``grace``), drop the rest."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        pending = [task for task in self._connections if not task.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        try:
            await self._exchange(task, reader, writer)
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("the HTTP authorizer failed to serve a connection")
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while not self._closing:
            try:
                head = await self._next(connection, reader, self._idle_timeout)
                if not isinstance(head, h11.Request):
                    return  # the client closed the connection (or sent nothing usable)
                self._connections[task] = True
                if connection.they_are_waiting_for_100_continue:
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    await _send(writer, connection, go_on)
                body, cut = await self._body(connection, reader)
            except h11.RemoteProtocolError as exc:
                await _refuse(writer, connection, exc)
                return
            incoming = HttpRequest(
                method=head.method.decode("ascii", "replace"),
                target=head.target.decode("latin-1"),
                http_version=head.http_version.decode("ascii", "replace"),
                headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
                body=body,
                body_cut=cut,
            )
            reply = await self._handle(incoming)
            if head.method == b"HEAD":  # the status and headers only, by HTTP's rules
                reply = HttpReply(reply.status, reply.headers)
            await _answer(writer, connection, reply, close=cut or self._closing)
            self._connections[task] = False
            if (
                cut
                or connection.our_state is not h11.DONE
                or connection.their_state is not h11.DONE
            ):
                return
            connection.start_next_cycle()

    async def _next(
        self, connection: h11.Connection, reader: asyncio.StreamReader, timeout: float
    ) -> object:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            connection.receive_data(data)
            timeout = self._read_timeout

    async def _body(
        self, connection: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[bytes, bool]:
        body = bytearray()
        limit = self._max_body + 1
        while True:
            event = await self._next(connection, reader, self._read_timeout)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) >= limit:
                    return bytes(body[:limit]), True
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body), False
            else:
                raise h11.RemoteProtocolError("the request ended before its body did")


async def _send(writer: asyncio.StreamWriter, connection: h11.Connection, event: h11.Event) -> None:
    data = connection.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def _answer(
    writer: asyncio.StreamWriter, connection: h11.Connection, reply: HttpReply, *, close: bool
) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    if close:
        headers.append((b"connection", b"close"))
    try:
        reason = http.HTTPStatus(reply.status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
    await _send(writer, connection, response)
    if reply.body and connection.our_state is h11.SEND_BODY:
        await _send(writer, connection, h11.Data(data=reply.body))
    if connection.our_state is h11.SEND_BODY:
        await _send(writer, connection, h11.EndOfMessage())


async def _refuse(
    writer: asyncio.StreamWriter, connection: h11.Connection, error: h11.RemoteProtocolError
) -> None:
    """A request h11 cannot read is no request to judge: 400 (or h11's status), then close."""
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    status = error.error_status_hint if 400 <= error.error_status_hint <= 599 else 400
    body = b"malformed HTTP request\n"
    reply = HttpReply(status, (("content-type", TEXT),), body)
    with contextlib.suppress(h11.LocalProtocolError):
        await _answer(writer, connection, reply, close=True)
