"""The audit queue holds no more memory than its byte bound, whatever the requests decode to.

The attack: a body of a few KiB that decompresses to hundreds of KiB of tool arguments, sent
faster than the audit writer can write (here: a pipe nobody reads). The queue used to hold each
decision's request and decoded arguments, and bounded the total by the compressed body size.
Measured with ``tracemalloc`` (Python allocations, deterministic), never with time.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from observe_events import STARTED

from authz_server.decision import deny
from authz_server.mcp import decode
from authz_server.observe.audit import AuditLog
from authz_server.observe.event import DecisionEvent
from authz_server.request import Request

FLOOD = 150
BOUND = 512 * 1024


def _bomb(index: int) -> DecisionEvent:
    """A decision on a gzip body of a few KiB whose arguments decode to ~300 KiB of JSON."""
    arguments = {f"k{i:05d}": f"{index}-" + "v" * 200 for i in range(1500)}
    text = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": index,
            "method": "tools/call",
            "params": {"name": "write_file", "arguments": arguments},
        }
    ).encode()
    body = gzip.compress(text)
    assert len(body) < len(text) // 20
    # What the decoder hands on for that body once inflated: the arguments, parsed.
    decoded = decode(text, {"content-type": "application/json"})
    assert decoded.failure is None
    request = Request(
        method="POST",
        path="/mcp",
        host="mcp.example",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        body=body,
        size=len(body),
    )
    return DecisionEvent(f"d-{index}", STARTED, 0.0001, request, decoded, deny(403, reason="no"))


@contextmanager
def _stuck_log(**options: int) -> Iterator[AuditLog]:
    """A started audit log writing to a pipe nobody reads until the test is done."""
    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "wb", buffering=0)
    audit = AuditLog(stuck, **options)
    audit.start()
    try:
        yield audit
    finally:
        drained = threading.Thread(target=_drain, args=(read_end,), daemon=True)
        drained.start()
        audit.close(timeout=60)
        stuck.close()
        drained.join(60)


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass
    os.close(fd)


def _retained(audit: AuditLog) -> int:
    """Bytes still allocated after a flood of decisions the test itself does not keep."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(FLOOD):
            audit.observe(_bomb(index))
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_flood_with_a_stuck_writer_stays_within_the_byte_bound() -> None:
    with _stuck_log(max_pending_bytes=BOUND) as audit:
        retained = _retained(audit)
        assert retained < 2 * BOUND, f"{retained / 2**20:.1f} MiB retained"
        assert audit.pending_bytes <= BOUND
        assert audit.dropped > 0  # beyond the bound: dropped and counted


def test_the_measure_sees_what_an_unbounded_queue_keeps() -> None:
    # Control: the same flood into a queue whose byte bound it never reaches. It keeps every
    # line's view (clipped, but ~25 KiB each), so the measure must show several times the
    # bound, and the queue's own estimate must be close to what tracemalloc sees.
    with _stuck_log(max_pending_bytes=1 << 40) as audit:
        retained = _retained(audit)
        assert audit.dropped == 0
        assert retained > 4 * BOUND, f"{retained / 2**20:.1f} MiB retained"
        assert 0.5 < retained / audit.pending_bytes < 2, (retained, audit.pending_bytes)
