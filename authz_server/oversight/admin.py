"""The admin listener: a JSON API and one page for the people who revoke agents and decide
approvals (``--admin-address``, see ``docs/admin.md``).

Everything here needs the admin token. The API takes it as ``Authorization: Bearer`` on every
call; the page takes it once in a login form and then keeps a session: a random id in an
``HttpOnly``, ``SameSite=Strict`` cookie, held in this process's memory until it expires or the
person logs out. Every form of the page carries the session's CSRF token, and every POST from the
page must also come from the page's own origin (``Origin``, else ``Referer``), so a page on another
site cannot act with the person's session. The token itself never appears in a page, a URL, a
response or a log line.

It is a standard-library threaded HTTP server: a few people use it, each action is a couple of
store operations, and it must keep answering whatever the check path is doing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from authz_server.oversight import page
from authz_server.oversight.approvals import ID as APPROVAL_ID
from authz_server.oversight.approvals import STATES, Approvals
from authz_server.oversight.errors import (
    ApprovalError,
    ApprovalNotFound,
    ApprovalNotPending,
    OversightError,
    RevocationError,
)
from authz_server.oversight.revocations import SELECTORS, Revocations
from authz_server.state import StoreUnavailable, StoreValueError

log = logging.getLogger(__name__)

API = "/api/v1/"
COOKIE = "authz_admin_session"
MAX_BODY = 64 * 1024
SESSION_TTL = 2 * 3600.0
MAX_SESSIONS = 256
MAX_NAME = 64
API_BY = "admin api"
PAGE_BY = "admin page"

SECURITY_HEADERS = (
    ("Content-Security-Policy", page.CSP),
    ("X-Content-Type-Options", "nosniff"),
    # Not "no-referrer": under it browsers send "Origin: null" with a form POST, and the page's
    # POSTs are checked against their origin. "same-origin" still tells other sites nothing.
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


class AdminError(OversightError):
    """The admin listener cannot be set up as asked (an unusable token)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, value: Any, *headers: tuple[str, str]) -> Reply:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(status, body, "application/json", headers)


def _error(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    return _json(status, {"error": message}, *headers)


def _html(status: int, text: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, text.encode(), "text/html; charset=utf-8", headers)


def _see_other(location: str, *headers: tuple[str, str]) -> Reply:
    return Reply(303, b"", "text/plain; charset=utf-8", (("Location", location), *headers))


@dataclass(eq=False)
class Session:
    """One logged-in browser. Only the sha256 of the cookie value is kept."""

    csrf: str
    name: str
    expires: float
    flash: str = ""
    error: str = ""

    def notes(self) -> tuple[str, str]:
        """The messages of the last action, shown once."""
        notes, self.flash, self.error = (self.flash, self.error), "", ""
        return notes


@dataclass(eq=False)
class Sessions:
    """The page's sessions, in memory: a restart logs everyone out, which is safe."""

    ttl: float = SESSION_TTL
    limit: int = MAX_SESSIONS
    clock: Callable[[], float] = time.monotonic
    _by_digest: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _digest(cookie: str) -> str:
        return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()

    def open(self, name: str) -> tuple[str, Session]:
        """A new session; returns the cookie value and the session."""
        cookie = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), name, self.clock() + self.ttl)
        with self._lock:
            now = self.clock()
            for digest in [d for d, s in self._by_digest.items() if s.expires <= now]:
                del self._by_digest[digest]
            while len(self._by_digest) >= self.limit:  # the oldest session goes first
                del self._by_digest[next(iter(self._by_digest))]
            self._by_digest[self._digest(cookie)] = session
        return cookie, session

    def find(self, cookie: str) -> Session | None:
        if not cookie:
            return None
        digest = self._digest(cookie)
        with self._lock:
            session = self._by_digest.get(digest)
            if session is not None and session.expires <= self.clock():
                del self._by_digest[digest]
                return None
            return session

    def close(self, cookie: str) -> None:
        with self._lock:
            self._by_digest.pop(self._digest(cookie), None)


def _cookie(headers: Message) -> str:
    for header in headers.get_all("Cookie") or ():
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
    return ""


