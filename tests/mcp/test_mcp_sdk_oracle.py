"""The official MCP SDK server as the oracle: what authz-server allows is what the tool runs with.

The same bytes and headers go to the SDK's Streamable HTTP server (in process, through httpx's
ASGI transport, both protocol eras) and to authz-server's decision path (CheckRequest -> adapter
-> decoder -> engine, as the server runs it). The tool records the arguments it was called with;
the allowing policy echoes, in headers, the values it judged. Whenever authz-server allows, every
call the tool received must carry exactly those values; and ordinary SDK traffic is never refused.

The policy set is deliberately naive about requests without an MCP message (it allows them, as
many do for GET streams): a body that reads as "no message" to us but as a call to the server
is then a bypass the properties find.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import brotli
import httpx2
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.server import MCPServer

from authz_server.decision import Decision
from authz_server.envoy.adapter import CheckRequest
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.request import Request
from tests.mcp.bodies import deflate_polyglot
from tests.policy.conftest import policy_yaml

Scope = MutableMapping[str, Any]
ALLOWED_COMMANDS = ("ls", "pwd", "echo hi")
WEI_LIMIT = "100000000000000000000.0"  # 100 ETH in wei, as a CEL double
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "mcp", "version": "0.1.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
FIXTURES = Path(__file__).parents[1] / "fixtures" / "mcp" / "sdk_bodies.json"
RECORDED = json.loads(FIXTURES.read_text())["requests"]

GUARD = (
    'mcp.ToolCall.Name == "run" && has(mcp.ToolCall.Arguments.command)'
    f" && mcp.ToolCall.Arguments.command in {list(ALLOWED_COMMANDS)!r}"
    f" && (!has(mcp.ToolCall.Arguments.wei) || mcp.ToolCall.Arguments.wei <= {WEI_LIMIT})"
).replace("'", '"')
ECHO = (
    'envoy.Allowed().WithHeader("x-seen-command", mcp.ToolCall.Arguments.command)'
    '.WithHeader("x-seen-wei", has(mcp.ToolCall.Arguments.wei)'
    ' ? string(mcp.ToolCall.Arguments.wei) : "-").Response()'
)
POLICIES = {
    "run.yaml": policy_yaml(
        "run-guarded",
        [f'{GUARD} ? {ECHO} : envoy.Denied(403).WithBody("not allowed").Response()'],
        conditions=['mcp.Method == "tools/call"'],
    ),
    "plumbing.yaml": policy_yaml(
        "plumbing",
        ["envoy.Allowed().Response()"],
        conditions=['mcp.Method != "tools/call"'],
    ),
}


# --- the two readers -------------------------------------------------------------------------


class Upstream:
    """The SDK server with one recording tool; optionally behind a decompressing front."""

    def __init__(self, portal: BlockingPortal, decompress: bool) -> None:
        self.calls: list[dict[str, Any]] = []
        server = MCPServer("oracle")

        @server.tool()
        def run(command: Any = None, wei: Any = None) -> str:
            """Record what the tool was called with."""
            self.calls.append({"command": command, "wei": wei})
            return "ok"

        app = server.streamable_http_app(stateless_http=True, json_response=True)
        self.portal = portal
        self.lifespan = portal.wrap_async_context_manager(app.router.lifespan_context(app))
        self.lifespan.__enter__()
        front = Decompressing(app) if decompress else app
        self.client = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=front), base_url="http://127.0.0.1:8000"
        )

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
        """Send one POST; the HTTP status and the tool calls it caused."""
        start = len(self.calls)
        response = self.portal.call(lambda: self.client.post("/mcp", content=body, headers=headers))
        return response.status_code, self.calls[start:]

    def close(self) -> None:
        self.portal.call(self.client.aclose)
        self.lifespan.__exit__(None, None, None)


class Decompressing:
    """An upstream that undoes Content-Encoding before the MCP server reads the body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding",)]
        encoding = dict(scope["headers"]).get(b"content-encoding", b"").decode("latin-1")
        try:
            body = _undo(body, encoding)
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)


UNDO: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": lambda b: zlib.decompress(b, -zlib.MAX_WBITS),
    "br": brotli.decompress,
}


