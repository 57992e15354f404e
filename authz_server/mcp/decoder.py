"""Request body -> MCP messages, or a reason not to trust the body.

The rule is to judge the bytes the MCP server will read. Size and truncation are judged on the
bytes as received; Content-Encoding is undone only when the operator says the upstream undoes it
(``decompress``), and then a body that also reads as JSON without decompressing is refused. A
POST body (and a body of any method an MCP server might read) is always held to JSON-RPC,
whatever its Content-Type says, because servers differ in the media types they accept; only a
GET or DELETE body that does not look like JSON is "no message". A request that should carry a
body and arrived without one is refused. Every stage that cannot vouch for the body fails it,
and decode() turns every exception, expected or not, into a failure: a bug here denies, it
never allows.
"""

from __future__ import annotations

from collections.abc import Mapping

from authz_server.mcp import _encoding, _extract, _headers, _json
from authz_server.mcp._fail import Fail
from authz_server.mcp.limits import DEFAULT_LIMITS, Limits
from authz_server.mcp.message import NO_MESSAGE, Decoded, DecodeFailure, FailureReason

_INTERNAL = FailureReason.INTERNAL_ERROR
# Methods whose body no MCP server reads: theirs is sniffed, not required to be MCP.
_BODY_IGNORED = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def decode(
    body: bytes,
    headers: Mapping[str, str],
    *,
    method: str = "",
    truncated: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    decompress: bool = False,
    lax: bool = False,
) -> Decoded:
    """Decode one HTTP request body; never raises.

    ``headers`` has lower-case names (Envoy's form, pseudo-headers allowed). ``method`` is the
    HTTP method (else the ``:method`` header is read; unknown, a body is judged as a POST's).
    ``truncated`` is the envoy adapter's signal that ``body`` is only a prefix of what the
    client sent. ``decompress`` says the upstream undoes Content-Encoding before it reads the
    body (the MCP SDK does not). ``lax`` is for ``mcp.Parse`` only: params are held to what
    Kyverno's parser holds them to (see :func:`authz_server.mcp._extract.message`).
    """
    try:
        return _decode(body, headers, method, truncated, limits, decompress, lax)
    except Fail as failed:
        return Decoded(failure=failed.failure())
    except Exception as exc:
        # The class only: an exception's text may quote the body, and the detail reaches
        # denial bodies, audit lines and logs.
        return Decoded(failure=DecodeFailure(_INTERNAL, type(exc).__name__))


def _decode(
    body: bytes,
    headers: Mapping[str, str],
    method: str,
    truncated: bool,
    limits: Limits,
    decompress: bool,
    lax: bool = False,
) -> Decoded:
    if not isinstance(body, bytes):
        body = bytes(body)
    if truncated:
        raise Fail(FailureReason.TRUNCATED, "the gateway forwarded only part of the body")
    declared = _content_length(headers.get("content-length"))
    if declared is not None and declared > len(body):
        raise Fail(FailureReason.TRUNCATED, f"content-length {declared} > {len(body)} bytes seen")
    method = (method or headers.get(":method") or "").upper()
    if not body:
        if method == "POST" or _headers.mirrors_a_body(headers):
            raise Fail(FailureReason.MISSING_BODY, f"{method or 'a'} request without a body")
        return NO_MESSAGE
    if len(body) > limits.max_body_bytes:
        raise Fail(FailureReason.TOO_LARGE, f"{len(body)} bytes > {limits.max_body_bytes}")
    encoding = headers.get("content-encoding")
    if decompress and encoding:
        body = _decompressed(body, encoding, limits)
    content_type = headers.get("content-type") or ""
    if method in _BODY_IGNORED and not (
        _headers.is_json_type(content_type) or _headers.looks_like_json(body)
    ):
        return NO_MESSAGE
    _headers.check_charset(content_type)
    value = _json.loads(body, limits.max_depth, limits.max_json_values)
    header_version = headers.get(_headers.VERSION_HEADER) or ""
    if isinstance(value, list):
        if not value:
            raise Fail(FailureReason.EMPTY_BATCH, "empty batch array")
        if len(value) > limits.max_batch:
            raise Fail(FailureReason.TOO_LARGE, f"batch of {len(value)} > {limits.max_batch}")
        messages = tuple(_element(i, item, header_version) for i, item in enumerate(value))
        batch = True
    else:
        messages = (_extract.message(value, header_version, lax=lax),)
        batch = False
    _headers.check_mirrored(messages, headers, batch)
    return Decoded(messages=messages, batch=batch)


def _decompressed(body: bytes, encoding: str, limits: Limits) -> bytes:
    applied = _encoding.codings(encoding, limits.max_encodings)
    if not applied:
        return body
    plain = _encoding.undo(body, applied, limits.max_decompressed_bytes)
    # A reader that does not decompress (a gateway, a logger, the server itself if the operator
    # is wrong about it) would run the body as sent: the two readings must not both exist.
    if _json.is_json_to_someone(body, limits.max_json_values):
        raise Fail(FailureReason.AMBIGUOUS_ENCODING, "the body as sent is JSON as well")
    return plain


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
