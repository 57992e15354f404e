"""A real `authz-server serve` process on loopback, and the official-protos client, for the wire
tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.identity.helpers import ORIGIN, SigningKey, ec_key, proof, token
from tests.serving import ServerProcess, clean_environment, start_server, stop_server

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


def official(
    target: str, *scenarios: str, headers: dict[str, dict[str, str]] | None = None
) -> dict[str, dict]:
    """Run scenarios through the xds-protos client in its own interpreter; ``headers`` are the
    extra request headers of each ``call:LABEL`` scenario, by label (sent on stdin)."""
    done = subprocess.run(
        [wire_python(), str(HERE / "official_client.py"), target, *scenarios],
        input=json.dumps(headers or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass(frozen=True)
class IdentityPolicies:
    """A copy of identity_policies/ with a JWK set of fresh keys: ``issuer`` signs the access
    tokens the set accepts; ``agent`` is the client's DPoP key."""

    directory: Path
    issuer: SigningKey
    agent: SigningKey

    def bound_token(self) -> str:
        """An access token bound (cnf.jkt) to the agent's key, valid for five minutes."""
        return token(self.issuer, time.time(), cnf={"jkt": self.agent.thumbprint()})

    def bearer_token(self, **claims: object) -> str:
        return token(self.issuer, time.time(), **claims)

    def dpop(self, access_token: str) -> dict[str, str]:
        """The headers of a DPoP request: the token and a fresh proof for POST /mcp."""
        fresh = proof(self.agent, access_token, time.time(), url=f"{ORIGIN}/mcp")
        return {"authorization": f"DPoP {access_token}", "dpop": fresh}


@pytest.fixture(scope="module")
def identity_policies(tmp_path_factory: pytest.TempPathFactory) -> IdentityPolicies:
    directory = tmp_path_factory.mktemp("identity-policies")
    for document in (HERE / "identity_policies").glob("*.yaml"):
        shutil.copy(document, directory)
    issuer = ec_key("issuer-1")
    (directory / "jwks.json").write_text(json.dumps({"keys": [issuer.jwk()]}))
    return IdentityPolicies(directory, issuer, ec_key("agent"))


def state_environment(state_dir: Path, **extra: str) -> Mapping[str, str]:
    """The environment of a test server: its default state store in ``state_dir``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return {**clean_environment(), "AUTHZ_STATE_DIR": str(state_dir), **extra}