def _undo(body: bytes, encoding: str) -> bytes:
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed([c for c in codings if c != "identity"]):
        body = UNDO[coding](body)
    return body


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def upstreams(portal: BlockingPortal) -> Iterator[dict[bool, Upstream]]:
    made = {flag: Upstream(portal, decompress=flag) for flag in (False, True)}
    yield made
    for upstream in made.values():
        upstream.close()


@pytest.fixture(scope="module")
def authorizers(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, PolicyAuthorizer]:
    directory = tmp_path_factory.mktemp("oracle-policies")
    for name, text in POLICIES.items():
        (directory / name).write_text(text)
    made = {}
    for flag in (False, True):
        store = PolicyStore(directory)
        assert store.reload(), store.status.last_error
        made[flag] = PolicyAuthorizer(store, decompress=flag)
    return made


def check_request(body: bytes, headers: dict[str, str]) -> Any:
    """The CheckRequest Envoy sends for this POST (with_request_body, pack_as_bytes)."""
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.host, http.scheme = "POST", "/mcp", "127.0.0.1:8000", "http"
    http.protocol = "HTTP/1.1"
    http.headers.update({":method": "POST", ":path": "/mcp", **headers})
    http.headers["content-length"] = str(len(body))
    http.raw_body = body
    http.size = len(body)
    return check


def authz(authorizer: PolicyAuthorizer, body: bytes, headers: dict[str, str]) -> Decision:
    from authz_server.envoy import request_from_check

    request: Request = request_from_check(check_request(body, headers))
    return authorizer.check(request)


def seen_by_policy(decision: Decision) -> tuple[str, str]:
    headers = {h.key: h.value for h in decision.headers}
    return headers["x-seen-command"], headers["x-seen-wei"]


def same_number(received: Any, seen: str) -> bool:
    """What the policy saw (CEL's string() of it) is what the tool got: exactly for integers
    CEL holds (int64 and uint64), the nearest double for larger ones, as Kyverno reads them."""
    if isinstance(received, bool) or not isinstance(received, int | float):
        return False
    if isinstance(received, int) and -(2**63) <= received < 2**64:
        return seen == str(received)
    return float(seen) == float(received)


def judge(
    authorizers: dict[bool, PolicyAuthorizer],
    upstreams: dict[bool, Upstream],
    body: bytes,
    headers: dict[str, str],
    decompress: bool,
) -> tuple[Decision, int, list[dict[str, Any]]]:
    """Both readings of one request; fails if authz-server allowed what the tool did not get."""
    decision = authz(authorizers[decompress], body, headers)
    status, calls = upstreams[decompress].post(body, headers)
    if decision.allowed:
        for call in calls:
            command, wei = seen_by_policy(decision)
            assert call["command"] == command, (call, decision)
            assert call["command"] in ALLOWED_COMMANDS
            if wei == "-":
                assert call["wei"] is None, (call, decision)
            else:
                assert same_number(call["wei"], wei), (call, wei)
                assert float(call["wei"]) <= 1e20
    return decision, status, calls


# --- requests ----------------------------------------------------------------------------------


def message(arguments: dict[str, Any], modern: bool, id_: int = 7) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "run", "arguments": arguments}
    if modern:
        params["_meta"] = META
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


def http_headers(modern: bool, content_type: str | None, encoding: str | None) -> dict[str, str]:
    headers = {"accept": "application/json, text/event-stream"}
    if content_type is not None:
        headers["content-type"] = content_type
    if encoding is not None:
        headers["content-encoding"] = encoding
    if modern:
        headers.update({"mcp-protocol-version": MODERN, "mcp-method": "tools/call"})
        headers["mcp-name"] = "run"
    return headers


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": lambda b: zlib.compress(b)[2:-4],
    "br": brotli.compress,
}
CONTENT_TYPES = [
    "application/json",
    "application/json, text/plain",
    "text/plain, application/json",
    "application/jsonl",
    "application/json; charset=utf-8",
    "Application/JSON",
    "text/plain",
    None,
]

commands = st.sampled_from([*ALLOWED_COMMANDS, "rm -rf /", ""]) | st.text(max_size=12)
nul_commands = st.builds(
    lambda allowed, tail: allowed + "\x00" + tail, st.sampled_from(ALLOWED_COMMANDS), st.text()
)
numbers = (
    st.integers(-(2**70), 2**70)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**20, 10**20 + 1, -(2**63) - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(10**19, 10**21)
)


