"""One test (at least) per FailureReason: the body is refused, with that exact reason."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import brotli
import pytest

from authz_server.mcp import DecodeFailure, FailureReason, Limits, decode
from tests.mcp.bodies import deflate_polyglot, tools_call

JSON = {"content-type": "application/json"}
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"merge_pull_request"}}'


def reason(body: bytes, headers: dict[str, str] | None = None, **kwargs: object) -> FailureReason:
    decoded = decode(body, JSON if headers is None else headers, **kwargs)  # type: ignore[arg-type]
    assert decoded.messages == ()
    assert isinstance(decoded.failure, DecodeFailure)
    return decoded.failure.reason


def test_every_reason_has_a_test() -> None:
    names = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    missing = [r.value for r in FailureReason if not any(n.startswith(r.value) for n in names)]
    assert missing == []


def test_truncated_flag() -> None:
    assert reason(CALL, truncated=True) is FailureReason.TRUNCATED


def test_truncated_by_content_length() -> None:
    headers = {**JSON, "content-length": str(len(CALL) + 1)}
    assert reason(CALL, headers) is FailureReason.TRUNCATED


def test_truncated_even_when_nothing_was_forwarded() -> None:
    assert reason(b"", {**JSON, "content-length": "120"}) is FailureReason.TRUNCATED


def test_too_large_body() -> None:
    assert reason(CALL, limits=Limits(max_body_bytes=len(CALL) - 1)) is FailureReason.TOO_LARGE


def test_too_large_batch() -> None:
    body = b"[" + b",".join([CALL] * 3) + b"]"
    assert reason(body, limits=Limits(max_batch=2)) is FailureReason.TOO_LARGE


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"jsonrpc":"2.0",}', b"{'a': 1}", b'{"a": NaN}', b'{"a": 1e400}', b"   ", b"nul"],
)
def test_invalid_json(body: bytes) -> None:
    assert reason(body) is FailureReason.INVALID_JSON


def test_invalid_json_with_json_content_type_but_no_json() -> None:
    assert reason(b"hello", {"content-type": "application/json"}) is FailureReason.INVALID_JSON


@pytest.mark.parametrize(
    "tail", [b"{}", b"x", b"\x00", b'{"jsonrpc":"2.0","id":2,"method":"ping"}']
)
def test_trailing_data(tail: bytes) -> None:
    assert reason(CALL + b"\n" + tail) is FailureReason.TRAILING_DATA


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\xff"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\xed\xa0\x80"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"\\udc00":1,"name":"a"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\uDBFFx"}}',
    ],
)
def test_invalid_utf8(body: bytes) -> None:
    assert reason(body) is FailureReason.INVALID_UTF8


def test_invalid_utf8_accepts_a_valid_surrogate_pair() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud83d\\ude00"}}'
    assert decode(body, JSON).messages[0].tool_name == "\U0001f600"


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])
def test_byte_order_mark(bom: bytes) -> None:
    assert reason(bom + CALL) is FailureReason.BYTE_ORDER_MARK
    # Also without a JSON content type: the body still starts like JSON after the mark.
    assert reason(bom + CALL, {"content-type": "text/plain"}) is FailureReason.BYTE_ORDER_MARK


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"create_pull_request","n\\u0061me":"merge_pull_request"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",'
        b'"arguments":{"x":{"y":1,"y":2}}}}',
        b'[{"jsonrpc":"2.0","method":"ping","id":1,"id":2}]',
    ],
)
def test_duplicate_key(body: bytes) -> None:
    assert reason(body) is FailureReason.DUPLICATE_KEY


def test_too_deep() -> None:
    args = b'{"a":' * 70 + b"1" + b"}" * 70
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":'
    assert reason(body + args + b"}}") is FailureReason.TOO_DEEP


def test_too_deep_far_beyond_the_recursion_limit() -> None:
    assert reason(b"[" * 50_000 + b"]" * 50_000) is FailureReason.TOO_DEEP


def test_too_deep_ignores_brackets_inside_strings() -> None:
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' + b"[{" * 100 + b'"}}'
    )
    assert decode(body, JSON).messages[0].tool_name == "[{" * 100


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"1.0","id":1,"method":"ping"}',
        b'{"id":1,"method":"ping"}',
        b'{"jsonrpc":2.0,"id":1,"method":"ping"}',
        b'"tools/call"',
        b"[1]",
        b'{"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","id":1,"error":"denied"}',
    ],
)
def test_not_jsonrpc(body: bytes) -> None:
    assert reason(body) is FailureReason.NOT_JSONRPC


@pytest.mark.parametrize(
    "id_",
    [b"null", b"true", b"1.5", b"[1]", b'{"a":1}', b"99999999999999999999"],
)
def test_invalid_id(id_: bytes) -> None:
    assert (
        reason(b'{"jsonrpc":"2.0","method":"ping","id":' + id_ + b"}") is FailureReason.INVALID_ID
    )


def test_invalid_id_on_a_result() -> None:
    assert reason(b'{"jsonrpc":"2.0","result":{}}') is FailureReason.INVALID_ID
    assert reason(b'{"jsonrpc":"2.0","id":null,"result":{}}') is FailureReason.INVALID_ID


@pytest.mark.parametrize("method", [b"1", b"null", b'["tools/call"]', b'""', b"true"])
def test_invalid_method(method: bytes) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":' + method + b"}"
    assert reason(body) is FailureReason.INVALID_METHOD


@pytest.mark.parametrize("body", [b"[]", b"[ \n ]"])
def test_empty_batch(body: bytes) -> None:
    assert reason(body) is FailureReason.EMPTY_BATCH


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","error":{"code":1,"message":"x"}}',
        b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}',
    ],
)
def test_ambiguous_message(body: bytes) -> None:
    assert reason(body) is FailureReason.AMBIGUOUS_MESSAGE


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
    ],
)
def test_decompression_limit(encoding: str, compress: object) -> None:
    bomb = compress(b" " * (8 * 1024 * 1024) + CALL)  # type: ignore[operator]
    assert len(bomb) < 64 * 1024
    headers = {**JSON, "content-encoding": encoding}
    assert reason(bomb, headers, decompress=True) is FailureReason.DECOMPRESSION_LIMIT


def test_decompression_limit_counts_every_layer_together() -> None:
    two = Limits(max_encodings=2)
    inner = gzip.compress(b" " * 3000 + CALL)
    body = gzip.compress(inner)
    headers = {**JSON, "content-encoding": "gzip, gzip"}
    decoded = decode(body, headers, decompress=True, limits=two)
    assert decoded.messages[0].tool_name == "merge_pull_request"
    # Each layer's output fits 4096 bytes, but the layers together do not.
    padded = gzip.compress(gzip.compress(b" " * 3000 + CALL, compresslevel=0), compresslevel=0)
    limits = Limits(max_decompressed_bytes=4096, max_encodings=2)
    assert reason(padded, headers, decompress=True, limits=limits) is (
        FailureReason.DECOMPRESSION_LIMIT
    )


def test_decompression_limit_an_inner_layer_that_expands() -> None:
    # What an outer layer yields is itself compressed, and compressed data does not shrink
    # again: an outer layer that inflates many times over carries a crafted inner stream
    # (empty stored blocks, say) that costs work without producing anything.
    empty_stored_blocks = b"\x00\x00\x00\xff\xff" * 20_000  # not final, 5 bytes each
    inner = empty_stored_blocks + zlib.compress(CALL)[2:-4]
    body = gzip.compress(inner)
    headers = {**JSON, "content-encoding": "deflate, gzip"}
    assert len(body) < 1024
    limits = Limits(max_encodings=2)
    assert reason(body, headers, decompress=True, limits=limits) is (
        FailureReason.DECOMPRESSION_LIMIT
    )


@pytest.mark.parametrize("encoding", ["zstd", "compress", "gzip, zstd", "identity, snappy", "x"])
def test_unsupported_encoding(encoding: str) -> None:
    headers = {**JSON, "content-encoding": encoding}
    assert reason(CALL, headers, decompress=True) is FailureReason.UNSUPPORTED_ENCODING


def test_unsupported_encoding_too_many_layers() -> None:
    # Stacked encodings are never sent by real clients and only multiply the work.
    body = gzip.compress(gzip.compress(CALL))
    headers = {**JSON, "content-encoding": "gzip, gzip"}
    assert reason(body, headers, decompress=True) is FailureReason.UNSUPPORTED_ENCODING
    assert reason(gzip.compress(body), {**JSON, "content-encoding": "gzip, gzip, gzip"},
                  decompress=True, limits=Limits(max_encodings=2)) is (
        FailureReason.UNSUPPORTED_ENCODING
    )  # fmt: skip


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", CALL),  # plain bytes labelled as gzip are never read as plain
        ("gzip", gzip.compress(CALL)[:-5]),
        ("gzip", gzip.compress(CALL) + b"junk"),
        ("deflate", b"\x78\x9c" + b"garbage"),
        ("br", CALL),
        ("br", brotli.compress(CALL)[:-2]),
    ],
)
def test_invalid_encoding(encoding: str, body: bytes) -> None:
    headers = {**JSON, "content-encoding": encoding}
    assert reason(body, headers, decompress=True) is FailureReason.INVALID_ENCODING


def test_ambiguous_encoding_a_body_that_is_json_and_deflate() -> None:
    body = deflate_polyglot(tools_call("run", {"command": "rm -rf /"}))
    headers = {**JSON, "content-encoding": "deflate"}
    assert reason(body, headers, decompress=True) is FailureReason.AMBIGUOUS_ENCODING


def test_ambiguous_encoding_is_judged_on_the_raw_bytes_with_a_lenient_parser() -> None:
    # The raw bytes need not be JSON by our strict rules: NaN, duplicate keys and a byte order
    # mark are JSON enough for some reader.
    for raw in (b'{"a": NaN}', b'{"a":1,"a":2}', b"\xef\xbb\xbf[1]"):
        assert decode(raw, JSON).failure is not None
        assert json.loads(raw) is not None
    body = deflate_polyglot({"jsonrpc": "2.0", "method": "ping", "id": 1, "id2": float("nan")})
    headers = {**JSON, "content-encoding": "deflate"}
    assert reason(body, headers, decompress=True) is FailureReason.AMBIGUOUS_ENCODING


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=iso-8859-1",
        "application/json;charset=UTF-16",
        'text/plain; charset="latin1"',
        "application/json; charset=utf-8; charset=us-ascii",
    ],
)
def test_unsupported_charset(content_type: str) -> None:
    assert reason(CALL, {"content-type": content_type}) is FailureReason.UNSUPPORTED_CHARSET


@pytest.mark.parametrize(
    "headers",
    [
        {"mcp-method": "tools/list"},
        {"mcp-method": "Tools/call"},
        {"mcp-method": " tools/call"},
        {"mcp-name": "create_pull_request"},
        {"mcp-name": "MERGE_PULL_REQUEST"},
        {"mcp-name": "=?base64?bm90LWJhc2U2NA?="},  # not canonical (no padding)
        {"mcp-name": "=?base64?!!!?="},
        {"mcp-name": "=?base64?" + base64.b64encode(b"create_pull_request").decode() + "?="},
    ],
)
def test_header_mismatch(headers: dict[str, str]) -> None:
    assert reason(CALL, {**JSON, **headers}) is FailureReason.HEADER_MISMATCH


def test_header_mismatch_protocol_version() -> None:
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list",'
        b'"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
    )
    assert reason(body, {**JSON, "mcp-protocol-version": "2025-11-25"}) is (
        FailureReason.HEADER_MISMATCH
    )


def test_header_mismatch_name_on_a_method_without_one() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    assert reason(body, {**JSON, "mcp-name": "x"}) is FailureReason.HEADER_MISMATCH


def test_header_mismatch_in_a_batch() -> None:
    other = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
    body = b"[" + CALL + b"," + other + b"]"
    decoded = decode(body, {**JSON, "mcp-method": "tools/call"})
    assert decoded.failure is not None
    assert decoded.failure.reason is FailureReason.HEADER_MISMATCH
    assert "element 1" in decoded.failure.detail


def test_header_mismatch_method_header_on_a_response() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    assert reason(body, {**JSON, "mcp-method": "tools/call"}) is FailureReason.HEADER_MISMATCH


@pytest.mark.parametrize(
    "params",
    [
        b'{"name":42}',
        b'{"name":["merge_pull_request"]}',
        b'{"name":null}',
        b"{}",
        b'{"name":"x","arguments":[1]}',
        b'{"name":"x","arguments":"a=1"}',
        b'{"name":"x","_meta":[]}',
        b'{"name":"x","_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}',
    ],
)
def test_invalid_params_tools_call(params: bytes) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + params + b"}"
    assert reason(body) is FailureReason.INVALID_PARAMS


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["merge_pull_request"]}',
        b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":1}}',
        b'{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"a":1}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":5}}',
        b'{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen",'
        b'"params":{"notifications":{"resourceSubscriptions":"file:///x"}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"clientInfo":{"name":1}}}',
    ],
)
def test_invalid_params_other_methods(body: bytes) -> None:
    assert reason(body) is FailureReason.INVALID_PARAMS


def test_invalid_params_in_a_batch_names_the_element() -> None:
    body = (
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call"}]'
    )
    decoded = decode(body, JSON)
    assert decoded.failure == DecodeFailure(
        FailureReason.INVALID_PARAMS, "element 1: tools/call: params.name is missing"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {":method": "POST"},
        {":method": "POST", "transfer-encoding": "chunked"},
        {":method": "POST", "content-length": "0"},
        {":method": "post", "content-type": "application/json"},
        {":method": "GET", "mcp-method": "tools/call"},
        {":method": "DELETE", "mcp-name": "merge_pull_request"},
        {"mcp-method": "tools/call", "mcp-name": "merge_pull_request"},
    ],
)
def test_missing_body(headers: dict[str, str]) -> None:
    assert reason(b"", headers) is FailureReason.MISSING_BODY


def test_missing_body_the_method_may_come_as_an_argument() -> None:
    assert reason(b"", JSON, method="POST") is FailureReason.MISSING_BODY
    # The argument (the request line) wins over a pseudo-header.
    assert reason(b"", {":method": "GET"}, method="POST") is FailureReason.MISSING_BODY


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"run","arguments":{"command":"pwd\\u0000; rm -rf /"}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"run","arguments":{"a":1,"a\\u0000":2}}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run\\u0000x"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping\\u0000"}',
        b'{"jsonrpc":"2.0","id":"\\u0000","method":"ping"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},'
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","x":[["\\u0000"]]}}]',
    ],
)
def test_nul_character(body: bytes) -> None:
    assert reason(body) is FailureReason.NUL_CHARACTER


def test_nul_character_needs_the_character_not_its_spelling() -> None:
    # An escaped backslash followed by "u0000" is six ordinary characters.
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"run","arguments":{"command":"C:\\\\u0000"}}}'
    )
    assert decode(body, JSON).messages[0].arguments == {"command": "C:\\u0000"}


def test_too_large_json_values() -> None:
    many = b",".join([b"{}"] * 50)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":['
    body += many + b"]}}}"
    assert decode(body, JSON).failure is None
    assert reason(body, limits=Limits(max_json_values=40)) is FailureReason.TOO_LARGE


def test_too_large_json_values_not_fooled_by_strings() -> None:
    # Brackets and commas inside strings are text, not values.
    text = "[{,}]" * 100
    body = tools_call("a", {"x": text})
    decoded = decode(json.dumps(body).encode(), JSON, limits=Limits(max_json_values=40))
    assert decoded.failure is None
    assert decoded.messages[0].arguments == {"x": text}


def test_internal_error_is_a_failure_not_an_exception() -> None:
    class Exploding(dict[str, str]):
        def get(self, key: str, default: object = None) -> str:  # type: ignore[override]
            raise RuntimeError("boom")

    decoded = decode(CALL, Exploding())
    assert decoded.failure is not None
    assert decoded.failure.reason is FailureReason.INTERNAL_ERROR
    assert decoded.messages == ()


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":{"pw":"hunter2-S3cret"},"method":"tools/list"}',
        b'{"jsonrpc":"2.0","id":["hunter2-S3cret"],"method":"tools/list"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"n":9e999}}',
    ],
)
def test_a_failure_detail_quotes_no_value_of_the_body(body: bytes) -> None:
    # The detail reaches the denial body and the audit line, where no redactor can tell a
    # secret in Python's repr quoting.
    decoded = decode(body, {"content-type": "application/json"}, method="POST")
    assert decoded.failure is not None
    assert "hunter2" not in decoded.failure.detail
    assert "9e999" not in decoded.failure.detail
