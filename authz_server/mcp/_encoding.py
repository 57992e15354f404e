"""Content-Encoding, undone within a byte budget (only with ``--decode-content-encoding``).

Every decompressor is driven in bounded steps, so output never grows past the cap plus one step.
The cap is shared by all layers, and a layer whose output is still compressed may not grow much
(compressed data does not compress again), so decompressing costs in proportion to the bytes
received plus the bytes finally produced: a zip bomb, nested or not, costs about what its
decoded size would cost sent plain. Compressed bytes are never handed on as if they were plain.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from authz_server.mcp._fail import Fail
from authz_server.mcp.message import FailureReason

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is a declared dependency
    brotli = None

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS
# A layer that still holds compressed data may yield at most this much more than it took.
_INNER_GROWTH, _INNER_SLACK = 2, 1024


def _over(cap: int, name: str) -> Fail:
    return Fail(FailureReason.DECOMPRESSION_LIMIT, f"{name} output exceeds {cap} bytes")


def _corrupt(name: str, why: str) -> Fail:
    return Fail(FailureReason.INVALID_ENCODING, f"{name}: {why}")


def _inflate(data: bytes, cap: int, wbits: int, name: str) -> bytes:
    engine = zlib.decompressobj(wbits)
    out: list[bytes] = []
    total = 0
    pending = data
    try:
        while pending and not engine.eof:
            chunk = engine.decompress(pending, cap + 1 - total)
            total += len(chunk)
            if total > cap:
                raise _over(cap, name)
            out.append(chunk)
            pending = engine.unconsumed_tail
            if not chunk and pending:
                raise _corrupt(name, "no progress")
    except zlib.error as exc:
        raise _corrupt(name, str(exc)) from None
    if not engine.eof:
        raise _corrupt(name, "stream ends early")
    if engine.unused_data:
        raise _corrupt(name, "data after the end of the stream")
    return b"".join(out)


def _gunzip(data: bytes, cap: int) -> bytes:
    return _inflate(data, cap, _GZIP_WBITS, "gzip")


def _deflate(data: bytes, cap: int) -> bytes:
    # HTTP "deflate" is the zlib format, but some clients send a raw deflate stream; the zlib
    # header (CM=8, FCHECK) tells them apart.
    is_zlib = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
    return _inflate(data, cap, _ZLIB_WBITS if is_zlib else _RAW_WBITS, "deflate")


def _unbrotli(data: bytes, cap: int) -> bytes:
    if brotli is None:
        raise Fail(FailureReason.UNSUPPORTED_ENCODING, "br: brotli is not installed")
    engine = brotli.Decompressor()
    out: list[bytes] = []
    total = 0
    try:
        chunk = engine.process(data, output_buffer_limit=cap + 1)
        while True:
            total += len(chunk)
            if total > cap:
                raise _over(cap, "br")
            out.append(chunk)
            if engine.can_accept_more_data():
                break
            chunk = engine.process(b"", output_buffer_limit=cap + 1 - total)
            if not chunk:
                raise _corrupt("br", "no progress")
    except brotli.error as exc:
        raise _corrupt("br", str(exc)) from None
    if not engine.is_finished():
        raise _corrupt("br", "stream ends early")
    return b"".join(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _deflate,
    "br": _unbrotli,
}


def codings(content_encoding: str, max_layers: int) -> list[str]:
    """The codings a Content-Encoding header lists, in the order they were applied."""
    found = [c.strip().lower() for c in content_encoding.split(",")]
    found = [c for c in found if c and c != "identity"]
    if len(found) > max_layers:
        raise Fail(FailureReason.UNSUPPORTED_ENCODING, f"{len(found)} stacked encodings")
    for coding in found:
        if coding not in _DECODERS:
            raise Fail(FailureReason.UNSUPPORTED_ENCODING, f"content-encoding {coding[:40]!r}")
    return found


def undo(body: bytes, applied: list[str], cap: int) -> bytes:
    """Undo the ``applied`` codings on ``body``, all layers together producing at most ``cap``."""
    left = cap
    # Codings are listed in the order they were applied; undo them last first.
    for depth, coding in enumerate(reversed(applied), start=1):
        layer_cap = left
        if depth < len(applied):
            layer_cap = min(left, _INNER_GROWTH * len(body) + _INNER_SLACK)
        body = _DECODERS[coding](body, layer_cap)
        left -= len(body)
    return body
