"""What the served oversight tests share: a policy directory whose Authentication document trusts
fresh keys (so callers have a verified subject a revocation can name), tokens signed with them,
gRPC checks on a connection of their own, and the oversight CLI as a separate process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from authz_server.envoy.adapter import CheckRequest, CheckResponse
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.policy.testing import check_request_from_shorthand
from tests.identity.helpers import AUDIENCE, ISSUER, SigningKey, ec_key, token
from tests.serving import ROOT, clean_environment

# Credentials optional (anonymous callers reach the policies), verified when presented.
AUTHENTICATION = f"""\
apiVersion: authz-server/v1alpha1
kind: Authentication
metadata:
  name: agents
spec:
  required: false
  issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    jwks: {{file: jwks.json}}
"""

ALLOW_ALL = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: allow-all
spec:
  evaluation:
    mode: Envoy
  validations:
  - expression: envoy.Allowed().Response()
"""


@dataclass(frozen=True)
class Agents:
    """A policy directory trusting ``issuer``'s key."""

    directory: Path
    issuer: SigningKey

    def token(self, subject: str) -> str:
        """An access token for ``subject``, valid for five minutes."""
        return token(self.issuer, time.time(), sub=subject)


def agent_policies(directory: Path, *documents: str) -> Agents:
    """Write the Authentication document, a JWK set of a fresh key and ``documents`` (policies;
    by default one that allows everything) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = ec_key("served-issuer")
    (directory / "jwks.json").write_text(json.dumps({"keys": [issuer.jwk()]}))
    (directory / "authentication.yaml").write_text(AUTHENTICATION)
    for index, document in enumerate(documents or (ALLOW_ALL,)):
        (directory / f"policy-{index}.yaml").write_text(document)
    return Agents(directory, issuer)


def tool_call(tool: str, bearer: str = "") -> CheckRequest:
    """A ``tools/call`` as Envoy asks about it, with the token when one is given."""
    headers = {":authority": "mcp.example.com"}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    return check_request_from_shorthand(
        {"host": "mcp.example.com", "headers": headers, "tool": tool, "arguments": {}}
    )


def check(target: str, request: CheckRequest) -> CheckResponse:
    """One check on a connection of its own (a local subchannel pool), so that with several
    workers behind one port the kernel picks a worker for each."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)


def revoked_reason(reply: CheckResponse) -> str | None:
    """The reason of a kill-switch denial (403, JSON-RPC error "access revoked: ..."), else
    None."""
    if reply.status.code == 0 or reply.denied_response.status.code != 403:
        return None
    error = json.loads(reply.denied_response.body)["error"]
    message = str(error["message"])
    if not message.startswith("access revoked: "):
        return None
    return message.removeprefix("access revoked: ")


def cli(*args: str, state: str, env: Mapping[str, str] | None = None) -> str:
    """Run ``python -m authz_server ARGS --state URL`` to its end; its standard output. The
    command must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "authz_server", *args, "--state", state],
        cwd=ROOT,
        env=dict(env) if env is not None else clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    return done.stdout
