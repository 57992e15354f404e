"""Request body -> MCP messages, or a reason not to trust the body.

The order of the stages matters: size and truncation are judged on the bytes as received,
compression is undone (within a budget) before anything looks at the content, and only a body
meant as MCP (by content type, or because it starts like JSON) is held to JSON-RPC; anything
else is "no message". Every stage that cannot vouch for the body fails it, and decode() turns
every exception, expected or not, into a failure: a bug here denies, it never allows.
"""

from __future__ import annotations

from collections.abc import Mapping

from authz_server.mcp import _extract, _headers, _json
from authz_server.mcp._encoding import decode_content
from authz_server.mcp._fail import Fail
from authz_server.mcp.limits import DEFAULT_LIMITS, Limits
from authz_server.mcp.message import NO_MESSAGE, Decoded, DecodeFailure, FailureReason

_INTERNAL = FailureReason.INTERNAL_ERROR


def decode(
    body: bytes,
    headers: Mapping[str, str],
    *,
    truncated: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Decoded:
    """Decode one HTTP request body; never raises.

    ``headers`` has lower-case names (Envoy's form, pseudo-headers allowed). ``truncated`` is the
    envoy adapter's signal that ``body`` is only a prefix of what the client sent.
    """
    try:
        return _decode(body, headers, truncated, limits)
    except Fail as failed:
        return Decoded(failure=failed.failure())
    except Exception as exc:
        return Decoded(failure=DecodeFailure(_INTERNAL, f"{type(exc).__name__}: {exc}"[:200]))


def _decode(body: bytes, headers: Mapping[str, str], truncated: bool, limits: Limits) -> Decoded:
    if not isinstance(body, bytes):
        body = bytes(body)
    if truncated:
        raise Fail(FailureReason.TRUNCATED, "the gateway forwarded only part of the body")
    declared = _content_length(headers.get("content-length"))
    if declared is not None and declared > len(body):
        raise Fail(FailureReason.TRUNCATED, f"content-length {declared} > {len(body)} bytes seen")
    if not body:
        return NO_MESSAGE
    if len(body) > limits.max_body_bytes:
        raise Fail(FailureReason.TOO_LARGE, f"{len(body)} bytes > {limits.max_body_bytes}")
    encoding = headers.get("content-encoding")
    if encoding:
        body = decode_content(body, encoding, limits.max_decompressed_bytes, limits.max_encodings)
    content_type = headers.get("content-type") or ""
    if not (_headers.is_json_type(content_type) or _headers.looks_like_json(body)):
        return NO_MESSAGE
    _headers.check_charset(content_type)
    value = _json.loads(body, limits.max_depth)
    header_version = headers.get(_headers.VERSION_HEADER) or ""
    if isinstance(value, list):
        if not value:
            raise Fail(FailureReason.EMPTY_BATCH, "empty batch array")
        if len(value) > limits.max_batch:
            raise Fail(FailureReason.TOO_LARGE, f"batch of {len(value)} > {limits.max_batch}")
        messages = tuple(_element(i, item, header_version) for i, item in enumerate(value))
        batch = True
    else:
        messages = (_extract.message(value, header_version),)
        batch = False
    _headers.check_mirrored(messages, headers, batch)
    return Decoded(messages=messages, batch=batch)


def _element(index: int, item: object, header_version: str) -> _extract.McpMessage:
    try:
        return _extract.message(item, header_version)
    except Fail as failed:
        raise Fail(failed.reason, f"element {index}: {failed.detail}") from None


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None