def _same_origin(headers: Message) -> bool:
    """Whether a POST comes from a page of this listener: its ``Origin`` (else ``Referer``)
    names the host the request was sent to. Neither, or ``Origin: null``: refused."""
    host = (headers.get("Host") or "").strip().lower()
    source = headers.get("Origin") or headers.get("Referer") or ""
    if not host or not source or source == "null":
        return False
    try:
        return urlsplit(source).netloc.lower() == host
    except ValueError:
        return False


def _form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0] for name, values in fields.items()}


def _clean_name(name: str) -> str:
    name = "".join(c for c in name if c.isprintable()).strip()[:MAX_NAME]
    return name or PAGE_BY


class AdminApp:
    """The routes, independent of the HTTP server: ``handle`` gets a request, gives a reply.
    Never raises: an unexpected error is logged and answered 500 without details."""

    def __init__(
        self,
        token: str,
        revocations: Revocations,
        approvals: Approvals,
        *,
        sessions: Sessions | None = None,
    ) -> None:
        if not token:
            raise AdminError("the admin token is empty")
        self._token = token.encode()
        self.revocations = revocations
        self.approvals = approvals
        self.sessions = sessions or Sessions()

    def handle(self, method: str, path: str, query: str, headers: Message, body: bytes) -> Reply:
        api = path.startswith(API)
        try:
            if api:
                return self._api(method, path[len(API) :], query, headers, body)
            return self._page(method, path, query, headers, body)
        except StoreUnavailable as exc:
            log.warning("admin %s %s: the state store is unavailable: %s", method, path, exc)
            if api:
                return _error(503, "the state store is unavailable")
            return _html(503, page.message("Unavailable", "The state store is unavailable."))
        except Exception:
            log.exception("admin %s %s failed", method, path)
            if api:
                return _error(500, "internal error")
            return _html(500, page.message("Error", "Something went wrong; see the log."))

    def _token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    # The JSON API

    def _api(self, method: str, path: str, query: str, headers: Message, body: bytes) -> Reply:
        scheme, _, given = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not self._token_matches(given.strip()):
            return _error(
                401,
                "a valid admin token is required (Authorization: Bearer)",
                ("WWW-Authenticate", 'Bearer realm="authz-server admin"'),
            )
        parts = path.split("/")
        try:
            if parts == ["revocations"]:
                if method == "GET":
                    return _json(200, [r.to_json() for r in self.revocations.list()])
                if method == "POST":
                    return self._api_revoke(body)
                return _error(405, "use GET or POST", ("Allow", "GET, POST"))
            if len(parts) == 2 and parts[0] == "revocations":
                if method != "DELETE":
                    return _error(405, "use DELETE", ("Allow", "DELETE"))
                if not self.revocations.remove(parts[1]):
                    return _error(404, "no active revocation has this id")
                return _json(200, {"id": parts[1], "removed": True})
            if parts == ["approvals"]:
                if method != "GET":
                    return _error(405, "use GET", ("Allow", "GET"))
                return self._api_approvals(query)
            if len(parts) == 3 and parts[0] == "approvals" and parts[2] in ("approve", "reject"):
                if method != "POST":
                    return _error(405, "use POST", ("Allow", "POST"))
                return self._api_decide(parts[1], parts[2], body)
        except (ApprovalNotFound, ApprovalNotPending, RevocationError, ApprovalError) as exc:
            status = {ApprovalNotFound: 404, ApprovalNotPending: 409}.get(type(exc), 400)
            return _error(status, str(exc))
        except StoreValueError as exc:
            return _error(400, str(exc))
        return _error(404, "no such endpoint")

    @staticmethod
    def _body(body: bytes, *, required: bool) -> dict[str, Any]:
        if not body.strip() and not required:
            return {}
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise RevocationError("the body is not JSON") from None
        if not isinstance(value, dict):
            raise RevocationError("the body must be a JSON object")
        return value

    @staticmethod
    def _by(body: dict[str, Any]) -> str:
        by = body.pop("by", API_BY)
        if not isinstance(by, str):
            raise ApprovalError("by must be a string")
        return by[:MAX_NAME] or API_BY

    def _api_revoke(self, body: bytes) -> Reply:
        fields = self._body(body, required=True)
        by = self._by(fields)
        return _json(201, self.revocations.from_json(fields, by=by).to_json())

    def _api_approvals(self, query: str) -> Reply:
        wanted = parse_qs(query).get("state", ["pending"])[0]
        if wanted != "all" and wanted not in STATES:
            raise ApprovalError(f"state must be all or one of {', '.join(STATES)}")
        found = self.approvals.list(None if wanted == "all" else wanted)
        return _json(200, [a.to_json() for a in found])

    def _api_decide(self, id: str, action: str, body: bytes) -> Reply:
        fields = self._body(body, required=False)
        by = self._by(fields)
        reason = fields.pop("reason", "")
        if fields:
            raise ApprovalError(f"unknown fields: {', '.join(sorted(fields)[:5])}")
        if not isinstance(reason, str):
            raise ApprovalError("reason must be a string")
        if action == "approve":
            if reason:
                raise ApprovalError("reason is for reject only")
            return _json(200, self.approvals.approve(id, by=by).to_json())
        return _json(200, self.approvals.reject(id, by=by, reason=reason).to_json())

    # The page

    def _page(self, method: str, path: str, query: str, headers: Message, body: bytes) -> Reply:
        if path == "/":
            if method != "GET":
                return _html(405, page.message("Not allowed", "Use GET."), ("Allow", "GET"))
            return self._show(headers, query)
        action = self._action(path)
        if action is None and path not in ("/login", "/logout"):
            return _html(404, page.message("Not found", "There is no such page."))
        if method != "POST":
            return _html(405, page.message("Not allowed", "Use POST."), ("Allow", "POST"))
        if not _same_origin(headers):
            return _html(403, page.message("Refused", "This form was not sent by this page."))
        form = _form(body)
        if path == "/login":
            return self._login(form)
        cookie = _cookie(headers)
        session = self.sessions.find(cookie)
        if session is None:
            return _html(403, page.message("Refused", "Your session ended: log in again."))
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            return _html(403, page.message("Refused", "This form is out of date: reload."))
        if action is None:  # /logout
            self.sessions.close(cookie)
            return _see_other("/", ("Set-Cookie", self._set_cookie("", 0)))
        try:
            session.flash = action(session, form)
        except (OversightError, StoreValueError) as exc:
            session.error = str(exc)
        return _see_other("/")

    def _action(self, path: str) -> Callable[[Session, dict[str, str]], str] | None:
        """What a POST to ``path`` does for a logged-in session (None: no such action)."""
        parts = path.strip("/").split("/")
        if parts == ["revocations"]:
            return self._revoke
        if len(parts) == 3 and parts[0] == "revocations" and parts[2] == "end":
            return lambda session, form: self._end(parts[1])
        if len(parts) == 3 and parts[0] == "approvals" and parts[2] == "approve":
            return lambda session, form: self._approve(parts[1], session)
        if len(parts) == 3 and parts[0] == "approvals" and parts[2] == "reject":
            return lambda session, form: self._reject(parts[1], session, form)
        return None

    def _show(self, headers: Message, query: str) -> Reply:
        wanted = parse_qs(query).get("approval", [""])[0]
        wanted = wanted if APPROVAL_ID.fullmatch(wanted) else ""
        session = self.sessions.find(_cookie(headers))
        if session is None:
            return _html(200, page.login(approval=wanted))
        focus = self.approvals.get(wanted) if wanted else None
        flash, error = session.notes()
        if wanted and focus is None:
            error = error or "The approval you were sent to is gone: it expired or was used."
        return _html(
            200,
            page.dashboard(
                csrf=session.csrf,
                name=session.name,
                approvals=self.approvals.list("pending"),
                revocations=self.revocations.list(),
                flash=flash,
                error=error,
                focus=focus,
            ),
        )

    def _set_cookie(self, value: str, max_age: int) -> str:
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"

    def _login(self, form: dict[str, str]) -> Reply:
        wanted = form.get("approval", "")
        wanted = wanted if APPROVAL_ID.fullmatch(wanted) else ""
        if not self._token_matches(form.get("token", "")):
            log.warning("admin page: a login with a wrong token")
            return _html(401, page.login("That is not the admin token.", wanted))
        cookie, _ = self.sessions.open(_clean_name(form.get("name", "")))
        location = f"/?approval={wanted}#approval-{wanted}" if wanted else "/"
        return _see_other(
            location, ("Set-Cookie", self._set_cookie(cookie, int(self.sessions.ttl)))
        )

    def _revoke(self, session: Session, form: dict[str, str]) -> str:
        selector = form.get("selector", "")
        if selector not in (*SELECTORS, "everyone"):
            raise RevocationError("choose what to stop")
        body: dict[str, Any] = {"reason": form.get("reason", "")}
        if selector == "everyone":
            body["everyone"] = True
        else:
            body[selector] = form.get("value", "")
        if form.get("issuer", "").strip():
            body["issuer"] = form["issuer"]
        tools = [t.strip() for t in form.get("tools", "").split(",") if t.strip()]
        if tools:
            body["tools"] = tools
        if form.get("for", "").strip():
            body["for"] = form["for"].strip()
        revocation = self.revocations.from_json(body, by=session.name)
        return f"Revocation {revocation.id} is active."

    def _end(self, id: str) -> str:
        if not self.revocations.remove(id):
            raise RevocationError("that revocation had already ended")
        return f"Revocation {id} ended."

    def _approve(self, id: str, session: Session) -> str:
        approval = self.approvals.approve(id, by=session.name)
        return f"Approved {approval.target} for one call."

    def _reject(self, id: str, session: Session, form: dict[str, str]) -> str:
        approval = self.approvals.reject(id, by=session.name, reason=form.get("reason", ""))
        return f"Rejected {approval.target}."


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "authz-server-admin"
    sys_version = ""
    timeout = 15  # a connection that stalls gives its thread back

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        target = urlsplit(self.path)
        if "Transfer-Encoding" in self.headers:
            self._send(_error(411, "send the body with a Content-Length"))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(_error(413, f"the body must be at most {MAX_BODY} bytes"))
            return
        body = self.rfile.read(length) if length else b""
        self._send(self.server.app.handle(method, target.path, target.query, self.headers, body))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in (*SECURITY_HEADERS, *reply.headers):
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        # The default line has the request line's query; ours has the path only.
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(getattr(self, "path", "")).path
        log.debug("admin %s %s -> %s", getattr(self, "command", "-"), path[:200], code)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, app: AdminApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stalls past the timeout or hangs up: not worth a traceback on stderr.
        log.debug("admin connection from %s failed", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up in DNS, which can stall a start.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class AdminServer:
    """The admin listener in a background thread: :meth:`start` binds and returns the port."""

    def __init__(self, host: str, port: int, app: AdminApp) -> None:
        self.host = host
        self.requested_port = port
        self.app = app
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def build(
        cls, host: str, port: int, token: str, revocations: Revocations, approvals: Approvals
    ) -> AdminServer:
        return cls(host, port, AdminApp(token, revocations, approvals))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> int:
        self._server = _Server(self.host, self.requested_port, self.app)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="admin-http", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def read_token(path: Any) -> str:
    """The admin token in a file (surrounding white space dropped: a Kubernetes Secret often
    ends with a newline). :class:`AdminError` when the file is unreadable, empty, shorter than
    16 characters or not printable ASCII without spaces (it travels in an HTTP header)."""
    try:
        with open(path, "rb") as file:
            raw = file.read(4097)
    except OSError as exc:
        raise AdminError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise AdminError(f"the admin token file {path} is not ASCII text") from None
    if not token:
        raise AdminError(f"the admin token file {path} is empty")
    if len(token) > 4096 or len(token) < 16 or not all("!" <= c <= "~" for c in token):
        raise AdminError(
            f"the admin token in {path} must be 16 to 4096 printable characters without "
            "spaces; make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token
