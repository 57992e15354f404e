"""`make bench`: authz-server against a bare Check server under h2load, on a mixed workload.

Servers run on the first half of the cores (a single-process server on the first core alone) and
h2load on the other half, with the same settings for every run (load.py); runs alternate between
servers and shapes round by round, so drift of a noisy machine hits all alike; each figure is
the median over the rounds.

The mixed workload (workload.SHAPES, each with its assumed share of the traffic, printed): the
typical request (a valid bearer token, an allowed tools/call), an argument-checked call, a
denied call, the credential error paths (missing, malformed, expired, badly signed), a DPoP
request, a policy's runtime error and an undecodable body. h2load replays one body per run, so
each shape is run on its own and the mix is computed as the share-weighted harmonic mean of the
shapes' checks/s:
1 / sum(share_i / rps_i), the throughput of a server that spends each shape's measured time on
its share of the requests (shapes.py). A DPoP proof is single use and h2load replays it: the
"dpop-replay" shape is a proof verified once and then refused as replayed (from the process's
replay cache: identity/dpop.py); a fresh proof is measured in process only (the identity DPoP
rows of the stage figures).

Printed: per shape checks/s of authz-server and the bare grpc.aio server, each shape's cost
relative to the typical one (rps_valid / rps_shape; target <= 1.5), the mix figure and the ratio
mix(authz)/mix(bare) (design budget 0.80), the valid shape on bare-sync (authz-server's own
transport doing nothing), latency p50/p99 at a quarter of authz-server's capacity for both
servers and the latency authz-server adds, the per-stage cost of one check (stages.py), the
ext_proc figures (bench_ext_proc.py), and a summary block.

Modes:
  python -m tests.benchmarks.run                 the comparison (default)
  python -m tests.benchmarks.run --workers N     checks/s with 1, 2, 4 ... N workers against as
                                                 many bare servers (SO_REUSEPORT), and scaling
  python -m tests.benchmarks.run --soak [N]      N checks of the mixed workload (default
                                                 1,000,000): RSS over time and its growth
  python -m tests.benchmarks.run --dispatch      the valid shape on bare, bare-sync, authz-server
                                                 --dispatch thread and inline, floor aio-decide
  python -m tests.benchmarks.run --breakdown     the valid shape's CPU per check as served, with
                                                 each stage switched off in turn (ablated.py)
  python -m tests.benchmarks.run --reload [S]    S seconds of load while policies are rewritten
                                                 every second; counts failed checks
  python -m tests.benchmarks.run --floor         the comparison plus floor_server.py's floors
--rounds and --requests (per run) size every mode; --no-stages skips the in-process figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.benchmarks import load, shapes, workload
from tests.benchmarks.load import CLIENTS, ROOT, STREAMS, Cores, Run, cpu_list, free_port

POLICIES = ROOT / "policies"
MIX_BUDGET, COST_TARGET, SCALING_TARGET, RSS_TARGET = 0.80, 1.5, 0.8, 10.0
FLOORS = ("floor-cel", "floor-decide")


def line(label: str, run: Run) -> str:
    return (
        f"{label:<28} {run.rps:8.0f} checks/s  p50 {run.p50_ms:6.2f} ms"
        f"  p99 {run.p99_ms:6.2f} ms  failed {run.failed}"
    )


def median_run(runs: Sequence[Run]) -> Run:
    return Run(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.failed for r in runs),
    )


class Bench:
    """One set of servers, measured shape by shape in alternating rounds."""

    def __init__(self, scratch: Path, cores: Cores, requests: int) -> None:
        self.scratch, self.cores, self.requests = scratch, cores, requests
        self.frame, self.log = scratch / "frame.bin", scratch / "h2load.log"
        self.load_cpus = cpu_list(cores.load)

    def run(self, port: int, shape: str, requests: int = 0, rate: float = 0.0, **kw: int) -> Run:
        shapes.write_frame(shape, self.frame)  # fresh: a DPoP proof's iat stays in its window
        return load.h2load(
            port, self.frame, requests or self.requests, self.log, self.load_cpus, rate=rate, **kw
        )

    def rounds(
        self, plan: Sequence[tuple[str, int, str]], rounds: int, **kw: int
    ) -> dict[tuple[str, str], Run]:
        """Run each (server, port, shape) of `plan` once per round, after a short warm-up;
        print every run; return the medians."""
        for _, port, shape in plan:  # warm up connections, caches and the JIT-less VM
            self.run(port, shape, max(self.requests // 10, 500), **kw)
        runs: dict[tuple[str, str], list[Run]] = {(s, sh): [] for s, _, sh in plan}
        for index in range(rounds):
            for server, port, shape in plan:
                run = self.run(port, shape, **kw)
                runs[(server, shape)].append(run)
                print(f"round {index + 1} " + line(f"{server} {shape}", run), flush=True)
        return {key: median_run(value) for key, value in runs.items()}


def compare(args: argparse.Namespace, scratch: Path) -> None:
    cores = Cores.split()
    bench = Bench(scratch, cores, args.requests)
    one = cores.first
    names = ["bare", "bare-sync", "authz", *(FLOORS if args.floor else ())]
    ports = {name: free_port() for name in names}
    with contextlib.ExitStack() as servers:
        servers.enter_context(load.helper_server("bare_server", ports["bare"], "aio", one))
        servers.enter_context(load.helper_server("bare_server", ports["bare-sync"], "sync", one))
        for name in FLOORS if args.floor else ():
            flavour = name.removeprefix("floor-")
            servers.enter_context(load.helper_server("floor_server", ports[name], flavour, one))
        pid = servers.enter_context(
            load.authz_server(ports["authz"], free_port(), POLICIES, scratch / "audit.log", one)
        )
        for shape in workload.SHAPES:  # each shape is answered as it says, before any load
            shapes.write_frame(shape.name, bench.frame, ports["authz"])
        plan = [("bare-sync", ports["bare-sync"], shapes.TYPICAL)]
        plan += [(name, ports[name], shapes.TYPICAL) for name in FLOORS if args.floor]
        for shape in workload.SHAPES:
            plan += [("bare", ports["bare"], shape.name), ("authz", ports["authz"], shape.name)]
        medians = bench.rounds(plan, args.rounds)
        quarter = latency_at_quarter(bench, ports, medians[("authz", shapes.TYPICAL)].rps, args)
        rss = {p: load.rss_kib(p) for p in load.worker_pids(pid)}
    print(
        f"\nh2load -c {CLIENTS} -m {STREAMS} -n {args.requests} on CPU {bench.load_cpus};"
        f" servers on CPU {one}; median of {args.rounds} rounds"
    )
    authz = {s.name: medians[("authz", s.name)].rps for s in workload.SHAPES}
    bare = {s.name: medians[("bare", s.name)].rps for s in workload.SHAPES}
    cost = shapes.cost_ratios(authz)
    print(f"  {'shape':<14}{'share':>6}{'authz':>9}{'bare':>9}{'authz/bare':>11}{'cost':>6}  what")
    for shape in workload.SHAPES:
        name = shape.name
        print(
            f"  {name:<14}{shape.share:>6.0%}{authz[name]:>9.0f}{bare[name]:>9.0f}"
            f"{authz[name] / bare[name]:>11.2f}{cost[name]:>6.2f}  {shape.what}"
        )
    print(
        "  (checks/s, medians; cost = checks/s of valid / checks/s of the shape. A fresh DPoP"
        " proof cannot be replayed by h2load: see the identity DPoP rows of the stage figures)"
    )
    mix_authz, mix_bare = shapes.mix_rps(authz), shapes.mix_rps(bare)
    print(f"mix (1 / sum(share/rps)): authz {mix_authz:.0f} checks/s, bare {mix_bare:.0f} checks/s")
    sync = medians[("bare-sync", shapes.TYPICAL)].rps
    print(
        f"valid on bare-sync {sync:.0f} checks/s: authz/bare-sync {authz['valid'] / sync:.2f}"
        " (the decision path alone, same transport)"
    )
    for name in FLOORS if args.floor else ():
        floor = medians[(name, shapes.TYPICAL)].rps
        print(f"{name} {floor:.0f} checks/s: {name}/bare {floor / bare['valid']:.2f}")
    for worker, kib in rss.items():
        print(f"RSS worker {worker}: {kib / 1024:.1f} MiB")
    extra = in_process(args)
    worst = max(cost, key=cost.__getitem__)
    summary(
        [
            f"mix ratio authz/bare: {mix_authz / mix_bare:.2f}"
            f"  ({mix_authz:.0f} / {mix_bare:.0f} checks/s; budget {MIX_BUDGET:.2f})"
            f"  {verdict(mix_authz / mix_bare >= MIX_BUDGET)}",
            f"worst/typical cost: {cost[worst]:.2f} ({worst}; target <= {COST_TARGET})"
            f"  {verdict(cost[worst] <= COST_TARGET)}",
            *quarter,
            *extra,
        ]
    )


def latency_at_quarter(
    bench: Bench, ports: dict[str, int], capacity: float, args: argparse.Namespace
) -> list[str]:
    """p50/p99 of the valid shape paced at a quarter of authz-server's measured checks/s, the
    same rate for the bare server, alternating; the added latency is authz minus bare."""
    rate = capacity / 4
    requests = max(int(rate * args.latency_seconds), 200)
    print(f"\nlatency at a quarter of capacity: {rate:.0f} checks/s (h2load --rps per client)")
    runs: dict[str, list[Run]] = {"bare": [], "authz": []}
    for index in range(max(args.rounds - 1, 1)):
        for name in runs:
            run = bench.run(ports[name], shapes.TYPICAL, requests, rate=rate)
            runs[name].append(run)
            print(f"round {index + 1} " + line(f"{name} valid @{rate:.0f}/s", run), flush=True)
    bare, authz = median_run(runs["bare"]), median_run(runs["authz"])
    return [
        f"latency at a quarter of capacity ({rate:.0f} checks/s, valid shape): "
        f"authz p50 {authz.p50_ms:.2f} ms p99 {authz.p99_ms:.2f} ms; "
        f"bare p50 {bare.p50_ms:.2f} ms p99 {bare.p99_ms:.2f} ms",
        f"added latency (authz - bare): p50 {authz.p50_ms - bare.p50_ms:+.2f} ms,"
        f" p99 {authz.p99_ms - bare.p99_ms:+.2f} ms",
    ]


def in_process(args: argparse.Namespace) -> list[str]:
    """The stage figures and ext_proc's, printed; returns the ext_proc target line."""
    if args.no_stages:
        return []
    import warnings

    from tests.benchmarks import bench_ext_proc, stages

    warnings.simplefilter("ignore")
    print("\nper-stage cost of one check, us (in process; warm: best of rounds of a tight loop,")
    print("cold: median with the CPU caches flushed before each call; see stages.py):")
    try:
        print(stages.render(stages.measure(POLICIES)))
    except Exception as exc:  # the load figures above stay worth printing
        print(f"  stage figures failed: {type(exc).__name__}: {exc}")
    print()
    captured = io.StringIO()
    argv = sys.argv
    try:
        sys.argv = [argv[0], str(POLICIES)]
        with contextlib.redirect_stdout(captured):
            bench_ext_proc.main()
    finally:
        sys.argv = argv
    print(captured.getvalue(), end="")
    return [f"ext_proc {t}" for t in captured.getvalue().splitlines() if t.startswith("non-list")]


