"""The HTTP authorizer's requests take Check's stages: the identity stage (a required credential
refused 401 with its challenge, a verified one seen by HTTP-mode policies as ``identity``) and the
kill switch (a revoked agent refused before the policies), with a real SQLite state store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import DecidedBy, Decision
from authz_server.httpauthz import HttpRequest, reply_from_decision, request_from_http
from authz_server.oversight.revocations import Revocations
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.state import open_store
from tests.identity.helpers import AUDIENCE, ISSUER, ec_key, token
from tests.policy.conftest import policy_yaml

WHO = policy_yaml(
    "who",
    [
        'identity.Subject == "agent-7" ? http.Allowed().Response()'
        ' : http.Denied("only agent-7 may call").Response()'
    ],
    mode="HTTP",
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PolicyAuthorizer, Revocations, Any]]:
    key = ec_key()
    (tmp_path / "who.yaml").write_text(WHO)
    authentication = {
        "apiVersion": "authz-server/v1alpha1",
        "kind": "Authentication",
        "metadata": {"name": "agents"},
        "spec": {
            "required": True,
            "issuers": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks": {"inline": {"keys": [key.jwk()]}},
                }
            ],
        },
    }
    (tmp_path / "authentication.yaml").write_text(json.dumps(authentication))
    url = f"sqlite:///{tmp_path}/state.db"
    authorizer = PolicyAuthorizer(PolicyStore(tmp_path), state=open_store(url))
    authorizer.start()
    operator = open_store(url)
    try:
        yield authorizer, Revocations(operator), key
    finally:
        authorizer.stop()
        operator.close()


def _call(authorizer: PolicyAuthorizer, credential: str = "") -> Decision:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_issue"}}
    ).encode()
    headers = [("Host", "mcp.example.com"), ("Content-Type", "application/json")]
    if credential:
        headers.append(("Authorization", f"Bearer {credential}"))
    request = request_from_http(HttpRequest("POST", "/mcp", "1.1", tuple(headers), body))
    return authorizer.check(request)


def test_a_missing_credential_under_required_is_401_with_the_challenge(served) -> None:
    authorizer, _, _ = served
    decision = _call(authorizer)
    assert (decision.decided_by, decision.http_status) == (DecidedBy.IDENTITY, 401)
    reply = reply_from_decision(decision)
    assert reply.status == 401
    assert dict(reply.headers)["www-authenticate"].startswith("Bearer")
    assert json.loads(reply.body)["error"]["code"] == -31401


def test_http_mode_policies_see_the_verified_identity(served) -> None:
    authorizer, _, key = served
    assert _call(authorizer, token(key, time.time(), sub="agent-7")).allowed
    other = _call(authorizer, token(key, time.time(), sub="agent-8"))
    assert json.loads(other.body)["error"]["message"] == "only agent-7 may call"


def test_a_revoked_agent_is_refused_before_the_policies(served) -> None:
    authorizer, revocations, key = served
    revocations.add(subject="agent-7", issuer=ISSUER, reason="leaked its token")
    started = time.monotonic()
    while _call(authorizer, token(key, time.time(), sub="agent-7")).allowed:
        assert time.monotonic() - started < 3, "the revocation was not applied"
        time.sleep(0.05)
    refused = _call(authorizer, token(key, time.time(), sub="agent-7"))
    assert (refused.decided_by, refused.http_status) == (DecidedBy.REVOKED, 403)
    assert reply_from_decision(refused).status == 403
