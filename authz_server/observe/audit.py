"""The audit log: one JSON line per decision, written off the decision path.

``observe()`` takes from the decision what its line will show, cut to the line's limits (a few
microseconds: the request itself is not kept, so a small compressed body that decodes to
megabytes costs the queue no more than its line), and appends that to a queue bounded in lines
and in the estimated bytes it holds; a writer thread masks, encodes and writes the lines in
batches: it wakes every ``flush_interval`` seconds, or sooner once ``batch`` events
wait. Waking per event would cost a thread switch and a GIL hand-over per decision, and a line
built right after the check runs with the writer's code and data out of the CPU caches; a batch
runs warm (on the benchmark it is ~40 us per line instead of ~100). A line reaches the
destination at most ``flush_interval`` after its decision.

When the writer falls behind (a slow disk, a stdout pipe nobody drains) the queue fills and
further lines are dropped and counted: a decision never waits for the log.

Several ``--workers`` processes may share one destination. Lines go out with single ``write``
calls on an ``O_APPEND`` descriptor, which the kernel keeps whole on regular files; on pipes only
writes up to ``PIPE_BUF`` bytes are atomic, so batches are split there at line boundaries (a
single line longer than that could still interleave: use a file with several workers).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import stat
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

import orjson

from authz_server.observe.event import DecisionEvent
from authz_server.observe.record import (
    AuditView,
    audit_record,
    audit_view,
    fallback_record,
    fallback_view,
)
from authz_server.observe.redact import Limits, Redactor

log = logging.getLogger(__name__)

DropCallback = Callable[[str, int], None]
# The line is ASCII, non-ASCII characters escaped as \uXXXX: lone surrogates from a JSON body
# cannot break its encoding, and a U+2028, U+0085 or similar in a value cannot split the line
# for a reader that splits on Unicode line boundaries (Python's str.splitlines does).
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)
# orjson writes most lines (ASCII ones) several times faster than the encoder above, with the
# same meaning: numbers keep their value (1.2e-05 may read 0.000012), and types it would write
# its own way (dataclasses, dates) go to ``default=str`` as the encoder above sends them.
_ORJSON_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


def encode_line(record: dict[str, Any]) -> bytes:
    """``record`` as one ASCII JSON line. A line orjson cannot write as the format requires
    (non-ASCII text, a lone surrogate, an integer beyond 64 bits) is written by the standard
    encoder: escaped to ASCII, exact integers."""
    try:
        line = orjson.dumps(record, default=str, option=_ORJSON_OPTIONS)
        if line.isascii():
            return line
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    return (_ENCODER.encode(record) + "\n").encode("ascii")


class AuditLog:
    """Writes audit lines to stdout (``"-"``), a file path, or a stream given by the caller.

    ``max_pending_bytes`` bounds the estimated memory of the queued lines (what each will show,
    cut but not yet masked), so a burst of large requests cannot take the process's memory even
    when the line count is below ``queue_size``.
    """

    def __init__(
        self,
        destination: str | IO[Any] = "-",
        *,
        max_value_length: int = 256,
        queue_size: int = 10000,
        max_pending_bytes: int = 16 * 1024 * 1024,
        on_drop: DropCallback | None = None,
        flush_interval: float = 0.05,
        batch: int = 256,
    ) -> None:
        self._destination = destination
        self._redact = Redactor(Limits(max_value_length=max_value_length))
        self._queue_size = queue_size
        self._max_pending_bytes = max_pending_bytes
        self._on_drop = on_drop
        self._flush_interval = flush_interval
        self._batch = batch
        self._pending: collections.deque[AuditView] = collections.deque()
        # Checks observe from several threads: admitting an event (the bounds test, the append
        # and the counting) is one step under this lock. The writer alone updates
        # _written_bytes and _dropped_write_error.
        self._admit = threading.Lock()
        self._queued_bytes = 0
        self._written_bytes = 0
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._owns_fd = False
        self._stream: IO[Any] | None = None
        self._chunk = 1 << 20
        # Dropped lines by cause: the observing threads (under _admit) and the writer.
        self._dropped_queue_full = 0
        self._dropped_write_error = 0

    @property
    def dropped(self) -> int:
        """Lines lost so far, for any reason."""
        return self._dropped_queue_full + self._dropped_write_error

    @property
    def pending_bytes(self) -> int:
        """Estimated memory of the lines queued and not yet written."""
        return self._queued_bytes - self._written_bytes

    def start(self) -> None:
        """Open the destination (errors surface here, at startup) and start the writer."""
        if self._thread is not None:
            return
        self._open()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def observe(self, event: DecisionEvent) -> None:
        try:
            view = audit_view(event, self._redact.clipper)
        except Exception as exc:
            log.debug("audit view failed", exc_info=True)
            try:
                view = fallback_view(event, exc)
            except Exception:  # not an event: count it lost rather than break the decision
                self._drop("queue_full", 1)
                return
        size = view.size
        with self._admit:
            if (
                len(self._pending) >= self._queue_size
                or self._closing
                or self._queued_bytes + size - self._written_bytes > self._max_pending_bytes
            ):
                self._drop("queue_full", 1)
                return
            self._queued_bytes += size
            self._pending.append(view)
            full = len(self._pending) >= self._batch
        if full and not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued, then release the destination. False if the writer is stuck."""
        self._closing = True
        if self._thread is None:
            if not self._pending:
                return True
            self._open()
            self._drain()
            self._release()
            return True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _open(self) -> None:
        destination = self._destination
        if isinstance(destination, str) and destination != "-":
            self._fd = os.open(
                destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
            self._owns_fd = True
        else:
            stream = sys.stdout if destination == "-" else destination
            try:
                self._fd = stream.fileno()
                stream.flush()
            except (AttributeError, OSError, ValueError):
                self._stream = getattr(stream, "buffer", stream)
                return
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            self._chunk = select.PIPE_BUF

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                self._drain()
                if self._closing and not self._pending:
                    break
        finally:
            self._release()

    def _drain(self) -> None:
        while self._pending:
            lines: list[bytes] = []
            size = 0
            while self._pending and size < self._chunk:
                view = self._pending.popleft()
                self._written_bytes += view.size
                line = self._line(view)
                if lines and size + len(line) > self._chunk:
                    self._write(lines)
                    lines, size = [], 0
                lines.append(line)
                size += len(line)
            self._write(lines)

    def _line(self, view: AuditView) -> bytes:
        try:
            record = audit_record(view, self._redact)
        except Exception as exc:
            log.debug("audit record failed", exc_info=True)
            record = fallback_record(view, exc)
        return encode_line(record)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"".join(lines)
        try:
            if self._stream is not None:
                self._stream.write(data)
                self._stream.flush()
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except Exception:
            log.warning("audit write failed; %d lines lost", len(lines), exc_info=True)
            self._drop("write_error", len(lines))

    def _drop(self, reason: str, count: int) -> None:
        if reason == "queue_full":
            self._dropped_queue_full += count
        else:
            self._dropped_write_error += count
        if self._on_drop is not None:
            try:
                self._on_drop(reason, count)
            except Exception:
                log.debug("audit drop callback failed", exc_info=True)

    def _release(self) -> None:
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        elif self._stream is not None:
            try:
                self._stream.flush()
            except Exception:
                log.debug("audit stream flush failed", exc_info=True)
