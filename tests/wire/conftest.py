"""Start a real `authz-server serve` process on loopback for the wire tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=5
            ) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def start_server(policies: Path, *extra: str) -> ServerProcess:
    grpc_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authz_server",
            "serve",
            "--policies",
            str(policies),
            "--grpc-address",
            f"127.0.0.1:{grpc_port}",
            "--http-address",
            f"127.0.0.1:{http_port}",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = ServerProcess(proc, grpc_port, http_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            if server.http("/readyz")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(server: ServerProcess) -> int:
    if server.proc.poll() is None:
        server.proc.terminate()
    try:
        return server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    running = start_server(HERE / "policies")
    yield running
    stop_server(running)


def wire_python() -> str:
    python = os.environ.get("AUTHZ_WIRE_PYTHON") or str(ROOT / ".venv-wire" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(
            f"{python} not found: the wire tests need the official Envoy protos in their own "
            "environment; run `make wire-env` (make test does it)"
        )
    return python


def official(target: str, *scenarios: str) -> dict[str, dict]:
    """Run scenarios through the xds-protos client in its own interpreter."""
    done = subprocess.run(
        [wire_python(), str(HERE / "official_client.py"), target, *scenarios],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
