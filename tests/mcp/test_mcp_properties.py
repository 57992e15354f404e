"""Properties: decode() never raises, and whatever it accepts means what json.loads says it means.

The second property is the security one: a policy that denies ``merge_pull_request`` must see
that name however the client spells the JSON (escapes, whitespace, key order, batching), or the
body must be refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server.mcp import NO_MESSAGE, Decoded, FailureReason, Kind, Limits, _json, decode

FORBIDDEN = "merge_pull_request"
JSON = {"content-type": "application/json"}
FIXTURES = Path(__file__).parents[1] / "fixtures" / "mcp" / "sdk_bodies.json"
SDK = [r for r in json.loads(FIXTURES.read_text())["requests"] if r["body"]]
HEADER_NAMES = [
    "content-type",
    "content-encoding",
    "content-length",
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    ":method",
    ":path",
]
FAST = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
rpc_keys = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "name"])
rpc_like = st.recursive(
    st.sampled_from(["2.0", "tools/call", FORBIDDEN, "initialize", "_meta"]) | scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(rpc_keys | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=15,
)
headers = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(max_size=10),
    st.sampled_from(["application/json", "gzip", "br", "tools/call", FORBIDDEN, "12"])
    | st.text(max_size=20),
    max_size=5,
)


def well_formed(decoded: Decoded) -> None:
    """Exactly one outcome, and never the decoder's own failure."""
    if decoded.failure is not None:
        assert decoded.messages == ()
        assert decoded.failure.reason is not FailureReason.INTERNAL_ERROR, decoded.failure
    assert not (decoded.batch and not decoded.messages)


def agrees_with_json_loads(body: bytes, decoded: Decoded) -> None:
    """Every field we report is what a standard parser reads from the same body."""
    raw = json.loads(body)
    items = raw if decoded.batch else [raw]
    assert len(items) == len(decoded.messages)
    for item, message in zip(items, decoded.messages, strict=True):
        assert message.method == item.get("method", "")
        if message.kind in (Kind.REQUEST, Kind.RESULT):
            assert message.id == item["id"]
        params = item.get("params") or {}
        if message.method == "tools/call":
            assert message.tool_name == params["name"]
            assert message.arguments == params.get("arguments")
            assert message.kyverno["ToolCall"]["Name"] == params["name"]
        if message.method == "prompts/get":
            assert message.prompt_name == params["name"]
        if message.method == "resources/read":
            assert message.uri == params["uri"]


# --- (a) nothing raises ----------------------------------------------------------------------


methods = st.sampled_from(["", "POST", "GET", "DELETE", "PUT", "post"])


@FAST
@given(
    body=st.binary(max_size=300),
    hdrs=headers,
    truncated=st.booleans(),
    method=methods,
    decompress=st.booleans(),
)
def test_arbitrary_bytes_never_raise(
    body: bytes, hdrs: dict[str, str], truncated: bool, method: str, decompress: bool
) -> None:
    decoded = decode(body, hdrs, truncated=truncated, method=method, decompress=decompress)
    well_formed(decoded)
    if method.upper() == "POST" or (hdrs.get(":method", "").upper() == "POST" and not method):
        # A POST is MCP or refused: never "no message", with or without a body.
        assert decoded is not NO_MESSAGE


@FAST
@given(value=rpc_like, hdrs=headers, ascii_only=st.booleans())
def test_arbitrary_json_never_raises_and_agrees(
    value: Any, hdrs: dict[str, str], ascii_only: bool
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    hdrs = {k: v for k, v in hdrs.items() if k not in ("content-encoding", "content-length")}
    decoded = decode(body, hdrs)
    well_formed(decoded)
    if decoded.messages:
        agrees_with_json_loads(body, decoded)


@FAST
@given(value=json_values, depth=st.integers(1, 8), size=st.integers(1, 3))
def test_limits_never_raise(value: Any, depth: int, size: int) -> None:
    limits = Limits(max_body_bytes=size * 40, max_depth=depth, max_batch=size)
    well_formed(decode(json.dumps([value] * size).encode(), JSON, limits=limits))


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@FAST
@given(value=json_values | st.text(alphabet='[]{}"\\ab', max_size=12), ascii_only=st.booleans())
def test_depth_prescan_ignores_strings(value: Any, ascii_only: bool) -> None:
    assert _json.max_depth(json.dumps(value, ensure_ascii=ascii_only)) == depth(value)


# --- (b) a forbidden tool name cannot hide ---------------------------------------------------

WS = st.text(alphabet=" \t\n\r", max_size=2)


@st.composite
def spelled_string(draw: st.DrawFn, text: str) -> str:
    """``text`` as a JSON string token, each character spelled one of the legal ways."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        forms = [f"\\u{code:04x}", f"\\u{code:04X}"] if code <= 0xFFFF else []
        if ch in '"\\':
            forms.append("\\" + ch)
        elif ch == "/":
            forms += ["/", "\\/"]
        elif code < 0x20:
            forms += {"\n": ["\\n"], "\t": ["\\t"], "\r": ["\\r"]}.get(ch, [])
        else:
            forms.append(ch)
        if code > 0xFFFF:
            high, low = divmod(code - 0x10000, 0x400)
            forms.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
        out.append(draw(st.sampled_from(forms)))
    out.append('"')
    return "".join(out)


@st.composite
def spelled(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON text with random escapes, whitespace and key order."""
    if isinstance(value, str):
        return draw(spelled_string(value))
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        members = [
            draw(WS)
            + draw(spelled_string(key))
            + draw(WS)
            + ":"
            + draw(WS)
            + draw(spelled(value[key]))
            for key in keys
        ]
        return "{" + ",".join(m + draw(WS) for m in members) + draw(WS) + "}"
    if isinstance(value, list):
        items = [draw(WS) + draw(spelled(item)) + draw(WS) for item in value]
        return "[" + ",".join(items) + draw(WS) + "]"
    return json.dumps(value)


def tools_call(name: str, id_: int, extra: dict[str, Any]) -> dict[str, Any]:
    params = {"name": name, "arguments": {"repo": "octo/widgets", "number": 42}, **extra}
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": params}


extras = st.dictionaries(
    st.sampled_from(["_meta", "task", "x"]), st.just({}) | st.just(None), max_size=2
)


def hide_and_seek(data: st.DataObject, batch: int, extra: dict[str, Any]) -> None:
    message = tools_call(FORBIDDEN, 1, extra)
    value: Any = message
    if batch:
        others = [tools_call("create_pull_request", i + 2, {}) for i in range(batch)]
        value = data.draw(st.permutations([message, *others]))
    text = data.draw(WS) + data.draw(spelled(value)) + data.draw(WS)
    body = text.encode("utf-8")
    decoded = decode(body, data.draw(st.sampled_from([JSON, {}, {"content-type": "text/plain"}])))
    well_formed(decoded)
    assert decoded.failure is None, (text, decoded.failure)  # every spelling here is valid JSON
    assert decoded.batch == bool(batch)
    assert [m.tool_name for m in decoded.messages].count(FORBIDDEN) == 1
    agrees_with_json_loads(body, decoded)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), batch=st.integers(0, 3), extra=extras)
