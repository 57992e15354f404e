"""SSE as a response hook sees it: events cut anywhere come out whole and byte for byte, and a
rewritten event keeps every line but its data."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server.mcp.sse import EventSplitter, parse_event, replace_data

ENDS = (b"\r\n", b"\n", b"\r")


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """An SSE stream of MCP-like events with any line ends, and the events it holds."""
    events = []
    for index in range(draw(st.integers(1, 5))):
        end = draw(st.sampled_from(ENDS))
        lines = []
        if draw(st.booleans()):
            lines.append(b": keep-alive")
        if draw(st.booleans()):
            lines.append(b"id: " + str(index).encode())
        lines.append(b"event: message")
        payload = json.dumps({"jsonrpc": "2.0", "id": index, "result": {"x": "é" * index}})
        lines.append(b"data: " + payload.encode())
        events.append(end.join(lines) + end + end)
    return b"".join(events), events


@given(streams(), st.lists(st.integers(0, 400), max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_cut_yields_the_same_events_byte_for_byte(
    stream: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    body, events = stream
    splitter = EventSplitter()
    out: list[bytes] = []
    start = 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}):
        out += splitter.feed(body[start:cut])
        start = cut
    out += splitter.feed(body[start:], end=True)
    assert b"".join(out) == body
    # Every event comes out whole: a cut between the CR and LF of its last line end may move
    # that LF to the next piece, where it reads as an empty line that dispatches nothing.
    pieces = [e.strip(b"\r\n") for e in out]
    assert [p for p in pieces if p] == [e.strip(b"\r\n") for e in events]


def test_an_unfinished_event_is_held_until_its_empty_line() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"event: message\r\ndata: {") == []
    assert splitter.held == len(b"event: message\r\ndata: {")
    assert splitter.feed(b'"a":1}\r\n') == []
    assert splitter.feed(b"\r\nevent: mes") == [b'event: message\r\ndata: {"a":1}\r\n\r\n']
    assert splitter.feed(b"", end=True) == [b"event: mes"]
    assert splitter.held == 0


def test_fields_are_read_as_a_client_reads_them() -> None:
    event = parse_event(b"\xef\xbb\xbf: comment\nevent:endpoint\ndata:/messages\ndata: ?x=1\n\n")
    assert event.type == "endpoint"
    assert event.data == b"/messages\n?x=1"
    assert parse_event(b"id: 7\n\n").data is None
    assert parse_event(b"data: {}\r\r").type == "message"


def test_replacing_data_keeps_the_other_lines_and_line_ends() -> None:
    raw = b"id: 4\r\nevent: message\r\ndata: {\r\ndata: }\r\n: note\r\n\r\n"
    assert replace_data(raw, b'{"new":1}') == (
        b'id: 4\r\nevent: message\r\ndata: {"new":1}\r\n: note\r\n\r\n'
    )
    assert parse_event(replace_data(raw, b"[]")).data == b"[]"
