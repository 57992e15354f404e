"""``serve``: a supervisor process and N serving processes sharing the ports.

gRPC in Python serves one core per process, so throughput scales with processes. Each worker binds
the same addresses (gRPC, the HTTP side server, the HTTP authorizer) with SO_REUSEPORT and the
kernel spreads connections; the supervisor forwards
SIGTERM/SIGINT, restarts a worker that dies unexpectedly, and exits 0 only if every worker shut
down cleanly.

Workers are also replaced when their memory passes ``--max-worker-rss-mib``: cel-expr-python
0.1.3 leaks a little memory on every call from CEL into a Python function (the Kyverno library
functions), which no code of ours can reclaim. The successor starts first, on the same ports, and
the old worker drains only once the successor reports that it serves, and takes no new connection
while it drains, so no check is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType

from authz_server.config import Address, ServeConfig
from authz_server.oversight.admin import AdminError
from authz_server.serve.admin import start_admin

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
CONTROL_FD_VARIABLE = "AUTHZ_CONTROL_FD"
# Sent to a worker whose successor now serves: stop like on SIGTERM, but first stop taking new
# connections, which can then only reach the successor (see serve/listeners.py). On SIGTERM the
# whole server stops and the workers keep accepting while they drain, as a lone process would.
HAND_OVER_SIGNAL = signal.SIGUSR1


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
        "--max-connection-age",
        str(config.max_connection_age),
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
        "--max-worker-rss-mib",
        str(config.max_worker_rss_mib),
        # The supervisor serves the admin listener, once for all workers (see serve/admin.py).
        "--admin-address",
        "",
        "--approval-ttl",
        str(config.approval_ttl),
        "--admin-public-url",
        config.approval_url,
        "--http-authz-address",
        str(config.http_authz_address or ""),
        "--ext-proc-max-body-bytes",
        str(config.ext_proc_max_body_bytes),
        "--ext-proc-oversize",
        config.ext_proc_oversize,
        "--ext-proc-streams",
        str(config.ext_proc_streams),
        "--dispatch",
        config.dispatch,
    ]
    if config.http_authz_nested_request:
        command.append("--http-authz-nested-request")
    if config.decode_failures_to_policies:
        command.append("--decode-failures-to-policies")
    if config.decode_content_encoding:
        command.append("--decode-content-encoding")
    return command


def worker_environment(config: ServeConfig) -> dict[str, str]:
    """What a worker's environment adds to the supervisor's. The state store's URL goes here,
    not on the command line, because it may carry a password; every worker must get it, or each
    would open the default store and a DPoP proof could be replayed to a sibling."""
    env = {"AUTHZ_REUSE_PORT": "1"}
    if config.state is not None:
        env["AUTHZ_STATE"] = config.state
    return env


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    control: int  # read end of the pipe the worker reports on
    replaces: _Worker | None = None  # the worker this one takes over from, once ready
    ready: bool = False
    retiring: bool = False


class WorkerControl:
    """The worker's side of the pipe to its supervisor (no-op without a supervisor)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._asked_to_retire = False
        self._parent = os.getppid()

    @classmethod
    def from_environment(cls) -> WorkerControl:
        value = os.environ.get(CONTROL_FD_VARIABLE, "")
        return cls(int(value) if value.isdigit() else None)

    @property
    def attached(self) -> bool:
        """Whether this process is a worker started by a supervisor."""
        return self._fd is not None

    @property
    def orphaned(self) -> bool:
        """Whether the supervisor is gone (this worker was re-parented): time to stop."""
        return self._fd is not None and os.getppid() != self._parent

    def ready(self) -> None:
        self._send(b"ready\n")

    def retire(self) -> None:
        """Ask for a replacement; the supervisor stops this worker once it is serving."""
        if not self._asked_to_retire:
            self._asked_to_retire = True
            self._send(b"retire\n")

    def _send(self, message: bytes) -> None:
        if self._fd is not None:
            try:
                os.write(self._fd, message)
            except OSError:
                log.warning("supervisor pipe closed")


