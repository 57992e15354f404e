"""``--workers N``: a supervisor process and N serving processes sharing the ports.

gRPC in Python serves one core per process, so throughput scales with processes. Each worker binds
the same addresses with SO_REUSEPORT and the kernel spreads connections; the supervisor forwards
SIGTERM/SIGINT, restarts a worker that dies unexpectedly, and exits 0 only if every worker shut
down cleanly.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

from authz_server.config import ServeConfig

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0


def worker_command(config: ServeConfig) -> list[str]:
    """The command line of one worker: the same settings, one process, shared ports."""
    command = [
        sys.executable,
        "-m",
        "authz_server",
        "serve",
        "--policies",
        str(config.policies),
        "--grpc-address",
        str(config.grpc_address),
        "--http-address",
        str(config.http_address),
        "--workers",
        "1",
        "--max-receive-bytes",
        str(config.max_receive_bytes),
        "--grace-period",
        str(config.grace_period),
        "--combine",
        config.combine,
        "--default-decision",
        config.default_decision,
        "--log-level",
        config.log_level,
        "--audit-log",
        config.audit_log,
        "--audit-max-value-length",
        str(config.audit_max_value_length),
        "--metrics-tool-limit",
        str(config.metrics_tool_limit),
    ]
    if config.decode_failures_to_policies:
        command.append("--decode-failures-to-policies")
    return command


def supervise(config: ServeConfig) -> int:
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned_dir = None
    if not metrics_dir:
        metrics_dir = owned_dir = tempfile.mkdtemp(prefix="authz-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, "AUTHZ_REUSE_PORT": "1"}
    command = worker_command(config)
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signum)

    workers = [subprocess.Popen(command, env=env) for _ in range(config.workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("supervising %d workers (pids %s)", len(workers), [p.pid for p in workers])
    try:
        while not stopping:
            for index, proc in enumerate(workers):
                code = proc.poll()
                if code is not None and not stopping:
                    _mark_dead(proc.pid)
                    log.error("worker %d exited with %d; restarting", proc.pid, code)
                    time.sleep(RESTART_DELAY_SECONDS)
                    if not stopping:
                        workers[index] = subprocess.Popen(command, env=env)
            time.sleep(0.2)
        return _wait_all(workers, config.grace_period + 5)
    finally:
        if owned_dir:
            shutil.rmtree(owned_dir, ignore_errors=True)


def _wait_all(workers: list[subprocess.Popen[bytes]], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    worst = 0
    for proc in workers:
        try:
            code = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", proc.pid)
            proc.kill()
            code = proc.wait()
        # A worker signalled before it installed its handlers dies of the signal; it had not
        # served anything yet, so that is a clean stop too.
        if code in (-signal.SIGTERM, -signal.SIGINT):
            code = 0
        worst = worst or code
    return 0 if worst == 0 else 1


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