@st.composite
def arguments(draw: st.DrawFn) -> dict[str, Any]:
    args: dict[str, Any] = {"command": draw(commands | nul_commands)}
    if draw(st.booleans()):
        args["wei"] = draw(numbers)
    for key in draw(st.lists(st.sampled_from(["command\x00", "wei\x00", "\x00", "x"]), max_size=2)):
        args[key] = draw(commands | numbers)
    return args


ORACLE = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- class 1: two readings of one body --------------------------------------------------------


@ORACLE
@given(
    args=arguments(),
    modern=st.booleans(),
    content_type=st.sampled_from(CONTENT_TYPES),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "gzip, br"]),
    compressed=st.booleans(),
    decompress=st.booleans(),
)
def test_two_readings_of_one_body(
    authorizers: dict[bool, PolicyAuthorizer],
    upstreams: dict[bool, Upstream],
    args: dict[str, Any],
    modern: bool,
    content_type: str | None,
    encoding: str | None,
    compressed: bool,
    decompress: bool,
) -> None:
    body = json.dumps(message(args, modern)).encode()
    if compressed and encoding not in (None, "identity"):
        for coding in [c.strip() for c in encoding.split(",")]:
            body = COMPRESS[coding](body)
    judge(authorizers, upstreams, body, http_headers(modern, content_type, encoding), decompress)


@pytest.mark.parametrize("decompress", [False, True])
@pytest.mark.parametrize("modern", [False, True])
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_a_body_that_is_json_and_deflate(
    authorizers: dict[bool, PolicyAuthorizer],
    upstreams: dict[bool, Upstream],
    decompress: bool,
    modern: bool,
    content_type: str | None,
) -> None:
    body = deflate_polyglot(message({"command": "rm -rf /"}, modern))
    headers = http_headers(modern, content_type, "deflate")
    decision, _, calls = judge(authorizers, upstreams, body, headers, decompress)
    assert not decision.allowed
    if not decompress and content_type in ("application/json", "application/json, text/plain"):
        # The SDK runs the JSON it was sent, which is why the raw bytes are what we judge.
        assert calls == [{"command": "rm -rf /", "wei": None}]


# --- class 3: strings and numbers CEL cannot hold ---------------------------------------------


@ORACLE
@given(args=arguments(), modern=st.booleans())
def test_values_reach_the_policy_as_the_tool_gets_them(
    authorizers: dict[bool, PolicyAuthorizer],
    upstreams: dict[bool, Upstream],
    args: dict[str, Any],
    modern: bool,
) -> None:
    body = json.dumps(message(args, modern), ensure_ascii=False).encode()
    headers = http_headers(modern, "application/json", None)
    decision, status, calls = judge(authorizers, upstreams, body, headers, False)
    if any("\x00" in k or (isinstance(v, str) and "\x00" in v) for k, v in args.items()):
        assert not decision.allowed
        return
    wei = args.get("wei")
    # Clear of the limit, where rounding to a double decides.
    affordable = wei is None or float(wei) < 1e20 * (1 - 1e-9)
    if args["command"] in ALLOWED_COMMANDS and set(args) <= {"command", "wei", "x"} and affordable:
        # Ordinary values are never refused, and the SDK ran them.
        assert decision.allowed, decision.reason
        assert status == 200 and len(calls) == 1


# --- no ordinary SDK traffic is refused -------------------------------------------------------


@pytest.mark.parametrize("decompress", [False, True])
@pytest.mark.parametrize("recorded", RECORDED, ids=[r["name"] for r in RECORDED])
def test_recorded_sdk_traffic_is_never_refused(
    authorizers: dict[bool, PolicyAuthorizer], recorded: dict[str, Any], decompress: bool
) -> None:
    from authz_server.envoy import request_from_check

    body = recorded["body"].encode()
    check = check_request(body, recorded["headers"])
    http = check.attributes.request.http
    http.method = recorded["http_method"]
    http.headers[":method"] = recorded["http_method"]
    if not body:
        del http.headers["content-length"]
    decision = authorizers[decompress].check(request_from_check(check))
    assert decision.allowed or decision.policy == "run-guarded", decision.reason
