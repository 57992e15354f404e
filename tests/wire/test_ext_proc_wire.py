"""ext_proc over the wire: a gateway built from the official Envoy protos (xds-protos, in its own
interpreter) drives whole streams against a real ``authz-server serve``, with responses recorded
from the MCP SDK server in both protocol eras (SSE in the handshake era, JSON in 2026-07-28).

The policies (``listing_policies/``) let every call through except tools and prompts named
``hidden_*``: those are refused when called and must be missing from every list a client gets,
whatever the gateway's body mode, however the SSE stream is cut; everything else passes byte for
byte.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator

import pytest
from conftest import wire_python
from listing_wire import (
    LISTING_POLICIES,
    body_of,
    drive,
    exchange,
    header,
    names,
    recorded,
    result_of,
    sse_messages,
)

from tests.serving import ServerProcess, start_server, stop_server

GATEWAYS = ("envoy", "envoy-static", "envoy-buffered", "agentgateway")
ERAS = ("legacy", "2026-07-28")
VISIBLE_PAGE_1 = ["list_issues", "create_issue"]
VISIBLE_PAGE_2 = ["report_progress"]
SMALL_CAP = 2048


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    running = start_server(LISTING_POLICIES)
    yield running
    stop_server(running)


def _content_type(name: str) -> str:
    return dict(recorded()[name]["response"]["headers"])["content-type"]


def test_a_list_loses_exactly_the_tools_no_call_may_use(server: ServerProcess) -> None:
    cases = [
        exchange(f"{era}/tools/list#{page}", gateway)
        for era in ERAS
        for page in (1, 2)
        for gateway in GATEWAYS
    ]
    results = drive(server.target, cases)
    for case in cases:
        result = results[case["label"]]
        assert "failed" not in result, (case["label"], result)
        assert result["after_close"] == []
        name = case["label"].split(":", 1)[1]
        listed = result_of(body_of(result), _content_type(name))
        page_1 = name.endswith("#1")
        assert names(listed) == (VISIBLE_PAGE_1 if page_1 else VISIBLE_PAGE_2), case["label"]
        # The cursor of the first page survives, so the client asks for the second.
        assert listed.get("nextCursor") == ("page-2" if page_1 else None)


def test_both_eras_list_the_same_tools_and_keep_the_rest_of_the_result(
    server: ServerProcess,
) -> None:
    cases = [exchange(f"{era}/tools/list#1") for era in ERAS]
    results = drive(server.target, cases)
    legacy, modern = (
        result_of(body_of(results[c["label"]]), _content_type(c["label"].split(":", 1)[1]))
        for c in cases
    )
    assert names(legacy) == names(modern) == VISIBLE_PAGE_1
    # The modern result's other fields (cacheScope, resultType) are kept as they came.
    assert modern["resultType"] == "complete" and modern["cacheScope"] == "private"
    schema = next(t for t in modern["tools"] if t["name"] == "list_issues")["inputSchema"]
    assert schema["properties"] == {"repo": {"type": "string"}}


def test_prompt_lists_are_filtered_and_other_lists_pass(server: ServerProcess) -> None:
    cases = [exchange(f"{era}/{m}#1") for era in ERAS for m in ("prompts/list", "resources/list")]
    results = drive(server.target, cases)
    for era in ERAS:
        prompts = results[f"envoy:{era}/prompts/list#1"]
        listed = result_of(body_of(prompts), _content_type(f"{era}/prompts/list#1"))
        assert names(listed, "prompts") == ["review_pr"]
        resources = results[f"envoy:{era}/resources/list#1"]
        original = b"".join(
            base64.b64decode(c) for c in recorded()[f"{era}/resources/list#1"]["response"]["chunks"]
        )
        assert body_of(resources) == original  # nothing to hide: the exact bytes


def test_json_lists_get_their_new_content_length(server: ServerProcess) -> None:
    cases = [exchange("2026-07-28/tools/list#1", g) for g in ("envoy", "envoy-buffered")]
    results = drive(server.target, cases)
    for case in cases:
        result = results[case["label"]]
        # The client's gateway checks the length (a mismatch would have failed the exchange).
        assert header(result, "content-length") == str(len(body_of(result)))
    # Envoy was asked to buffer the JSON body (one message) instead of streaming it.
    assert results["envoy:2026-07-28/tools/list#1"]["overrides"] == ["BUFFERED"]
    assert results["envoy:2026-07-28/tools/list#1"]["response_body_messages"] == 1


def _cuts(body: bytes) -> list[int]:
    """Cut points: every 7 bytes, and between each CR and LF of the first event's line ends."""
    cuts = set(range(7, len(body), 7))
    cuts |= {m.start() + 1 for m in re.finditer(rb"\r\n", body)}
    return sorted(cuts)


