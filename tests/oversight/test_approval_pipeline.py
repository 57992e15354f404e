"""The approval gate in the decision path: a call a policy marks with approval.Require is
recorded and answered with the page's URL; a granted approval lets exactly one call through, on
any replica sharing the store; a rejected one is refused with the approver's reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import DecidedBy
from authz_server.envoy.adapter import request_from_check
from authz_server.oversight.approvals import Approvals
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.state import open_store
from tests.policy.conftest import ALLOW, policy_yaml
from tests.state.redis_server import start_redis

GUARD = policy_yaml(
    "merge-needs-a-person",
    [
        'mcp.ToolCall.Name == "merge_pull_request" ? '
        'approval.Require("merging needs a maintainer") : ' + ALLOW
    ],
)
URL = "https://authz-admin.example.com"


def _authorizer(directory: Path, url: str) -> PolicyAuthorizer:
    authorizer = PolicyAuthorizer(
        PolicyStore(directory), state=open_store(url), approval_url=URL, approval_ttl=60
    )
    authorizer.start()
    return authorizer


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    (tmp_path / "guard.yaml").write_text(GUARD)
    return tmp_path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def served(policies: Path, sqlite_url: str) -> Iterator[PolicyAuthorizer]:
    authorizer = _authorizer(policies, sqlite_url)
    yield authorizer
    authorizer.stop()


def _call(authorizer: PolicyAuthorizer, pull: int = 7, version: str = "2025-11-25") -> Any:
    check = check_request_from_shorthand(
        {
            "tool": "merge_pull_request",
            "arguments": {"owner": "acme", "repo": "api", "pullNumber": pull, "token": "s3cr3t"},
            "headers": {"mcp-protocol-version": version},
        }
    )
    return authorizer.check(request_from_check(check))


def test_a_2025_11_25_client_gets_a_url_elicitation_and_the_call_is_recorded(served, sqlite_url):
    decision = _call(served)
    assert (decision.allowed, decision.http_status) == (False, 200)
    assert decision.decided_by is DecidedBy.APPROVAL
    error = json.loads(decision.body)["error"]
    assert error["code"] == -32042
    [elicitation] = error["data"]["elicitations"]
    assert elicitation["mode"] == "url"
    assert elicitation["url"] == f"{URL}/?approval={elicitation['elicitationId']}"
    with open_store(sqlite_url) as store:
        [pending] = Approvals(store).list()
    assert pending.id == elicitation["elicitationId"]
    assert (pending.target, pending.reason) == ("merge_pull_request", "merging needs a maintainer")
    assert pending.arguments["pullNumber"] == 7
    assert pending.arguments["token"] != "s3cr3t"  # masked like the audit line
    assert _call(served).body == decision.body  # a retry shares the same pending approval


def test_older_clients_get_an_application_error_carrying_the_url(served):
    decision = _call(served, version="2025-06-18")
    assert decision.http_status == 403
    error = json.loads(decision.body)["error"]
    assert error["code"] == -31428
    assert f"{URL}/?approval=" in error["message"]


def test_a_granted_approval_lets_exactly_one_call_through(served, sqlite_url):
    elicitation = json.loads(_call(served).body)["error"]["data"]["elicitations"][0]
    assert not _call(served, pull=8).allowed  # another call is another approval
    with open_store(sqlite_url) as store:
        Approvals(store).approve(elicitation["elicitationId"], "alice")
    passed = _call(served)
    assert passed.allowed and passed.decided_by is DecidedBy.APPROVAL
    assert "approved by alice" in passed.reason
    again = _call(served)
    assert not again.allowed and json.loads(again.body)["error"]["code"] == -32042


def test_a_rejected_approval_is_refused_with_the_approvers_reason(served, sqlite_url):
    elicitation = json.loads(_call(served).body)["error"]["data"]["elicitations"][0]
    with open_store(sqlite_url) as store:
        Approvals(store).reject(elicitation["elicitationId"], "bob", "not on a Friday")
    refused = _call(served)
    assert refused.http_status == 403
    assert json.loads(refused.body)["error"]["message"] == (
        "approval rejected by bob: not on a Friday"
    )


def test_twenty_simultaneous_retries_on_two_replicas_pass_exactly_once(policies: Path) -> None:
    redis = start_redis()
    try:
        replicas = [_authorizer(policies, redis.url()) for _ in range(2)]
        elicitation = json.loads(_call(replicas[0]).body)["error"]["data"]["elicitations"][0]
        with open_store(redis.url()) as store:
            Approvals(store).approve(elicitation["elicitationId"], "alice")
        start = threading.Barrier(20)
        answers: list[bool] = []

        def retry(replica: PolicyAuthorizer) -> None:
            start.wait()
            answers.append(_call(replica).allowed)

        threads = [threading.Thread(target=retry, args=(replicas[i % 2],)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers) == [False] * 19 + [True]
        for replica in replicas:
            replica.stop()
    finally:
        redis.stop()


def test_an_unreachable_store_answers_503(policies: Path) -> None:
    redis = start_redis()
    authorizer = _authorizer(policies, redis.url(timeout=0.2))
    try:
        redis.stop()
        time.sleep(0.3)
        decision = _call(authorizer)
        assert decision.http_status == 503 and not decision.allowed
    finally:
        authorizer.stop()
