"""HTTP headers the decoder reads: Content-Type, and the 2026-07-28 headers that mirror the body.

Policies decide on the body. A mirrored header that disagrees with it is refused outright,
because a gateway, a cache or the server itself may route or log by the header, and the two
would then be judging different requests.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence

from authz_server.mcp._fail import Fail
from authz_server.mcp.message import FailureReason, Kind, McpMessage

_JSON_MEDIA_TYPES = frozenset({"application/json", "text/json", "application/json-rpc"})
_UTF8 = frozenset({"utf-8", "utf8"})
# Leading bytes a client (or an attacker) may put before a JSON value: whitespace, control
# bytes and byte-order-mark bytes. What follows them decides whether the body is meant as JSON.
_ODD_PREFIX = re.compile(rb"[\x00-\x20\x7f\xef\xbb\xbf\xfe\xff]*")
_SENTINEL = re.compile(r"=\?base64\?(.*)\?=", re.DOTALL)

METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
VERSION_HEADER = "mcp-protocol-version"


def is_json_type(content_type: str) -> bool:
    """Whether any of the media types listed (the SDK accepts "application/json, text/plain")
    is JSON; only bodies of methods no MCP server reads a body of are sniffed with it."""
    for media in content_type.partition(";")[0].lower().split(","):
        media = media.strip()
        if media in _JSON_MEDIA_TYPES or media.endswith("+json"):
            return True
    return False


def mirrors_a_body(headers: Mapping[str, str]) -> bool:
    """Whether the request claims (Mcp-Method / Mcp-Name) to carry a message in its body."""
    return METHOD_HEADER in headers or NAME_HEADER in headers


def looks_like_json(body: bytes) -> bool:
    start = _ODD_PREFIX.match(body).end()  # type: ignore[union-attr]
    return start < len(body) and body[start] in b"{["


def check_charset(content_type: str) -> None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset":
            continue
        charset = value.strip().strip('"').lower()
        if charset not in _UTF8:
            raise Fail(FailureReason.UNSUPPORTED_CHARSET, f"charset {charset[:40]!r}")


def decode_mirrored(value: str) -> str | None:
    """The value of a mirrored header, undoing the ``=?base64?...?=`` form; None if malformed.

    Only canonical base64 of UTF-8 is accepted, so one body value has exactly one header form
    besides itself.
    """
    match = _SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group(1)
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            return None
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _mismatch(header: str, index: int | None, why: str) -> Fail:
    where = "" if index is None else f"element {index}: "
    return Fail(FailureReason.HEADER_MISMATCH, f"{where}{header} {why}")


def check_mirrored(messages: Sequence[McpMessage], headers: Mapping[str, str], batch: bool) -> None:
    """Every mirrored header that is present must agree with every message of the body.

    A header is a claim about "the" request; in a batch it must therefore hold for each
    element, so a batch whose elements differ can carry no Mcp-Method or Mcp-Name at all.
    Absent headers are not required here: the decision is made on the body.
    """
    method_h = headers.get(METHOD_HEADER)
    name_h = headers.get(NAME_HEADER)
    version_h = headers.get(VERSION_HEADER)
    if method_h is None and name_h is None and version_h is None:
        return
    method_v = None if method_h is None else decode_mirrored(method_h)
    name_v = None if name_h is None else decode_mirrored(name_h)
    for i, msg in enumerate(messages):
        index = i if batch else None
        if method_h is not None:
            if msg.kind not in (Kind.REQUEST, Kind.NOTIFICATION):
                raise _mismatch(METHOD_HEADER, index, "present on a response")
            if method_v != msg.method:
                raise _mismatch(METHOD_HEADER, index, f"does not match method {msg.method!r}")
        if name_h is not None:
            body_name = _body_name(msg)
            if name_v is None or body_name is None or name_v != body_name:
                raise _mismatch(NAME_HEADER, index, "does not match the body's name or uri")
        if version_h is not None and msg.meta is not None:
            body_version = msg.meta.get("io.modelcontextprotocol/protocolVersion")
            if body_version is not None and body_version != version_h:
                raise _mismatch(VERSION_HEADER, index, "does not match params._meta")


def _body_name(msg: McpMessage) -> str | None:
    if msg.method == "tools/call":
        return msg.tool_name
    if msg.method == "prompts/get":
        return msg.prompt_name
    if msg.method == "resources/read":
        return msg.uri
    return None
