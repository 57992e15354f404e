"""A real `authz-server serve` process on loopback, and the official-protos client, for the wire
tests."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import ServerProcess, start_server, stop_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


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
