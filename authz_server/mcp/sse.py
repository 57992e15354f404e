"""Server-Sent Events as MCP servers send them: cut a byte stream into events, rewrite one.

A gateway hands a response body over in chunks cut anywhere: inside a line, between the CR and
the LF of a line end, or in the middle of a multi-byte character. :class:`EventSplitter` keeps
the unfinished tail and returns complete events as the exact bytes received, so an event nobody
rewrites travels on byte for byte. :func:`replace_data` rewrites one event's data and keeps its
other lines (``id``, ``event``, ``retry``, comments) and its line ends.

Lines end in CRLF, LF or CR (the SSE grammar); an event ends at an empty line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A line end followed by an empty line: the end of an event. CRLF is tried before CR so that
# "\r\n" is never read as two line ends.
_BOUNDARY = re.compile(rb"\r\n\r\n|\r\r\n|\n\r\n|\r\n\r|\r\n\n|\r\r|\n\r|\n\n")
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|$)")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Event:
    """One event's fields: ``type`` is ``message`` unless an ``event:`` line names another;
    ``data`` is its ``data:`` lines joined by LF (None when it has none, and then a client
    dispatches nothing)."""

    type: str
    data: bytes | None


class EventSplitter:
    """Complete events from a stream fed in arbitrary chunks."""

    __slots__ = ("_held", "_scan_from", "_started")

    def __init__(self) -> None:
        self._held = bytearray()
        self._scan_from = 0
        self._started = False

    @property
    def held(self) -> int:
        """Bytes of an unfinished event kept back."""
        return len(self._held)

    def feed(self, chunk: bytes, end: bool = False) -> list[bytes]:
        """The events completed by ``chunk``, each with its terminating empty line. At ``end``
        an unfinished tail is returned too, as it is (a client drops it: it was never
        dispatched)."""
        held = self._held
        held += chunk
        events: list[bytes] = []
        start = 0
        while True:
            match = _BOUNDARY.search(held, max(start, self._scan_from))
            if match is None:
                break
            stop = match.end()
            # A CR at the very end may be half of a CRLF still on its way: cutting after it is
            # still exact, because the LF then starts the next piece as an empty line, which
            # dispatches nothing, and bytes are never moved across the cut.
            events.append(bytes(held[start:stop]))
            start = stop
        if end:
            if start < len(held):
                events.append(bytes(held[start:]))
            held.clear()
            self._scan_from = 0
            return events
        if start:
            del held[:start]
        # A boundary is at most four bytes: resume the search just before the new bytes.
        self._scan_from = max(0, len(held) - 3)
        return events

    def take(self) -> bytes:
        """Everything held back, which is then forgotten (the stream passes on unfiltered)."""
        out = bytes(self._held)
        self._held.clear()
        self._scan_from = 0
        return out


def parse_event(raw: bytes) -> Event:
    """The fields of one event (as :meth:`EventSplitter.feed` returns it)."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    kind = b"message"
    data: list[bytes] = []
    for line, _end in _LINE.findall(raw):
        if not line or line.startswith(b":"):
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value or b"message"
    return Event(kind.decode("utf-8", "replace"), b"\n".join(data) if data else None)


def replace_data(raw: bytes, data: bytes) -> bytes:
    """``raw`` with its ``data:`` lines replaced by one line carrying ``data`` (which must hold
    no line break); every other line and every line end is kept."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("SSE data must not contain a line break")
    out: list[bytes] = []
    written = False
    for line, end in _LINE.findall(raw):
        if not line and not end:
            continue
        name = line.partition(b":")[0]
        if name == b"data" and not line.startswith(b":"):
            if not written:
                out.append(b"data: " + data + end)
                written = True
            continue
        out.append(line + end)
    return b"".join(out)
