"""The machinery of ``make bench``: servers started and pinned to cores, h2load runs parsed.

Servers run on the first half of the machine's cores and h2load on the other half (taskset), so
the load generator never takes CPU from what it measures. A single-process server is pinned to
the first core alone: the design states its budget per core.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
CLIENTS, STREAMS = 4, 8


@dataclass(frozen=True)
class Cores:
    """The servers' cores and the load generator's (both non-empty; on one core, shared)."""

    servers: tuple[int, ...]
    load: tuple[int, ...]

    @property
    def first(self) -> str:
        return str(self.servers[0])

    @staticmethod
    def split() -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return Cores(tuple(cpus), tuple(cpus))
        half = len(cpus) // 2
        return Cores(tuple(cpus[:half]), tuple(cpus[half:]))


def cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpus: str, command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", cpus, *command]
    return command


def kernel() -> str:
    """The kernel the figures come from: the host's, or gVisor's (whose ``uname`` shows a fixed
    Linux 4.4.0, so its boot log is what tells it apart)."""
    release = f"Linux {os.uname().release}"
    try:
        boot = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        boot = ""
    if "gVisor" in boot:
        return f"gVisor (sandboxed kernel; uname says {release})"
    return release


def require_h2load() -> str:
    h2load = shutil.which("h2load")
    if not h2load:
        sys.exit("h2load not found: install Debian's nghttp2-client (make bench does it)")
    return h2load


@contextlib.contextmanager
def process(command: list[str], ready: str | None = None, port: int = 0) -> Iterator[int]:
    """Run a server until the block ends; wait for its HTTP `ready` URL or its gRPC port."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"server exited early: {' '.join(command)}")
            try:
                if ready:
                    with urllib.request.urlopen(ready, timeout=1) as reply:
                        if reply.status == 200:
                            break
                else:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"server did not start: {' '.join(command)}")
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def helper_server(
    module: str, port: int, flavour: str, cpus: str
) -> contextlib.AbstractContextManager[int]:
    """bare_server.py or floor_server.py on `cpus`."""
    command = [sys.executable, "-m", f"tests.benchmarks.{module}", f"127.0.0.1:{port}", flavour]
    return process(pinned(cpus, command), port=port)


def authz_server(
    port: int,
    http_port: int,
    policies: Path,
    audit: Path,
    cpus: str,
    workers: int = 1,
    extra: Sequence[str] = (),
    module: Sequence[str] = ("authz_server",),
) -> contextlib.AbstractContextManager[int]:
    """authz-server on `cpus`; `module`: what `python -m` runs, with its own arguments before
    the `serve` command's (ablated.py's stages)."""
    command = [
        sys.executable, "-m", *module, "serve", "--policies", str(policies),
        "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{http_port}",
        "--http-authz-address", "",
        "--audit-log", str(audit), "--workers", str(workers), "--log-level", "warning",
        # h2load does not reconnect after a GOAWAY; Envoy does, so production keeps the default.
        "--max-connection-age", "0", *extra,
    ]  # fmt: skip
    return process(pinned(cpus, command), ready=f"http://127.0.0.1:{http_port}/readyz")


def serve_help() -> str:
    """`authz-server serve --help`, to see which options this checkout has."""
    command = [sys.executable, "-m", "authz_server", "serve", "--help"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT).stdout


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int


def h2load(
    port: int,
    frame: Path,
    requests: int,
    log: Path,
    cpus: str,
    clients: int = CLIENTS,
    streams: int = STREAMS,
    threads: int = 1,
    rate: float = 0.0,
) -> Run:
    """One h2load run of `requests` unary Check calls, all with the body in `frame`. A `rate`
    (checks/s over all clients) paces the run with h2load's --rps, per client."""
    command = [
        require_h2load(), "-n", str(requests), "-c", str(clients), "-m", str(streams),
        "-t", str(max(1, min(threads, clients))),
        "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log}", f"http://127.0.0.1:{port}{CHECK_PATH}",
    ]  # fmt: skip
    if rate:
        command[1:1] = [f"--rps={max(1, round(rate / clients))}"]
    log.unlink(missing_ok=True)  # h2load appends to its log file: keep this run's lines only
    out = subprocess.run(pinned(cpus, command), capture_output=True, text=True, check=True).stdout
    rps = float(out.split(" req/s")[0].rsplit(",", 1)[1])
    counts = next(line for line in out.splitlines() if line.startswith("requests:"))
    failed = sum(
        int(counts.split(f" {kind}")[0].rsplit(",", 1)[1])
        for kind in ("failed", "errored", "timeout")
    )
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines())
    return Run(rps, percentile(durations, 0.50) / 1000, percentile(durations, 0.99) / 1000, failed)


def percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))])


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pids(pid: int) -> list[int]:
    """The serving processes: the supervisor's children when it has any, else itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return found or [pid]