@pytest.mark.parametrize("gateway", ["envoy", "envoy-static", "agentgateway"])
@pytest.mark.parametrize("name", ["legacy/tools/list#1", "2026-07-28/tools/list#1"])
def test_a_list_split_across_chunks_is_rewritten_whole(
    server: ServerProcess, gateway: str, name: str
) -> None:
    body = b"".join(base64.b64decode(c) for c in recorded()[name]["response"]["chunks"])
    whole = exchange(name, gateway, label="whole")
    split = exchange(name, gateway, label="split", cuts=_cuts(body))
    results = drive(server.target, [whole, split])
    assert body_of(results["split"]) == body_of(results["whole"])
    listed = result_of(body_of(results["split"]), _content_type(name))
    assert names(listed) == VISIBLE_PAGE_1
    if gateway != "envoy" or name.startswith("legacy"):  # Envoy buffers JSON lists
        assert results["split"]["response_body_messages"] > 20


@pytest.mark.parametrize("gateway", ["envoy-static", "agentgateway"])
def test_a_split_list_with_nothing_to_hide_arrives_whole(
    server: ServerProcess, gateway: str
) -> None:
    name = "2026-07-28/resources/list#1"
    body = b"".join(base64.b64decode(c) for c in recorded()[name]["response"]["chunks"])
    split = exchange(name, gateway, label="split", cuts=list(range(5, len(body), 5)))
    assert body_of(drive(server.target, [split])["split"]) == body


@pytest.mark.parametrize(
    "name", ["legacy/tools/call#2", "2026-07-28/tools/call#2", "2026-07-28/tools/call#1"]
)
def test_a_response_that_is_no_list_passes_untouched(server: ServerProcess, name: str) -> None:
    original = b"".join(base64.b64decode(c) for c in recorded()[name]["response"]["chunks"])
    cases = [exchange(name, g) for g in GATEWAYS]
    results = drive(server.target, cases)
    for case in cases:
        result = results[case["label"]]
        assert body_of(result) == original, case["label"]
        assert header(result, "x-authz") == "allowed"  # the policy's response header
    # Envoy is told not to send the body at all: the processor never reads it.
    assert results[f"envoy:{name}"]["overrides"] == ["NONE"]
    assert results[f"envoy:{name}"]["response_body_messages"] == 0


def test_progress_events_and_the_result_of_a_tool_stream_are_unchanged(
    server: ServerProcess,
) -> None:
    name = "2026-07-28/tools/call#2"
    result = drive(server.target, [exchange(name, "agentgateway")])[f"agentgateway:{name}"]
    messages = sse_messages(body_of(result))
    assert [m.get("method") for m in messages] == ["notifications/progress"] * 2 + [None]


def test_a_call_of_a_hidden_tool_is_refused_in_the_request_phase(server: ServerProcess) -> None:
    for era in ERAS:
        case = exchange(f"{era}/tools/call#1", label=era)
        hidden = "hidden_delete_repository"
        body = base64.b64decode(case["request_body"]).replace(b"list_issues", hidden.encode())
        case["request_body"] = base64.b64encode(body).decode()
        case["request_headers"] = [
            [k, str(len(body)) if k == "content-length" else hidden if k == "mcp-name" else v]
            for k, v in case["request_headers"]
        ]
        result = drive(server.target, [case])[era]
        refused = result["request_immediate"]
        assert refused["status"] == 403
        assert dict(refused["headers"])["content-type"] == "application/json"
        error = json.loads(base64.b64decode(refused["body"]))
        assert error["id"] == json.loads(body)["id"]
        assert error["error"]["message"] == "not for agents"


def test_an_allowed_request_carries_the_decision(server: ServerProcess) -> None:
    name = "2026-07-28/tools/call#1"
    result = drive(server.target, [exchange(name, label="call")])["call"]
    upstream = dict(result["upstream_headers"])
    assert upstream["x-authz-policy"] == "hidden-tools"
    assert "accept-encoding" not in upstream  # list bodies must come back readable
    decision = result["metadata"]["envoy.filters.http.ext_proc"]
    assert decision["policy"] == "hidden-tools" and decision["decision_id"]


