"""A real ``redis-server`` (the Debian package) on a loopback port, for tests.

Started without persistence (``--save ''``, no append-only file) in a temporary directory, with a
password so that every test also goes through authentication. Other test packages (the identity
and oversight tests running two ``serve`` replicas) can start one the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.serving import free_port

PASSWORD = "test-only-redis-password"


def redis_binary() -> str:
    """The redis-server path; a loud failure in CI (``make test`` installs it), a skip elsewhere."""
    found = shutil.which("redis-server")
    if found:
        return found
    message = (
        "redis-server is not installed (Debian: apt-get install redis-server; make test does it)"
    )
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class RedisServer:
    directory: Path
    extra: tuple[str, ...] = ()
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, prefix: str = "", *, timeout: float = 1.0, password: str = PASSWORD) -> str:
        query = f"?timeout={timeout:g}" + (f"&prefix={prefix}" if prefix else "")
        return f"redis://:{password}@127.0.0.1:{self.port}/0{query}"

    def start(self) -> RedisServer:
        """Start on a free port, or again on the same port after :meth:`stop` (a new, empty
        server where the old one was)."""
        fixed = self.port != 0
        # A free port can be taken between finding and binding it: try a few.
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            if self._launch():
                return self
        raise RuntimeError(f"redis-server did not start; see {self.directory}")

    def _launch(self) -> bool:
        binary = redis_binary()
        with (self.directory / f"redis-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory), "--requirepass", PASSWORD,
                 *self.extra],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if self._wait_ready():
            return True
        self.stop()
        return False

    def _wait_ready(self) -> bool:
        client = redis.Redis(port=self.port, password=PASSWORD, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, decode_responses=True)

    def pause(self) -> None:
        """Freeze the server: connections stay open and nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_redis(*extra: str) -> RedisServer:
    return RedisServer(Path(tempfile.mkdtemp(prefix="authz-redis-")), extra).start()