def summary(lines: Sequence[str]) -> None:
    print("\n== summary (issue 18) ==")
    for text in lines:
        print(f"  {text}")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def workers_scaling(args: argparse.Namespace, scratch: Path) -> None:
    """authz-server --workers n and n bare grpc.aio servers on one port (SO_REUSEPORT, grpc's
    default), for n = 1, 2, 4 ... N. n servers run on the first n cores of the servers' half (one
    core each while there are enough), h2load on the other half with one thread per core and the
    same clients for every n."""
    cores = Cores.split()
    top = args.workers
    counts = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n < top} | {top})
    clients = max(CLIENTS, 4 * top)
    threads = len(cores.load)
    print(
        f"servers on CPU {cpu_list(cores.servers)} (n servers on the first n),"
        f" h2load on CPU {cpu_list(cores.load)}"
        f" (-t {min(threads, clients)} -c {clients} -m {STREAMS}, -n {args.requests} x workers)"
    )
    if top > len(cores.servers):
        print(
            f"NOTE: {top} workers but {len(cores.servers)} server core(s) on this machine: from"
            f" {len(cores.servers) + 1} workers on they share cores, so their figures show"
            " oversubscription, not scaling (run on a machine with 2N cores)"
        )
    if len(cores.load) == len(cores.servers) == 1 and cores.load == cores.servers:
        print("NOTE: one core: h2load and the servers share it")
    bench = Bench(scratch, cores, args.requests)
    results: dict[int, dict[str, float]] = {}
    for n in counts:
        port, bare_port = free_port(), free_port()
        servers_cpus = cpu_list(cores.servers[:n])
        with contextlib.ExitStack() as stack:
            for _ in range(n):
                stack.enter_context(
                    load.helper_server("bare_server", bare_port, "aio", servers_cpus)
                )
            stack.enter_context(
                load.authz_server(
                    port, free_port(), POLICIES, scratch / "audit.log", servers_cpus, workers=n
                )
            )
            time.sleep(1.0)  # the last workers to bind the shared port
            plan = [("bare", bare_port, shapes.TYPICAL), ("authz", port, shapes.TYPICAL)]
            print(f"-- {n} worker{'s' if n > 1 else ''} on CPU {servers_cpus}")
            bench.requests = args.requests * n
            medians = bench.rounds(plan, args.rounds, clients=clients, threads=threads)
        results[n] = {name: medians[(name, shapes.TYPICAL)].rps for name in ("bare", "authz")}
    print(f"\n  {'workers':>7}{'authz':>9}{'bare':>9}{'authz/bare':>11}{'scaling authz':>15}"
          f"{'scaling bare':>14}")  # fmt: skip
    base = results[1]
    for n, figures in results.items():
        print(
            f"  {n:>7}{figures['authz']:>9.0f}{figures['bare']:>9.0f}"
            f"{figures['authz'] / figures['bare']:>11.2f}"
            f"{figures['authz'] / (n * base['authz']):>15.2f}"
            f"{figures['bare'] / (n * base['bare']):>14.2f}"
        )
    print("  (checks/s of the valid shape, medians; scaling = rps(n) / (n * rps(1)))")
    scaling = results[top]["authz"] / (top * base["authz"])
    lines = [
        f"scaling authz-server rps({top}) / ({top} * rps(1)): {scaling:.2f}"
        f" (target >= {SCALING_TARGET})  {verdict(scaling >= SCALING_TARGET)}"
    ]
    if top > len(cores.servers):
        lines.append(f"(only {len(cores.servers)} server core(s) here: see the NOTE above)")
    if top == 1:
        lines.append("(one worker: nothing to scale; pass --workers N on a machine with 2N cores)")
    summary(lines)