def supervise(config: ServeConfig) -> int:
    if 0 in (address.port for address in config.listen_addresses):
        log.error("workers share fixed ports: port 0 needs --workers 1 --max-worker-rss-mib 0")
        return 2
    busy = [str(a) for a in config.listen_addresses if not _bindable(a)]
    if busy:
        log.error("address already in use: %s", ", ".join(busy))
        return 1
    try:
        admin = start_admin(config)
    except (AdminError, OSError) as exc:
        log.error("%s", exc)
        return 1
    try:
        return _supervise(config)
    finally:
        if admin is not None:
            admin.stop()


def _supervise(config: ServeConfig) -> int:
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned_dir = None
    if not metrics_dir:
        metrics_dir = owned_dir = tempfile.mkdtemp(prefix="authz-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, **worker_environment(config)}
    command = worker_command(config)
    selector = selectors.DefaultSelector()
    stopping = False

    def spawn(replaces: _Worker | None = None) -> _Worker:
        read_end, write_end = os.pipe()
        proc = subprocess.Popen(
            command, env={**env, CONTROL_FD_VARIABLE: str(write_end)}, pass_fds=(write_end,)
        )
        os.close(write_end)
        worker = _Worker(proc, read_end, replaces)
        selector.register(read_end, selectors.EVENT_READ, worker)
        return worker

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = [spawn() for _ in range(config.workers)]
    log.info("supervising %d workers (pids %s)", len(workers), [w.proc.pid for w in workers])
    try:
        while not stopping:
            for key, _ in selector.select(timeout=0.2):
                worker = key.data
                for message in _read_messages(selector, worker):
                    if message == "retire" and not worker.retiring and not stopping:
                        worker.retiring = True
                        log.info(
                            "worker %d asked to be replaced; starting its successor",
                            worker.proc.pid,
                        )
                        workers.append(spawn(replaces=worker))
                    elif message == "ready":
                        worker.ready = True
                    if message == "ready" and worker.replaces is not None:
                        old, worker.replaces = worker.replaces, None
                        log.info(
                            "worker %d serving; stopping worker %d", worker.proc.pid, old.proc.pid
                        )
                        old.proc.send_signal(HAND_OVER_SIGNAL)
            for worker in list(workers):
                code = worker.proc.poll()
                if code is None or stopping:
                    continue
                workers.remove(worker)
                _forget(selector, worker)
                _mark_dead(worker.proc.pid, metrics_dir)
                if worker.retiring:
                    # Its successor was started when it asked to retire and takes its place,
                    # whatever this exit status: restarting it as well would make N+1 workers.
                    if code != 0:
                        log.warning(
                            "retiring worker %d exited with %d; its successor takes its place",
                            worker.proc.pid,
                            code,
                        )
                    continue
                if not worker.ready:
                    # Dying before serving is a configuration or environment problem (a port
                    # in use, an unreadable directory): restarting would only repeat it.
                    log.error(
                        "worker %d failed to start (exit %d); stopping", worker.proc.pid, code
                    )
                    on_signal(signal.SIGTERM, None)
                    _wait_all([w.proc for w in workers], config.grace_period + 5)
                    return 1
                log.error("worker %d exited with %d; restarting", worker.proc.pid, code)
                time.sleep(RESTART_DELAY_SECONDS)
                if not stopping:
                    workers.append(spawn())
        return _wait_all([w.proc for w in workers], config.grace_period + 5)
    finally:
        for worker in workers:
            _forget(selector, worker)
        if owned_dir:
            shutil.rmtree(owned_dir, ignore_errors=True)


def _bindable(address: Address) -> bool:
    """Whether nothing else listens there. Workers bind with SO_REUSEPORT, which would let a
    second server share the port silently; a bind without it first makes that an error.
    SO_REUSEADDR, as every server sets it: connections of a previous run still in TIME_WAIT on
    the port must not stop a restart (a listener still conflicts)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address.host, address.port))
        except OSError:
            return False
    return True


def _read_messages(selector: selectors.BaseSelector, worker: _Worker) -> list[str]:
    try:
        data = os.read(worker.control, 4096)
    except OSError:
        data = b""
    if not data:
        _forget(selector, worker)
        return []
    return data.decode("ascii", "replace").split()


def _forget(selector: selectors.BaseSelector, worker: _Worker) -> None:
    if worker.control < 0:
        return
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(worker.control)
    os.close(worker.control)
    worker.control = -1


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


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges; its counters stay, so totals keep adding up."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)
