"""What ext_proc costs authz-server per response, measured in process.

Each figure is the processing of one HTTP response's ext_proc messages as the server does it:
parse the ProcessingRequest bytes, answer (ExtProcStream.handle), serialize the answers. gRPC's
own transport is not included (the same for every message), nor the request phase (a Check).

- non-list response: the response headers of a tools/call result, answered with the NONE
  override (Envoy then sends no body); also without the override (every body chunk answered
  CONTINUE, Envoy with overrides off) and full duplex (agentgateway: every chunk echoed).
- list rewrite: a tools/list result held and rewritten, JSON (BUFFERED) and SSE (one event),
  with a trivial filter (the transport alone) and with the example library's real filter
  (PolicyAuthorizer.filter_list: identity, revocations, the per-entry verdicts).

Usage: python -m tests.benchmarks.bench_ext_proc [POLICY_DIR]
Target (issue 16): a response that is no list costs under 50 us.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz_server.decision import allow
from authz_server.envoy.ext_proc import ExtProcSettings, ExtProcStream, Mode, pb
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.request import Request
from authz_server.state import open_store

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
TOOLS = 50

CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_issue"}}'
LIST = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'
SCHEMA = {"type": "object", "properties": {"owner": {"type": "string"}}, "required": ["owner"]}
NAMES = ["get_issue", "create_pull_request", "merge_pull_request", "delete_repository"]


def _headers(*pairs: tuple[str, str], end: bool = False) -> Any:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )
    return pb.HttpHeaders(headers=header_map, end_of_stream=end)


def _bytes(**field: Any) -> bytes:
    return pb.ProcessingRequest(**field).SerializeToString()


def _tools_result() -> dict[str, Any]:
    tools = [
        {"name": NAMES[i % len(NAMES)] + ("" if i < len(NAMES) else f"_{i}"),
         "description": f"tool {i} of a GitHub-like server", "inputSchema": SCHEMA}
        for i in range(TOOLS)
    ]  # fmt: skip
    return {"tools": tools, "nextCursor": "page-2"}


REQUEST_HEADERS = _headers(
    (":method", "POST"), (":path", "/mcp"), (":authority", "mcp.example"),
    ("content-type", "application/json"), ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", "2025-06-18"),
)  # fmt: skip


def _stream(
    body: bytes,
    judge: Callable[[Request], Any],
    filter_list: Callable[..., Any],
    response_mode: int = Mode.STREAMED,
) -> ExtProcStream:
    """A stream through its request phase, as it stands when the response arrives."""
    stream = ExtProcStream(judge, filter_list, ExtProcSettings())
    first = pb.ProcessingRequest(request_headers=REQUEST_HEADERS)
    first.protocol_config.request_body_mode = Mode.BUFFERED
    first.protocol_config.response_body_mode = response_mode
    stream.handle(first)
    stream.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    return stream


def response_cost(make: Callable[[], ExtProcStream], messages: list[bytes], n: int = 2000) -> float:
    """Microseconds to process one response's messages (parse, answer, serialize); best of
    several rounds, a fresh stream per response made outside the timing."""
    parse = pb.ProcessingRequest.FromString
    best = float("inf")
    for _ in range(ROUNDS + 1):
        streams = [make() for _ in range(n)]
        start = time.perf_counter()
        for stream in streams:
            for raw in messages:
                for answer in stream.handle(parse(raw)):
                    answer.SerializeToString()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    policies = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "policies"
    allowed = allow(dynamic_metadata={"decision_id": "bench-1", "policy": "bench"})

    def judge(request: Request) -> Any:
        return allowed

    def trivial(request: Request, result: dict, method: str) -> tuple[dict, int]:
        kept = [t for t in result["tools"] if not t["name"].startswith("merge_")]
        return {**result, "tools": kept}, len(result["tools"]) - len(kept)

    result = _tools_result()
    json_body = json.dumps({"jsonrpc": "2.0", "id": 7, "result": result}).encode()
    sse_body = b"event: message\r\ndata: " + json_body + b"\r\n\r\n"
    call_result = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}]}}'
    json_headers = _bytes(
        response_headers=_headers((":status", "200"), ("content-type", "application/json"),
                                  ("content-length", str(len(json_body))))
    )  # fmt: skip
    sse_headers = _bytes(
        response_headers=_headers((":status", "200"), ("content-type", "text/event-stream"))
    )
    call_headers = _bytes(
        response_headers=_headers((":status", "200"), ("content-type", "application/json"),
                                  ("content-length", str(len(call_result))))
    )  # fmt: skip
    call_chunk = _bytes(response_body=pb.HttpBody(body=call_result, end_of_stream=True))

    rows: list[tuple[str, float]] = []
    rows.append((
        "non-list response: headers, NONE override (Envoy recipe)",
        response_cost(lambda: _stream(CALL, judge, trivial), [call_headers]),
    ))  # fmt: skip
    rows.append((
        "non-list response: headers + 1 chunk CONTINUE (overrides off)",
        response_cost(lambda: _stream(CALL, judge, trivial), [call_headers, call_chunk]),
    ))  # fmt: skip
    rows.append((
        "non-list response: headers + 1 chunk echoed (full duplex)",
        response_cost(
            lambda: _stream(CALL, judge, trivial, Mode.FULL_DUPLEX_STREAMED),
            [call_headers, call_chunk],
        ),
    ))  # fmt: skip
    json_chunk = _bytes(response_body=pb.HttpBody(body=json_body, end_of_stream=True))
    sse_chunk = _bytes(response_body=pb.HttpBody(body=sse_body, end_of_stream=True))
    rows.append((
        f"list rewrite, {TOOLS} tools, JSON, transport only (trivial filter)",
        response_cost(lambda: _stream(LIST, judge, trivial), [json_headers, json_chunk], 500),
    ))  # fmt: skip
    rows.append((
        f"list rewrite, {TOOLS} tools, SSE, transport only (trivial filter)",
        response_cost(lambda: _stream(LIST, judge, trivial), [sse_headers, sse_chunk], 500),
    ))  # fmt: skip

    with tempfile.TemporaryDirectory() as scratch:
        authorizer = PolicyAuthorizer(
            PolicyStore(policies), state=open_store(f"sqlite:///{scratch}/state.db")
        )
        authorizer.start()
        try:
            real = authorizer.filter_list
            rows.append((
                f"list rewrite, {TOOLS} tools, JSON, example library's filter",
                response_cost(lambda: _stream(LIST, judge, real), [json_headers, json_chunk], 300),
            ))  # fmt: skip
            rows.append((
                f"list rewrite, {TOOLS} tools, SSE, example library's filter",
                response_cost(lambda: _stream(LIST, judge, real), [sse_headers, sse_chunk], 300),
            ))  # fmt: skip
            probe = _stream(LIST, judge, real)
            hidden = 0
            for raw in (json_headers, json_chunk):
                probe.handle(pb.ProcessingRequest.FromString(raw))
            hidden = probe.hidden
        finally:
            authorizer.stop()

    width = max(len(name) for name, _ in rows)
    print(f"ext_proc processing per response (in process, best of {ROUNDS} rounds)")
    for name, micros in rows:
        print(f"  {name:<{width}}  {micros:8.1f} us")
    print(f"  (the example library hides {hidden} of the {TOOLS} tools from an anonymous caller)")
    target = rows[0][1]
    print(f"non-list target < 50 us: {'met' if target < 50 else 'MISSED'} ({target:.1f} us)")


if __name__ == "__main__":
    main()