def soak(args: argparse.Namespace, scratch: Path) -> None:
    """RSS of the serving worker over `args.soak` checks of the mixed workload: cycles in which
    each shape gets its share of `chunk` checks. A worker replaced for passing
    --max-worker-rss-mib shows up as a new pid; growth is reported per worker, from its RSS
    after the first cycle (caches filled) to the end."""
    cores = Cores.split()
    bench = Bench(scratch, cores, args.requests)
    chunk = min(50_000, args.soak)
    port = free_port()
    audit = scratch / "audit.log"
    first: dict[int, int] = {}
    rss: dict[int, int] = {}
    print("soak: mixed workload, per cycle of", chunk, "checks:", ", ".join(
        f"{s.name} {s.share:.0%}" for s in workload.SHAPES))  # fmt: skip
    with load.authz_server(port, free_port(), POLICIES, audit, cores.first) as pid:
        done = 0
        while done < args.soak:
            size = min(chunk, args.soak - done)
            runs = [
                (s.share, bench.run(port, s.name, max(int(size * s.share), 1)))
                for s in workload.SHAPES
            ]
            done += sum(max(int(size * s.share), 1) for s in workload.SHAPES)
            audit.write_bytes(b"")  # keep the disk flat; the server appends
            rss = {w: load.rss_kib(w) for w in load.worker_pids(pid)}
            for worker, kib in rss.items():
                first.setdefault(worker, kib)
            mix = shapes.mix_rps({str(i): r.rps for i, (_, r) in enumerate(runs)},
                                 {str(i): share for i, (share, _) in enumerate(runs)})  # fmt: skip
            failed = sum(r.failed for _, r in runs)
            shown = "  ".join(f"pid {w}: {kib / 1024:.1f} MiB" for w, kib in rss.items())
            print(f"{done:>9} checks  mix {mix:7.0f}/s  failed {failed}  RSS {shown}", flush=True)
    lines = [f"soak: {done} checks of the mixed workload"]
    for worker, kib in rss.items():
        growth = (kib - first[worker]) / first[worker] * 100
        lines.append(
            f"RSS growth worker {worker}: {growth:+.1f}% (target < {RSS_TARGET:.0f}%;"
            f" {first[worker] / 1024:.1f} MiB after the first cycle, {kib / 1024:.1f} MiB at the"
            f" end)  {verdict(growth < RSS_TARGET)}"
        )
    lines.append(f"workers seen: {len(first)} (more than one means a replacement happened)")
    summary(lines)


