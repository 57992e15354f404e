"""The kill switch in the decision path: after identity, before the policies, from the mirror."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import DecidedBy
from authz_server.envoy.adapter import request_from_check
from authz_server.oversight.revocations import Revocations
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.state import open_store
from tests.identity.helpers import AUDIENCE, ISSUER, ec_key, token
from tests.policy.conftest import ALLOW, policy_yaml


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PolicyAuthorizer, Revocations, Any]]:
    key = ec_key()
    (tmp_path / "allow.yaml").write_text(policy_yaml("allow-all", [ALLOW]))
    authentication = {
        "apiVersion": "authz-server/v1alpha1",
        "kind": "Authentication",
        "metadata": {"name": "agents"},
        "spec": {
            "issuers": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks": {"inline": {"keys": [key.jwk()]}},
                }
            ]
        },
    }
    (tmp_path / "authentication.yaml").write_text(json.dumps(authentication))
    url = f"sqlite:///{tmp_path}/state.db"
    authorizer = PolicyAuthorizer(PolicyStore(tmp_path), state=open_store(url))
    authorizer.start()
    operator = open_store(url)  # another process's view of the same file
    try:
        yield authorizer, Revocations(operator), key
    finally:
        authorizer.stop()
        operator.close()


def _call(authorizer: PolicyAuthorizer, key: Any, tool: str = "get_issue", sub: str = "agent-7"):
    headers = {"authorization": f"Bearer {token(key, time.time(), sub=sub)}"}
    check = check_request_from_shorthand({"tool": tool, "arguments": {}, "headers": headers})
    return authorizer.check(request_from_check(check))


def _within(seconds: float, condition: Any) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "not applied in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_revoked_subject_is_refused_within_2_s_and_served_again_when_lifted(served):
    authorizer, revocations, key = served
    assert _call(authorizer, key).allowed
    revocation = revocations.add(subject="agent-7", issuer=ISSUER, reason="leaked its token")
    _within(2.0, lambda: not _call(authorizer, key).allowed)
    refused = _call(authorizer, key)
    assert (refused.http_status, refused.decided_by) == (403, DecidedBy.REVOKED)
    assert json.loads(refused.body)["error"]["message"] == "access revoked: leaked its token"
    assert _call(authorizer, key, sub="agent-8").allowed  # another agent is not touched
    revocations.remove(revocation.id)
    _within(2.0, lambda: _call(authorizer, key).allowed)


def test_a_revocation_of_some_tools_refuses_only_those(served):
    authorizer, revocations, key = served
    revocations.add(subject="agent-7", tools=("merge_pull_request",), reason="merge spree")
    _within(2.0, lambda: not _call(authorizer, key, "merge_pull_request").allowed)
    assert _call(authorizer, key, "get_issue").allowed


def test_revoking_everyone_refuses_anonymous_callers_too(served):
    authorizer, revocations, _ = served
    revocations.add(everyone=True, reason="incident 42")
    anonymous = request_from_check(check_request_from_shorthand({"tool": "get_issue"}))
    _within(2.0, lambda: not authorizer.check(anonymous).allowed)
    assert authorizer.check(anonymous).decided_by is DecidedBy.REVOKED
