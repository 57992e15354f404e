"""Decoder behaviour beyond the failure reasons: what counts as MCP, escapes, batches, headers,
encodings and the hand-built 2025-11-25 / 2026-07-28 shapes the SDK recording does not cover."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

import brotli
import pytest

from authz_server.mcp import NO_MESSAGE, Decoded, FailureReason, Kind, Limits, McpMessage, decode
from tests.mcp.bodies import deflate_polyglot, tools_call

JSON = {"content-type": "application/json"}
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"merge_pull_request"}}'
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "9"},
}


def ok(body: bytes, headers: dict[str, str] | None = None, **options: Any) -> Decoded:
    decoded = decode(body, JSON if headers is None else headers, **options)
    assert decoded.failure is None, decoded.failure
    return decoded


def single(body: bytes, headers: dict[str, str] | None = None, **options: Any) -> McpMessage:
    (message,) = ok(body, headers, **options).messages
    return message


def request(method: str, params: dict[str, object], id_: object = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode()


# --- what is (not) an MCP body ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", {}),
        (b"", JSON),
        (b"", {":method": "GET", "accept": "text/event-stream"}),
        (b"", {":method": "DELETE", "mcp-session-id": "abc"}),
        (b"hello", {":method": "GET", "content-type": "text/plain"}),
        (b"a=1&b=[2]", {":method": "GET", "content-type": "application/x-www-form-urlencoded"}),
        (b"\x89PNG\r\n", {":method": "GET", "content-type": "image/png"}),
        (b"   \n", {":method": "DELETE"}),
    ],
)
def test_no_message(body: bytes, headers: dict[str, str]) -> None:
    assert decode(body, headers) is NO_MESSAGE


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "application/json, text/plain",
        "text/plain, application/json",
        "application/jsonl",
        "application/json-seq",
        "multipart/form-data; boundary=x",
    ],
)
def test_json_rpc_with_another_content_type_is_still_decoded(content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert single(b"  \r\n" + CALL, headers).tool_name == "merge_pull_request"
    assert single(CALL, headers, method="POST").tool_name == "merge_pull_request"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "",
        "image/png",
        "application/x-www-form-urlencoded",
        "application/json, text/plain",
        "application/jsonl",
    ],
)
@pytest.mark.parametrize(
    "body",
    [b"hello", b"a=1&b=[2]", b"\x89PNG\r\n\x1a\n", b"   \n", b"\x00", b"42", b'"tools/call"'],
)
def test_a_post_body_is_never_no_message(content_type: str, body: bytes) -> None:
    # An MCP server may read a POST body whatever its media type says (the SDK takes
    # "application/json, text/plain" and, in the 2026-07-28 era, any type that starts with
    # application/json), so a POST body must be MCP or be refused.
    headers = {":method": "POST", "content-type": content_type} if content_type else {}
    decoded = decode(body, headers, method="POST")
    assert decoded.failure is not None
    assert decoded.messages == ()


def test_odd_prefix_before_json_is_judged_as_mcp() -> None:
    decoded = decode(b"\x00\x00" + CALL, {"content-type": "text/plain"})
    assert decoded.failure is not None
    utf16 = decode(CALL.decode().encode("utf-16-be"), {})
    assert utf16.failure is not None


def test_memoryview_and_bytearray_bodies() -> None:
    assert single(bytearray(CALL)).tool_name == "merge_pull_request"  # type: ignore[arg-type]
    assert single(memoryview(CALL)).tool_name == "merge_pull_request"  # type: ignore[arg-type]


# --- escapes, case, ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    ["tools\\/call", "\\u0074ools/call", "\\u0074\\u006f\\u006f\\u006c\\u0073\\u002f\\u0063all"],
)
def test_escaped_method_is_unescaped(method: str) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"' + method.encode() + b'","params":{"name":"x"}}'
    assert single(body).method == "tools/call"


def test_escaped_keys_are_unescaped() -> None:
    body = (
        b'{"jsonrpc":"2.0","\\u0069d":1,"method":"tools/call",'
        b'"params":{"n\\u0061me":"m\\u0065rge"}}'
    )
    m = single(body)
    assert (m.id, m.tool_name) == (1, "merge")


def test_names_are_not_case_folded() -> None:
    m = single(request("tools/call", {"name": "Merge_Pull_Request"}))
    assert m.tool_name == "Merge_Pull_Request"
    other = single(request("Tools/Call", {"name": "merge_pull_request"}))
    assert (other.method, other.tool_name, other.kyverno["ToolCall"]) == ("Tools/Call", "", None)


@pytest.mark.parametrize("id_", [0, -1, 2**63 - 1, "", "abc", "1"])
def test_request_ids(id_: object) -> None:
    assert single(request("ping", {}, id_)).id == id_


def test_null_params_are_no_params() -> None:
    m = single(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":null}')
    assert (m.params, m.cursor) == ({}, "")


def test_unknown_members_are_ignored() -> None:
    assert single(b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":[1]}').method == "ping"


# --- responses a legacy client POSTs ---------------------------------------------------------


def test_result_response() -> None:
    m = single(b'{"jsonrpc":"2.0","id":"s-1","result":{"action":"accept","content":{"ok":true}}}')
    assert (m.kind, m.id, m.method) == (Kind.RESULT, "s-1", "")
    assert m.result == {"action": "accept", "content": {"ok": True}}
    assert m.kyverno["Method"] == ""


@pytest.mark.parametrize("id_part", [b"", b'"id":null,', b'"id":7,'])
def test_error_response(id_part: bytes) -> None:
    m = single(b'{"jsonrpc":"2.0",' + id_part + b'"error":{"code":-32601,"message":"nope"}}')
    assert m.kind is Kind.ERROR
    assert m.error == {"code": -32601, "message": "nope"}
    assert m.id == (7 if id_part == b'"id":7,' else None)


# --- batches (2025-03-26) --------------------------------------------------------------------


def test_batch_decodes_every_element() -> None:
    body = (
        b"["
        + b",".join(
            [
                request("tools/call", {"name": "create_pull_request"}, 1),
                b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                request("tools/call", {"name": "merge_pull_request"}, 2),
                b'{"jsonrpc":"2.0","id":9,"result":{}}',
            ]
        )
        + b"]"
    )
    decoded = ok(body)
    assert decoded.batch
    assert [m.kind for m in decoded.messages] == [
        Kind.REQUEST,
        Kind.NOTIFICATION,
        Kind.REQUEST,
        Kind.RESULT,
    ]
    assert [m.tool_name for m in decoded.messages] == [
        "create_pull_request",
        "",
        "merge_pull_request",
        "",
    ]


def test_single_element_batch_is_still_a_batch() -> None:
    decoded = ok(b"[" + CALL + b"]")
    assert decoded.batch
    assert decoded.messages[0].tool_name == "merge_pull_request"


def test_batch_with_headers_that_hold_for_every_element() -> None:
    body = b"[" + CALL + b"," + CALL.replace(b'"id":1', b'"id":2') + b"]"
    headers = {**JSON, "mcp-method": "tools/call", "mcp-name": "merge_pull_request"}
    assert len(ok(body, headers).messages) == 2


# --- 2026-07-28 mirrored headers -------------------------------------------------------------


def test_matching_mirrored_headers() -> None:
    body = request("tools/call", {"name": "merge_pull_request", "_meta": META})
    headers = {
        **JSON,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "merge_pull_request",
    }
    m = single(body, headers)
    assert (m.protocol_version, m.client_info) == ("2026-07-28", {"name": "agent", "version": "9"})


def test_base64_header_values() -> None:
    name = " Zusammenführen "
    body = request("prompts/get", {"name": name})
    encoded = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    assert single(body, {**JSON, "mcp-name": encoded}).prompt_name == name
    uri = "file:///tmp/a b"
    body = request("resources/read", {"uri": uri})
    encoded = "=?base64?" + base64.b64encode(uri.encode()).decode() + "?="
    assert single(body, {**JSON, "mcp-name": encoded, "mcp-method": "resources/read"}).uri == uri


def test_protocol_version_sources_in_priority_order() -> None:
    with_meta = request("tools/list", {"_meta": META})
    assert single(with_meta, {**JSON, "mcp-protocol-version": "2026-07-28"}).protocol_version == (
        "2026-07-28"
    )
    plain = request("tools/list", {})
    assert single(plain, {**JSON, "mcp-protocol-version": "2025-06-18"}).protocol_version == (
        "2025-06-18"
    )
    init = request("initialize", {"protocolVersion": "2024-11-05", "capabilities": {}})
    assert single(init).protocol_version == "2024-11-05"
    assert single(plain).protocol_version == ""


# --- 2025-11-25 tasks and 2026-07-28 shapes (hand-built from the schema) ---------------------


@pytest.mark.parametrize("method", ["tasks/get", "tasks/result", "tasks/cancel", "tasks/update"])
def test_tasks(method: str) -> None:
    assert single(request(method, {"taskId": "t-42"})).task_id == "t-42"


def test_tools_call_with_task_and_tasks_list() -> None:
    m = single(request("tools/call", {"name": "merge_pull_request", "task": {"ttl": 60000}}))
    assert (m.tool_name, m.params["task"]) == ("merge_pull_request", {"ttl": 60000})
    assert single(request("tasks/list", {"cursor": "c2"})).cursor == "c2"


def test_retried_call_with_input_responses() -> None:
    params = {
        "name": "merge_pull_request",
        "arguments": {"repo": "octo/widgets", "number": 42},
        "inputResponses": {"confirm": {"action": "accept", "content": {"sure": True}}},
        "requestState": "opaque",
        "_meta": META,
    }
    m = single(request("tools/call", params))
    assert (m.tool_name, m.arguments) == (
        "merge_pull_request",
        {"repo": "octo/widgets", "number": 42},
    )
    assert m.params["inputResponses"]["confirm"]["action"] == "accept"


def test_resource_subscribe_and_cursor() -> None:
    assert single(request("resources/subscribe", {"uri": "file:///a"})).uri == "file:///a"
    assert single(request("resources/unsubscribe", {"uri": "file:///a"})).uri == "file:///a"
    assert single(request("resources/templates/list", {"cursor": "n"})).cursor == "n"


# --- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
        ("br", brotli.compress),
        ("identity", lambda b: b),
        ("identity, gzip", gzip.compress),
    ],
)
def test_content_encodings(encoding: str, compress: object) -> None:
    body = compress(CALL)  # type: ignore[operator]
    headers = {**JSON, "content-encoding": encoding, "content-length": str(len(body))}
    assert single(body, headers, decompress=True).tool_name == "merge_pull_request"


def test_stacked_content_encodings_when_the_limits_allow_them() -> None:
    body = brotli.compress(gzip.compress(CALL))
    headers = {**JSON, "content-encoding": "gzip, br"}
    two = Limits(max_encodings=2)
    assert single(body, headers, decompress=True, limits=two).tool_name == "merge_pull_request"


def test_compressed_body_with_non_json_type_is_sniffed_after_decompression() -> None:
    headers = {"content-encoding": "gzip"}
    assert single(gzip.compress(CALL), headers, decompress=True).tool_name == "merge_pull_request"
    plain_text = decode(gzip.compress(b"plain text"), headers, method="POST", decompress=True)
    assert plain_text.failure is not None
    assert plain_text.failure.reason is FailureReason.INVALID_JSON


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", brotli.compress)],
)
def test_content_encoding_is_not_undone_by_default(encoding: str, compress: object) -> None:
    # The MCP SDK server reads the body as sent, whatever Content-Encoding says; so do we,
    # unless the operator says the upstream decompresses.
    headers = {**JSON, "content-encoding": encoding}
    decoded = decode(compress(CALL), headers, method="POST")  # type: ignore[operator]
    assert decoded.failure is not None
    assert decoded.failure.reason in (FailureReason.INVALID_UTF8, FailureReason.INVALID_JSON)
    assert single(CALL, headers).tool_name == "merge_pull_request"


@pytest.mark.parametrize("content_type", ["application/json", "application/json, text/plain"])
def test_a_body_that_is_json_and_deflate_is_read_as_json(content_type: str) -> None:
    body = deflate_polyglot(tools_call("run", {"command": "rm -rf /"}))
    headers = {"content-type": content_type, "content-encoding": "deflate"}
    message = single(body, headers, method="POST")
    assert (message.tool_name, message.arguments) == ("run", {"command": "rm -rf /"})


# --- numbers CEL can hold --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("9223372036854775808", 2**63),  # CEL uint
        ("18446744073709551615", 2**64 - 1),
        ("18446744073709551616", 1.8446744073709552e19),
        ("-9223372036854775809", -9.223372036854775808e18),
        ("100000000000000000000", 1e20),
        ("1" + "0" * 308, 1e308),
        ("-0", 0),
    ],
)
def test_integers_beyond_cel_become_doubles(literal: str, value: float) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    body += b'"params":{"name":"pay","arguments":{"wei":' + literal.encode() + b"}}}"
    wei = single(body).arguments["wei"]  # type: ignore[index]
    assert wei == value
    assert type(wei) is type(value)


@pytest.mark.parametrize("literal", ["1" + "0" * 309, "-" + "9" * 400, "1" * 5000])
def test_integers_beyond_doubles_are_invalid(literal: str) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    body += b'"params":{"name":"pay","arguments":{"wei":' + literal.encode() + b"}}}"
    decoded = decode(body, JSON)
    assert decoded.failure is not None
    assert decoded.failure.reason is FailureReason.INVALID_JSON
