"""A real admin listener on loopback over a real SQLite store, and plain HTTP to talk to it
(urllib, redirects not followed, so a test sees the 303s and cookies the page answers)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from authz_server.oversight import Approval, Approvals, Revocations, canonical_digest
from authz_server.oversight.admin import COOKIE, AdminServer
from authz_server.state import Store, open_store

TOKEN = "admin-token-for-tests-7f3a9c"
CALLER = {
    "issuer": "https://idp.example.com",
    "subject": "agent-7",
    "client_id": "ci-bot",
    "spiffe_id": "",
    "method": "bearer",
}


@dataclass
class Admin:
    server: AdminServer
    store: Store
    approvals: Approvals
    revocations: Revocations

    @property
    def url(self) -> str:
        return self.server.url

    def pending(self, target: str, arguments: Any, reason: str = "a human decides") -> Approval:
        """A pending approval, made the way the request path makes one."""
        digest = canonical_digest(arguments)
        return self.approvals.request(CALLER, "tools/call", target, digest, arguments, reason)

    def stop(self) -> None:
        self.server.stop()
        self.store.close()


def start_admin(directory: Path, token: str = TOKEN) -> Admin:
    store = open_store(f"sqlite://{directory / 'state.db'}")
    approvals, revocations = Approvals(store), Revocations(store)
    server = AdminServer.build("127.0.0.1", 0, token, revocations, approvals)
    server.start()
    return Admin(server, store, approvals, revocations)


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=10) as reply:
            return Answer(reply.status, reply.headers, reply.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.headers, err.read())


def api(
    admin: Admin,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
) -> Answer:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    return http(f"{admin.url}/api/v1/{path}", method, data, headers)


def form(
    admin: Admin,
    path: str,
    fields: dict[str, str],
    *,
    cookie: str = "",
    origin: str | None = "",
) -> Answer:
    """A form POST as a browser sends it; ``origin`` "" means this listener's own origin, None
    leaves the header out."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin or admin.url
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    body = urllib.parse.urlencode(fields).encode()
    return http(f"{admin.url}{path}", "POST", body, headers)


def log_in(admin: Admin, name: str = "alice") -> str:
    """Log in through the form; the session cookie's value."""
    answer = form(admin, "/login", {"token": TOKEN, "name": name})
    assert answer.status == 303, answer.text
    match = re.match(rf"{COOKIE}=([^;]+);", answer.headers["Set-Cookie"])
    assert match
    return match.group(1)


def csrf_of(admin: Admin, cookie: str) -> str:
    """The CSRF token in the page's forms for this session."""
    page = http(f"{admin.url}/", headers={"Cookie": f"{COOKIE}={cookie}"})
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)
