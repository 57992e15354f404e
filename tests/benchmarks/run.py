"""`make bench`: authz-server against a bare Check server, side by side, under h2load.

The servers run on one core (CPU 0) and h2load on the other, with the same command and the same
realistic tools/call request (tests/benchmarks/workload.py); runs alternate so that drift of a
noisy machine hits all alike. Two bare servers answer OK without work: "bare" on grpc.aio (the
design's ceiling) and "bare-sync" on the synchronous transport authz-server runs. Printed:
checks/s, p50 and p99 latency per run, the ratios authz/bare and authz/bare-sync (medians), RSS
per worker, and the per-stage cost of one check, the identity stage's per kind of credential
(bearer token repeated or new, DPoP) among them. The stage figures alone, without h2load:
``python -m tests.benchmarks.stages``.

Modes:
  python -m tests.benchmarks.run                 the comparison (default)
  python -m tests.benchmarks.run --soak [N]      N checks (default 1,000,000): RSS over time
  python -m tests.benchmarks.run --reload [S]    S seconds of load while policies are rewritten
                                                 every second; counts failed checks
  python -m tests.benchmarks.run --workers 2     the comparison with authz-server on both cores
  python -m tests.benchmarks.run --floor         the comparison plus two servers doing only part
                                                 of a check (floor_server.py): the least any
                                                 authz-server on this stack can cost
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import workload

ROOT = Path(__file__).resolve().parents[2]
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
SERVER_CPU, LOAD_CPU = "0", "1"


@dataclass(frozen=True)
class Run:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: str, command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", cpu, *command]
    return command


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
        deadline = time.monotonic() + 30
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


def helper_server(module: str, port: int, flavour: str) -> contextlib.AbstractContextManager[int]:
    """bare_server.py or floor_server.py, on the servers' core."""
    command = [sys.executable, "-m", f"tests.benchmarks.{module}", f"127.0.0.1:{port}", flavour]
    return process(pinned(SERVER_CPU, command), port=port)


def authz_server(
    port: int, http_port: int, policies: Path, audit: Path, workers: int = 1
) -> contextlib.AbstractContextManager[int]:
    command = [
        sys.executable, "-m", "authz_server", "serve", "--policies", str(policies),
        "--grpc-address", f"127.0.0.1:{port}", "--http-address", f"127.0.0.1:{http_port}",
        "--http-authz-address", "",
        "--audit-log", str(audit), "--workers", str(workers), "--log-level", "warning",
        # h2load does not reconnect after a GOAWAY; Envoy does, so production keeps the default.
        "--max-connection-age", "0",
    ]  # fmt: skip
    return process(
        pinned(authz_cpus(workers), command), ready=f"http://127.0.0.1:{http_port}/readyz"
    )


def authz_cpus(workers: int) -> str:
    """One worker shares the bare server's core; more spread over the load generator's too."""
    return SERVER_CPU if workers == 1 else f"{SERVER_CPU},{LOAD_CPU}"


def h2load(
    port: int, frame: Path, requests: int, log: Path, clients: int = 4, streams: int = 8
) -> Run:
    command = pinned(LOAD_CPU, [
        require_h2load(), "-n", str(requests), "-c", str(clients), "-m", str(streams),
        "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log}", f"http://127.0.0.1:{port}{CHECK_PATH}",
    ])  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(out.split(" req/s")[0].rsplit(",", 1)[1])
    counts = next(line for line in out.splitlines() if line.startswith("requests:"))
    failed = sum(
        int(counts.split(f" {kind}")[0].rsplit(",", 1)[1])
        for kind in ("failed", "errored", "timeout")
    )
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines())
    return Run(
        "", rps, percentile(durations, 0.50) / 1000, percentile(durations, 0.99) / 1000, failed
    )


def percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return found or [pid]


# "bare" is the design's ceiling (grpc.aio), "bare-sync" the same do-nothing handler on the
# transport authz-server runs. The floors (--floor) do part of a check: see floor_server.py.
SERVERS = ("bare", "bare-sync", "authz")
FLOORS = ("floor-cel", "floor-decide")


