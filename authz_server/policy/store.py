"""The live policy set, reloaded from its directory without stopping requests.

Loading and compiling happen off the request path (in :meth:`PolicyStore.reload`, called from
the watcher thread); requests read :meth:`PolicyStore.current`, and a successful load replaces
the set with one attribute assignment, so a check sees the old set or the new one, never a mix.
A failed load changes nothing that is enforced: the last good set keeps serving and the error is
kept in :attr:`PolicyStore.status` for ``/readyz``.

The watcher polls a fingerprint of the directory (path, size, mtime and inode of every policy
file, after resolving symlinks), which sees a Kubernetes ConfigMap update: the kubelet swaps the
``..data`` symlink, so the resolved targets change even though the visible names do not.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authz_server.policy.compiler import CompileOptions
from authz_server.policy.documents import find_files
from authz_server.policy.errors import PolicyLoadError
from authz_server.policy.loader import load_directory
from authz_server.policy.model import EMPTY, PolicySet

LoadListener = Callable[[bool, "str | None", int, float], None]
"""Called after every load attempt: ``(ok, error, policy_count, seconds)``."""


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """``ready`` is true once a non-empty set has loaded and stays true while it serves."""

    ready: bool = False
    last_error: str | None = None
    last_success_time: float | None = None
    policy_count: int = 0
    generation: int = 0


class PolicyStore:
    def __init__(
        self,
        directory: str | Path,
        options: CompileOptions | None = None,
        on_load: LoadListener | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.options = options or CompileOptions()
        self._on_load = on_load
        self._current: PolicySet = EMPTY
        self.status = StoreStatus(last_error="not loaded yet")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fingerprint: object = None
        # Called with a freshly loaded set before it goes live (the pipeline fetches the keys
        # of its Authentication document); it must not raise.
        self.prepare: Callable[[PolicySet], None] | None = None

    def current(self) -> PolicySet:
        """The set to judge with (empty until a load succeeds)."""
        return self._current

    def reload(self) -> bool:
        """Load the directory now; True if the new set is live."""
        with self._lock:
            self._fingerprint = fingerprint(self.directory)
            started = time.perf_counter()
            error: str | None = None
            try:
                policies = load_directory(self.directory, self.options)
                if not len(policies):
                    error = f"no policies found in {self.directory}"
            except PolicyLoadError as exc:
                error = exc.format()
            except Exception as exc:  # a load must never take the server down
                error = f"loading {self.directory} failed: {type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
            status = self.status
            if error is None and self.prepare is not None:
                try:
                    self.prepare(policies)
                except Exception as exc:  # a load must never take the server down
                    error = f"preparing {self.directory} failed: {type(exc).__name__}: {exc}"
            if error is None:
                self._current = policies
                self.status = StoreStatus(
                    ready=True,
                    last_error=None,
                    last_success_time=time.time(),
                    policy_count=len(policies),
                    generation=status.generation + 1,
                )
            else:
                self.status = StoreStatus(
                    ready=bool(len(self._current)),
                    last_error=error,
                    last_success_time=status.last_success_time,
                    policy_count=len(self._current),
                    generation=status.generation,
                )
        if self._on_load is not None:
            self._on_load(error is None, error, len(self._current), seconds)
        return error is None

    def watch(self, interval: float = 1.0) -> None:
        """Poll the directory in a daemon thread and reload when it changes."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="policy-watch", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                changed = fingerprint(self.directory) != self._fingerprint
            except Exception:  # a racing ConfigMap swap; look again next time
                continue
            if changed:
                self.reload()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


def fingerprint(directory: Path) -> object:
    """What changes when any policy file changes (content, replacement, symlink swap)."""
    if not directory.exists():
        return None
    entries = []
    for path in find_files(directory):
        try:
            real = path.resolve()
            stat = os.stat(real)
        except OSError:
            entries.append((str(path), None))
            continue
        entries.append((str(path), str(real), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(entries)
