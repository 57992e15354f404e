"""A plain HTTP/1.1 client for the HTTP authorizer tests: exact headers, nothing added."""

from __future__ import annotations

import http.client
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def send(
    port: int,
    method: str,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    connection: http.client.HTTPConnection | None = None,
) -> Answer:
    """Send one request with exactly ``headers`` (and Content-Length when there is a body)."""
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        framed = any(name.lower() == "content-length" for name, _ in headers)
        if (body or method in ("POST", "PUT", "PATCH")) and not framed:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        reply = conn.getresponse()
        data = reply.read()
        return Answer(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
    finally:
        if own:
            conn.close()
