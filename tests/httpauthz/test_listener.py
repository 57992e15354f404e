"""The HTTP authorizer's listener on a loopback socket, with a recording handler: HTTP/1.1 framing
(chunked and fixed-length bodies, 100-continue, keep-alive, HEAD), the body limit, and requests
it cannot read."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from authz_server.httpauthz import HttpAuthzListener, HttpReply, HttpRequest

MAX_BODY = 1024


class Running:
    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []
        self.loop = asyncio.new_event_loop()
        self.listener = HttpAuthzListener(self._handle, max_body=MAX_BODY, read_timeout=2)
        self.port = 0
        self.stop = False

    async def _handle(self, request: HttpRequest) -> HttpReply:
        self.seen.append(request)
        status = 200 if request.target.startswith("/allow") else 403
        return HttpReply(status, (("content-type", "text/plain"),), f"{len(request.body)}".encode())

    def exchange(self, data: bytes, *, wait_close: bool = True) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(data)
            if not wait_close:
                return sock.recv(65536)
            sock.shutdown(socket.SHUT_WR)
            return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def running() -> Iterator[Running]:
    state = Running()
    started = threading.Event()

    async def main() -> None:
        state.port = await state.listener.start("127.0.0.1", 0)
        started.set()
        while not state.stop:
            await asyncio.sleep(0.05)
        await state.listener.close(1.0)

    thread = threading.Thread(target=state.loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(5)
    yield state
    state.stop = True
    thread.join(5)


def _statuses(raw: bytes) -> list[int]:
    # Each response's body runs straight into the next status line.
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_fixed_length_and_chunked_bodies_arrive_whole(running: Running) -> None:
    raw = running.exchange(
        b"POST /allow HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /allow HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        b"GET /deny HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert _statuses(raw) == [200, 200, 403]
    assert [r.body for r in running.seen] == [b"hello", b"abcdefg", b""]
    assert [r.method for r in running.seen] == ["POST", "POST", "GET"]
    assert running.seen[1].header("transfer-encoding") == "chunked"


def test_100_continue_is_answered_before_the_body_is_read(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(
            b"POST /allow HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"ok")
        sock.shutdown(socket.SHUT_WR)
        assert _statuses(_read_all(sock)) == [200]
    assert running.seen[0].body == b"ok"


def test_a_body_over_the_limit_is_passed_on_one_byte_over_and_the_connection_closed(
    running: Running,
) -> None:
    body = b"x" * (MAX_BODY * 4)
    head = f"POST /deny HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    raw = running.exchange(head + body + b"GET /allow HTTP/1.1\r\nHost: h\r\n\r\n")
    assert _statuses(raw) == [403]  # the second request is never read
    (request,) = running.seen
    assert request.body_cut and len(request.body) == MAX_BODY + 1
    assert b"connection: close" in raw.lower()


def test_head_gets_the_status_and_headers_only(running: Running) -> None:
    raw = running.exchange(b"HEAD /deny HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert _statuses(raw) == [403]
    assert raw.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
)
def test_a_request_it_cannot_read_is_400_and_never_judged(running: Running, data: bytes) -> None:
    raw = running.exchange(data)
    assert _statuses(raw) == [400]
    assert running.seen == []


def test_an_oversized_head_is_refused(running: Running) -> None:
    raw = running.exchange(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert _statuses(raw)[0] in (400, 431)
    assert running.seen == []


def _one_response(sock: socket.socket) -> bytes:
    """Exactly one response (its head and its Content-Length bytes), however it arrives."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    assert len(body) == length
    return head + b"\r\n\r\n" + body


def test_closing_drops_idle_connections(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"GET /allow HTTP/1.1\r\nHost: h\r\n\r\n")
        assert _statuses(_one_response(sock)) == [200]
        running.stop = True
        sock.settimeout(5)
        assert _read_all(sock) == b""  # closed by the server, not by a timeout
