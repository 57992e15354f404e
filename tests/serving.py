"""`authz-server serve` as a real process for tests: loopback ports, readiness, clean stop.

The wire, lifecycle, end-to-end and observability tests all run the server the way users do,
so they share this one way of starting it, waiting for ``/readyz`` and stopping it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    # The server's stderr goes to a file, never a pipe: a full pipe would stall the server.
    log: Path
    # The HTTP authorizer's port (0 when the test turned it off).
    http_authz_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def http(self, path: str) -> tuple[int, str]:
        return http_get(self.http_port, path)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    policies: Path,
    *args: str,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    grpc_port: int | None = None,
) -> ServerProcess:
    """Start ``serve`` on loopback ports (free ones unless given; the HTTP authorizer too,
    unless ``args`` sets ``--http-authz-address``); by default return once ``/readyz`` answers
    200."""
    grpc_port, http_port = grpc_port or free_port(), free_port()
    http_authz_port = 0
    if "--http-authz-address" not in args:
        http_authz_port = free_port()
        args = ("--http-authz-address", f"127.0.0.1:{http_authz_port}", *args)
    if log is None:
        log = Path(tempfile.mkstemp(prefix="authz-server-", suffix=".log")[1])
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authz_server", "serve", "--policies", str(policies),
             "--grpc-address", f"127.0.0.1:{grpc_port}",
             "--http-address", f"127.0.0.1:{http_port}", *args],
            cwd=ROOT, env=dict(env) if env is not None else clean_environment(),
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    server = ServerProcess(proc, grpc_port, http_port, log, http_authz_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.output()}")
        try:
            status = server.http("/readyz")[0]
        except OSError:
            status = 0
        if status == 200 or (status and not wait_ready):
            return server
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server not ready within 30 s:\n{server.output()}")


def stop_server(server: ServerProcess, timeout: float = 30) -> int:
    """SIGTERM (the supervisor forwards it and the workers drain); return the exit status."""
    if server.proc.poll() is None:
        server.proc.terminate()
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait()


def clean_environment() -> dict[str, str]:
    """The test process's environment without settings that would change how serve runs, but
    with the run's state directory (tests/conftest.py) and AUTHZ_DISPATCH, so that the serving
    tests can be run against either dispatch (``AUTHZ_DISPATCH=inline pytest tests/wire``)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key != "PROMETHEUS_MULTIPROC_DIR"
        and (not key.startswith("AUTHZ_") or key in ("AUTHZ_STATE_DIR", "AUTHZ_DISPATCH"))
    }