def dispatch(args: argparse.Namespace, scratch: Path) -> None:
    """The valid shape on: bare (grpc.aio), bare-sync, authz-server --dispatch thread and
    inline, and floor_server's aio-decide (the whole PolicyAuthorizer inline in a coroutine)."""
    cores = Cores.split()
    one = cores.first
    has_flag = "--dispatch" in load.serve_help()
    has_floor = "aio-decide" in (ROOT / "tests/benchmarks/floor_server.py").read_text()
    if not has_flag:
        print("NOTE: authz-server serve has no --dispatch here: authz-inline skipped")
    if not has_floor:
        print("NOTE: floor_server.py has no aio-decide flavour here: floor-aio-decide skipped")
    names = ["bare", "bare-sync", "authz-thread"]
    names += ["authz-inline"] * has_flag + ["floor-aio-decide"] * has_floor
    ports = {name: free_port() for name in names}
    bench = Bench(scratch, cores, args.requests)
    with contextlib.ExitStack() as stack:
        stack.enter_context(load.helper_server("bare_server", ports["bare"], "aio", one))
        stack.enter_context(load.helper_server("bare_server", ports["bare-sync"], "sync", one))
        if has_floor:
            stack.enter_context(
                load.helper_server("floor_server", ports["floor-aio-decide"], "aio-decide", one)
            )
        for mode in ("thread", "inline") if has_flag else ("",):
            name, extra = ("authz-" + mode, ["--dispatch", mode]) if mode else ("authz-thread", [])
            audit = scratch / f"audit-{name}.log"
            stack.enter_context(
                load.authz_server(ports[name], free_port(), POLICIES, audit, one, extra=extra)
            )
        plan = [(name, ports[name], shapes.TYPICAL) for name in names]
        medians = bench.rounds(plan, args.rounds)
    rps = {name: medians[(name, shapes.TYPICAL)].rps for name in names}
    print(f"\nvalid shape, median of {args.rounds} rounds, servers on CPU {one}")
    print(f"  {'server':<18}{'checks/s':>9}{'/bare':>7}{'/bare-sync':>11}{'/authz-thread':>14}")
    for name in names:
        print(
            f"  {name:<18}{rps[name]:>9.0f}{rps[name] / rps['bare']:>7.2f}"
            f"{rps[name] / rps['bare-sync']:>11.2f}{rps[name] / rps['authz-thread']:>14.2f}"
        )
    summary([f"{name}/bare: {rps[name] / rps['bare']:.2f}" for name in names[2:]])