def compare(
    rounds: int, requests: int, scratch: Path, workers: int = 1, floors: bool = False
) -> None:
    frame = scratch / "frame.bin"
    frame.write_bytes(workload.grpc_frame())
    log = scratch / "h2load.log"
    names = SERVERS + FLOORS if floors else SERVERS
    ports = {name: free_port() for name in names}
    http_port = free_port()
    runs: dict[str, list[Run]] = {name: [] for name in names}
    with contextlib.ExitStack() as servers:
        servers.enter_context(helper_server("bare_server", ports["bare"], "aio"))
        servers.enter_context(helper_server("bare_server", ports["bare-sync"], "sync"))
        for name in FLOORS if floors else ():
            flavour = name.removeprefix("floor-")
            servers.enter_context(helper_server("floor_server", ports[name], flavour))
        pid = servers.enter_context(
            authz_server(
                ports["authz"], http_port, ROOT / "policies", scratch / "audit.log", workers
            )
        )
        for port in ports.values():  # warm up connections, caches and the JIT-less VM
            h2load(port, frame, max(requests // 5, 1000), log)
        for index in range(rounds):
            for name, port in ports.items():
                run = h2load(port, frame, requests, log)
                runs[name].append(Run(name, run.rps, run.p50_ms, run.p99_ms, run.failed))
                print(
                    f"round {index + 1} {name:<12} {run.rps:9.0f} checks/s"
                    f"  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  failed {run.failed}",
                    flush=True,
                )
        rss = {p: rss_kib(p) for p in worker_pids(pid)}
    medians = {name: statistics.median(r.rps for r in runs[name]) for name in names}
    print()
    print(
        f"h2load -n {requests} -c 4 -m 8 on CPU {LOAD_CPU}; bare servers on CPU {SERVER_CPU},"
        f" authz-server ({workers} worker{'s' if workers > 1 else ''}) on CPU {authz_cpus(workers)}"
    )
    for name in names:
        chosen = runs[name]
        print(
            f"{name:<12} median {medians[name]:9.0f} checks/s"
            f"  p50 {statistics.median(r.p50_ms for r in chosen):6.2f} ms"
            f"  p99 {statistics.median(r.p99_ms for r in chosen):6.2f} ms"
        )
    print(f"ratio authz/bare: {medians['authz'] / medians['bare']:.2f}  (design budget: 0.80)")
    print(
        f"ratio authz/bare-sync: {medians['authz'] / medians['bare-sync']:.2f}"
        "  (the decision path alone, same transport)"
    )
    for name in FLOORS if floors else ():
        print(f"ratio {name}/bare: {medians[name] / medians['bare']:.2f}  (see floor_server.py)")
    for worker, kib in rss.items():
        print(f"RSS worker {worker}: {kib / 1024:.1f} MiB")
    print()
    from tests.benchmarks import stages

    figures = stages.measure(ROOT / "policies")
    print("per-stage cost of one check, us (in process; warm: best of rounds of a tight loop,")
    print("cold: median with the CPU caches flushed before each call; see stages.py):")
    print(stages.render(figures))


def soak(total: int, scratch: Path) -> None:
    """RSS of the serving worker over `total` checks. A worker replaced for passing
    --max-worker-rss-mib shows up as a new pid; growth is reported per worker."""
    frame = scratch / "frame.bin"
    frame.write_bytes(workload.grpc_frame())
    log = scratch / "h2load.log"
    port, http_port = free_port(), free_port()
    chunk = 100_000
    with authz_server(port, http_port, ROOT / "policies", scratch / "audit.log") as pid:
        done = 0
        first_rss: dict[int, int] = {}
        while done < total:
            n = min(chunk, total - done)
            run = h2load(port, frame, n, log)
            done += n
            (scratch / "audit.log").write_bytes(b"")  # keep the disk flat; the server appends
            rss = {worker: rss_kib(worker) for worker in worker_pids(pid)}
            for worker, kib in rss.items():
                first_rss.setdefault(worker, kib)
            shown = "  ".join(f"pid {w}: {kib / 1024:.1f} MiB" for w, kib in rss.items())
            print(
                f"{done:>9} checks  {run.rps:7.0f}/s  failed {run.failed}  RSS {shown}", flush=True
            )
    print(f"soak: {total} checks")
    for worker, kib in rss.items():
        growth = (kib - first_rss[worker]) / first_rss[worker] * 100
        print(
            f"  worker {worker}: RSS after its first {chunk} checks {first_rss[worker] / 1024:.1f}"
            f" MiB, at the end {kib / 1024:.1f} MiB, growth {growth:+.1f}%"
        )
    print(f"  workers seen: {len(first_rss)} (more than one means a replacement happened)")


def reload_under_load(seconds: int, scratch: Path) -> None:
    policies = scratch / "policies"
    shutil.copytree(ROOT / "policies", policies, ignore=shutil.ignore_patterns("tests"))
    github = policies / "github.yaml"
    original = github.read_text()
    variant = original.replace("x-authz-policy", "x-authz-policy-v2")
    frame = scratch / "frame.bin"
    frame.write_bytes(workload.grpc_frame())
    port, http_port = free_port(), free_port()
    stop = threading.Event()
    rewrites = 0

    def rewrite() -> None:
        nonlocal rewrites
        while not stop.wait(1.0):
            text = variant if rewrites % 2 == 0 else original
            tmp = github.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(github)  # atomic, as a config management tool would write it
            rewrites += 1

    from tests.benchmarks.verify import verify_checks

    with authz_server(port, http_port, policies, scratch / "audit.log"):
        writer = threading.Thread(target=rewrite)
        writer.start()
        verifier = threading.Thread(target=verify_checks, args=(port, stop, results := {}))
        verifier.start()
        deadline = time.monotonic() + seconds
        runs = []
        while time.monotonic() < deadline:
            runs.append(h2load(port, frame, 5000, scratch / "h2load.log"))
        stop.set()
        writer.join()
        verifier.join()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics") as reply:
            loads = [
                line for line in reply.read().decode().splitlines()
                if line.startswith("authz_policy_loads_total")
            ]  # fmt: skip
    sent = sum(5000 for _ in runs)
    failed = sum(r.failed for r in runs)
    print(f"reload under load: {seconds}s, {rewrites} policy rewrites, {sent} h2load checks "
          f"({failed} failed), {results['checked']} verified checks "
          f"({results['wrong']} wrong answers, {results['errors']} errors)")  # fmt: skip
    for line in loads:
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", nargs="?", const=1_000_000, type=int, metavar="N")
    parser.add_argument("--reload", nargs="?", const=20, type=int, metavar="SECONDS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    # More than one worker also uses the load generator's core: not the design's comparison
    # (one core each), but what a second core buys.
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--floor", action="store_true", help="also run floor_server.py's floors")
    args = parser.parse_args()
    require_h2load()
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as scratch:
        if args.soak:
            soak(args.soak, Path(scratch))
        elif args.reload:
            reload_under_load(args.reload, Path(scratch))
        else:
            compare(args.rounds, args.requests, Path(scratch), args.workers, args.floor)


if __name__ == "__main__":
    main()
