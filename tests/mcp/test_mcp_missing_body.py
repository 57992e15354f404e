"""The body the gateway did not forward, judged by the example library as the server runs it.

A POST whose body is missing (chunked or of unknown length and not forwarded, cut by
agentgateway, or announced by Mcp-Method / Mcp-Name headers) must be refused before the
policies: the example library allows a request without a body as protocol plumbing (GET
streams, DELETE), and the upstream would run whatever the client really sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import DecidedBy
from authz_server.envoy.adapter import CheckRequest
from authz_server.mcp import FailureReason
from authz_server.policy.engine import Engine
from authz_server.policy.loader import load_directory
from authz_server.policy.testing import decide

POLICIES = Path(__file__).resolve().parents[2] / "policies"
MERGE = (
    '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"merge_pull_request",'
    '"arguments":{"owner":"octo","repo":"widgets","pull_number":42}}}'
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_directory(POLICIES))


def check(method: str, body: str = "", size: int | None = None, **headers: str) -> Any:
    message = CheckRequest()
    http = message.attributes.request.http
    http.method, http.path, http.host, http.scheme = method, "/mcp", "mcp.example", "https"
    http.headers.update({":method": method, ":path": "/mcp", **headers})
    http.body = body
    http.size = len(body.encode()) if size is None else size
    return message


@pytest.mark.parametrize(
    "request_",
    [
        check("POST", **{"transfer-encoding": "chunked", "content-type": "application/json"}),
        check("POST", **{"content-type": "application/json"}),  # HTTP/2, no content-length
        check("POST", size=-1),  # agentgateway cut it, and forwarded nothing
        check("POST", **{"mcp-method": "tools/call", "mcp-name": "merge_pull_request"}),
        check("GET", **{"mcp-method": "tools/call"}),
    ],
    ids=["chunked", "unknown-length", "agentgateway-cut", "mcp-headers", "get-with-mcp-method"],
)
def test_a_request_whose_body_was_not_forwarded_is_refused(engine: Engine, request_: Any) -> None:
    decision = decide(engine, request_)
    assert not decision.allowed
    assert decision.decided_by is DecidedBy.DECODE
    assert decision.reason in (FailureReason.MISSING_BODY, FailureReason.TRUNCATED)


def test_agentgateway_cut_body_is_truncated_even_when_the_prefix_parses(engine: Engine) -> None:
    # The prefix the gateway forwarded is a complete, allowed message; what the client sent
    # goes on (agentgateway >= 1.2 says so with size -1).
    allowed = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    assert decide(engine, check("POST", allowed)).allowed
    decision = decide(engine, check("POST", allowed, size=-1))
    assert (decision.allowed, decision.reason) == (False, FailureReason.TRUNCATED)


@pytest.mark.parametrize(
    "request_",
    [
        check("GET", **{"accept": "text/event-stream", "mcp-session-id": "s-1"}),
        check("DELETE", **{"mcp-session-id": "s-1"}),
    ],
    ids=["get-stream", "delete-session"],
)
def test_requests_without_a_body_stay_plumbing(engine: Engine, request_: Any) -> None:
    assert decide(engine, request_).allowed


def test_a_forwarded_body_is_judged(engine: Engine) -> None:
    decision = decide(engine, check("POST", MERGE, **{"content-type": "application/json"}))
    assert not decision.allowed
    assert decision.policy == "github-no-merge"