def breakdown(args: argparse.Namespace, scratch: Path) -> None:
    """What each stage of the decision path costs as served: the server's CPU per check on the
    valid shape, with all stages, without each one in turn (ablated.py), without all five, and
    the bare synchronous server (the same transport doing nothing). A stage's cost is the CPU
    per check it takes away; what is left without all five is the adapters, the dispatch, the
    pipeline's own work and the response."""
    from tests.benchmarks.ablated import STAGES

    cores = Cores.split()
    one = cores.first
    variants = {"authz-server": "none", **{f"without {s}": s for s in STAGES}}
    variants["without all five"] = ",".join(STAGES)
    names = ["bare-sync", *variants]
    ports = {name: free_port() for name in names}
    pids: dict[str, int] = {}
    bench = Bench(scratch, cores, args.requests)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        pids["bare-sync"] = stack.enter_context(
            load.helper_server("bare_server", ports["bare-sync"], "sync", one)
        )
        for index, (name, stages) in enumerate(variants.items()):
            pids[name] = stack.enter_context(
                load.authz_server(
                    ports[name], free_port(), POLICIES, scratch / f"audit-{index}.log", one,
                    extra=["--max-worker-rss-mib", "0"],
                    module=["tests.benchmarks.ablated", stages],
                )
            )  # fmt: skip
        for name in names:  # warm up
            bench.run(ports[name], shapes.TYPICAL, max(args.requests // 10, 500))
        for index in range(args.rounds):
            for name in names:
                before = load.cpu_seconds(pids[name])
                run = bench.run(ports[name], shapes.TYPICAL)
                cpu_us = (load.cpu_seconds(pids[name]) - before) / args.requests * 1e6
                samples[name].append((run.rps, cpu_us))
                print(
                    f"round {index + 1} {name:<20} {run.rps:8.0f} checks/s"
                    f"  {cpu_us:6.0f} us CPU per check  failed {run.failed}",
                    flush=True,
                )
    rps = {name: statistics.median(r for r, _ in rows) for name, rows in samples.items()}
    cpu = {name: statistics.median(c for _, c in rows) for name, rows in samples.items()}
    full = cpu["authz-server"]
    print(
        f"\nvalid shape, servers on CPU {one}, median of {args.rounds} rounds of"
        f" {args.requests} checks; CPU per check from /proc (clock ticks: about"
        f" {1e6 / os.sysconf('SC_CLK_TCK') / args.requests:.1f} us per check of resolution)"
    )
    print(f"  {'server':<20}{'checks/s':>9}{'CPU us':>8}{'stage us':>10}{'share':>7}")
    for name in names:
        stage = full - cpu[name] if name.startswith("without") else None
        shown = f"{stage:>10.0f}{stage / full:>7.0%}" if stage is not None else " " * 17
        print(f"  {name:<20}{rps[name]:>9.0f}{cpu[name]:>8.0f}{shown}")
    rest = cpu["without all five"] - cpu["bare-sync"]
    summary(
        [
            f"authz-server {full:.0f} us CPU per check, bare-sync {cpu['bare-sync']:.0f}",
            *(f"{s}: {full - cpu[f'without {s}']:.0f} us as served" for s in STAGES),
            f"adapters, dispatch, pipeline and response (without all five - bare-sync):"
            f" {rest:.0f} us",
        ]
    )


def reload_under_load(args: argparse.Namespace, scratch: Path) -> None:
    seconds = args.reload
    policies = scratch / "policies"
    shutil.copytree(POLICIES, policies, ignore=shutil.ignore_patterns("tests"))
    github = policies / "github.yaml"
    original = github.read_text()
    variant = original.replace("x-authz-policy", "x-authz-policy-v2")
    cores = Cores.split()
    bench = Bench(scratch, cores, 5000)
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

    results: dict[str, int] = {}
    with load.authz_server(port, http_port, policies, scratch / "audit.log", cores.first):
        threads = [
            threading.Thread(target=rewrite),
            threading.Thread(target=verify_checks, args=(port, stop, results)),
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + seconds
        runs = []
        while time.monotonic() < deadline:
            runs.append(bench.run(port, shapes.TYPICAL))
        stop.set()
        for thread in threads:
            thread.join()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics") as reply:
            loads = [
                text for text in reply.read().decode().splitlines()
                if text.startswith("authz_policy_loads_total")
            ]  # fmt: skip
    failed = sum(r.failed for r in runs)
    print(f"reload under load: {seconds}s, {rewrites} policy rewrites, {len(runs) * 5000} h2load"
          f" checks ({failed} failed), {results['checked']} verified checks "
          f"({results['wrong']} wrong answers, {results['errors']} errors)")  # fmt: skip
    for text in loads:
        print(f"  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak", nargs="?", const=1_000_000, type=int, metavar="N")
    parser.add_argument("--reload", nargs="?", const=20, type=int, metavar="SECONDS")
    parser.add_argument("--workers", type=int, metavar="N", help="scaling over 1..N workers")
    parser.add_argument("--dispatch", action="store_true", help="compare the dispatch modes")
    parser.add_argument(
        "--breakdown", action="store_true", help="CPU per check with each stage switched off"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8_000, help="checks per h2load run")
    parser.add_argument("--latency-seconds", type=float, default=5.0, metavar="S",
                        help="length of each paced run at a quarter of capacity")  # fmt: skip
    parser.add_argument("--floor", action="store_true", help="also run floor_server.py's floors")
    parser.add_argument("--no-stages", action="store_true", help="skip the in-process figures")
    args = parser.parse_args()
    if args.workers is not None and args.workers < 1:
        parser.error("--workers needs N >= 1")
    load.require_h2load()
    modes: dict[str, Callable[[argparse.Namespace, Path], None]] = {
        "soak": soak, "reload": reload_under_load, "workers": workers_scaling,
        "dispatch": dispatch, "breakdown": breakdown,
    }  # fmt: skip
    chosen = [name for name in modes if getattr(args, name) not in (None, False)]
    if len(chosen) > 1:
        parser.error(f"one mode at a time: {', '.join('--' + m for m in chosen)}")
    print(f"kernel: {load.kernel()}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as scratch:
        mode = modes[chosen[0]] if chosen else compare
        mode(args, Path(scratch))


if __name__ == "__main__":
    main()