def test_a_body_less_request_is_judged_at_its_headers(server: ServerProcess) -> None:
    result = drive(server.target, [exchange("legacy/GET#1", label="get")])["get"]
    assert "request_immediate" not in result and "failed" not in result
    assert result["overrides"] == ["NONE"]


@pytest.fixture(scope="module")
def small_servers() -> Iterator[dict[str, ServerProcess]]:
    started = {}
    try:
        for policy in ("deny", "pass"):
            started[policy] = start_server(
                LISTING_POLICIES,
                "--ext-proc-max-body-bytes", str(SMALL_CAP), "--ext-proc-oversize", policy,
            )  # fmt: skip
        yield started
    finally:
        for running in started.values():
            stop_server(running)


def _padded(name: str, gateway: str, label: str) -> dict:
    """A recorded list response whose tool descriptions make it larger than the small cap."""
    case = exchange(name, gateway, label=label)
    body = b"".join(base64.b64decode(c) for c in case["response_chunks"])
    padded = body.replace(b'"description":"', b'"description":"' + b"x" * SMALL_CAP)
    case["response_chunks"] = [base64.b64encode(padded).decode()]
    case["response_headers"] = [
        [k, str(len(padded)) if k == "content-length" else v] for k, v in case["response_headers"]
    ]
    return case


def test_an_oversize_list_fails_closed_by_default(small_servers: dict[str, ServerProcess]) -> None:
    cases = [
        _padded("2026-07-28/tools/list#1", "envoy", "json"),
        _padded("legacy/tools/list#1", "envoy", "sse"),
    ]
    results = drive(small_servers["deny"].target, cases)
    refused = results["json"]["response_immediate"]  # BUFFERED: the client gets the 502
    assert refused["status"] == 502
    error = json.loads(base64.b64decode(refused["body"]))
    assert error["id"] == 2 and "larger than" in error["error"]["message"]
    # SSE: the response had started, so the gateway resets it; nothing unfiltered got out.
    assert results["sse"]["response_reset"]["status"] == 502
    assert b"hidden_" not in body_of(results["sse"])


def test_an_oversize_list_passes_unfiltered_when_the_operator_allows_it(
    small_servers: dict[str, ServerProcess],
) -> None:
    cases = [
        _padded("2026-07-28/tools/list#1", "envoy", "json"),
        _padded("legacy/tools/list#1", "agentgateway", "sse"),
    ]
    results = drive(small_servers["pass"].target, cases)
    for case in cases:
        original = b"".join(base64.b64decode(c) for c in case["response_chunks"])
        assert body_of(results[case["label"]]) == original
    # A list that fits is still filtered by the same server.
    small = drive(small_servers["pass"].target, [exchange("2026-07-28/tools/list#2")])
    listed = json.loads(body_of(small["envoy:2026-07-28/tools/list#2"]))["result"]
    assert names(listed) == VISIBLE_PAGE_2


# The messages and fields of the project's ext_proc proto, checked against the official ones.
_OFFICIAL_FIELDS = """
import json
from envoy.service.ext_proc.v3 import external_processor_pb2 as m
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as p
out = {}
for module in (m, p):
    for message in module.DESCRIPTOR.message_types_by_name.values():
        for nested in [message, *message.nested_types]:
            out[nested.full_name] = {
                f.name: [f.number, f.type, f.message_type.full_name if f.message_type else "",
                         f.enum_type.full_name if f.enum_type else ""]
                for f in nested.fields
            }
print(json.dumps(out))
"""


def test_the_ext_proc_proto_matches_the_official_one() -> None:
    from authz_server.envoy.pb.envoy.extensions.filters.http.ext_proc.v3 import (
        processing_mode_pb2,
    )
    from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2

    done = subprocess.run(
        [wire_python(), "-c", _OFFICIAL_FIELDS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    official = json.loads(done.stdout)
    checked = 0
    for module in (external_processor_pb2, processing_mode_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for nested in [message, *message.nested_types]:
                if nested.GetOptions().map_entry:
                    continue
                theirs = official[nested.full_name]
                for field in nested.fields:
                    ours = [
                        field.number,
                        field.type,
                        field.message_type.full_name if field.message_type else "",
                        field.enum_type.full_name if field.enum_type else "",
                    ]
                    assert theirs[field.name] == ours, (nested.full_name, field.name)
                    checked += 1
    assert checked > 50