def test_forbidden_tool_name_cannot_hide(
    data: st.DataObject, batch: int, extra: dict[str, Any]
) -> None:
    hide_and_seek(data, batch, extra)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), batch=st.integers(0, 3), extra=extras)
def test_forbidden_tool_name_cannot_hide_many(
    data: st.DataObject, batch: int, extra: dict[str, Any]
) -> None:
    hide_and_seek(data, batch, extra)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), name=st.text(min_size=1, max_size=30))
def test_any_tool_name_is_reported_exactly(data: st.DataObject, name: str) -> None:
    body = data.draw(spelled(tools_call(name, 7, {}))).encode("utf-8", "surrogatepass")
    decoded = decode(body, JSON)
    well_formed(decoded)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        assert decoded.failure is not None
        return
    if "\x00" in name:  # CEL would read the name only up to it
        assert decoded.failure is not None
        assert decoded.failure.reason is FailureReason.NUL_CHARACTER
        return
    assert decoded.failure is None
    assert decoded.messages[0].tool_name == name  # byte for byte: no folding, no trimming


@FAST
@given(
    first=st.sampled_from(["name", "n\\u0061me", "\\u006eame"]),
    second=st.sampled_from(["name", "n\\u0061me", "nam\\u0065"]),
)
def test_a_second_name_key_is_always_refused(first: str, second: str) -> None:
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
        f'{{"{first}":"create_pull_request","{second}":"{FORBIDDEN}"}}}}'
    ).encode()
    decoded = decode(body, JSON)
    assert decoded.failure is not None
    assert decoded.failure.reason is FailureReason.DUPLICATE_KEY


# --- fuzz: mutations of real SDK bodies ------------------------------------------------------


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = bytes([rng.choice(b'{}[]",:\\ u0123456789abcdefnull\x00\xff')])
        elif op == 2:
            del data[at : at + rng.randint(1, 8)]
        elif op == 3:
            end = min(len(data), at + rng.randint(1, 40))
            data[at:at] = data[at:end]
        else:
            data[at:at] = rng.choice(
                [b"\\u0000", b"\\ud800", b'"name":"x",', b"[", b"]", b"\xef\xbb\xbf"]
            )
    return bytes(data)


def check_mutant(body: bytes, headers: dict[str, str]) -> None:
    decoded = decode(body, headers, method="POST")
    well_formed(decoded)
    # The SDK POSTs every message: a POST is never "no message", not even an empty one.
    assert decoded is not NO_MESSAGE
    if decoded.messages:
        agrees_with_json_loads(body, decoded)


@FAST
@given(data=st.data())
def test_fuzz_sdk_bodies_quick(data: st.DataObject) -> None:
    recorded = data.draw(st.sampled_from(SDK))
    seed = data.draw(st.integers(0, 2**32))
    headers = {k: v for k, v in recorded["headers"].items() if k != "content-length"}
    check_mutant(mutate(random.Random(seed), recorded["body"].encode()), headers)


@pytest.mark.slow
def test_fuzz_sdk_bodies_many() -> None:
    rng = random.Random(20260728)
    cases = [
        (r["body"].encode(), {k: v for k, v in r["headers"].items() if k != "content-length"})
        for r in SDK
    ]
    for _ in range(300_000):
        body, headers = rng.choice(cases)
        check_mutant(mutate(rng, body), headers)
