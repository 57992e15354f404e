"""``approval.Require(reason)`` in the engine: how it combines with allows and denials."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.policy import Engine, load_text
from authz_server.policy.engine import Combine, EngineOptions, PolicyResult
from authz_server.policy.testing import check_request_from_shorthand
from tests.policy.conftest import ALLOW, DENY, policy_yaml

REQUIRE = 'approval.Require("merging needs a maintainer: " + mcp.ToolCall.Name)'
ON_MERGE = 'mcp.ToolCall.Name == "merge_pull_request"'


def _decide(
    documents: list[str], combine: Combine = Combine.DENY_OVERRIDES, *, fast: bool = True
) -> tuple[Any, list[Any]]:
    policies = load_text("\n---\n".join(documents))
    seen: list[Any] = []
    engine = Engine(
        policies, EngineOptions(combine=combine), fast_path=fast, on_evaluated=seen.extend
    )
    request = request_from_check(
        check_request_from_shorthand({"tool": "merge_pull_request", "arguments": {"n": 1}})
    )
    return engine.check(request, decode(request.body, request.headers)), seen


@pytest.mark.parametrize("fast", [True, False])
def test_the_answer_asks_for_approval_with_the_policys_reason(fast: bool) -> None:
    decision, seen = _decide(
        [policy_yaml("a-approve", [f"{ON_MERGE} ? {REQUIRE} : null"])], fast=fast
    )
    assert not decision.allowed
    assert decision.approval == "merging needs a maintainer: merge_pull_request"
    assert decision.policy == "a-approve"
    body = json.loads(decision.body)
    assert body["error"]["message"] == f"approval required: {decision.approval}"
    assert seen == [(("a-approve",), (PolicyResult.APPROVAL,))]


@pytest.mark.parametrize("fast", [True, False])
def test_under_deny_overrides_a_later_denial_wins_and_an_allow_loses(fast: bool) -> None:
    approve = policy_yaml("a-approve", [REQUIRE])
    denied, _ = _decide([approve, policy_yaml("b-deny", [DENY])], fast=fast)
    assert denied.policy == "b-deny" and not denied.approval
    asked, _ = _decide(
        [policy_yaml("a-allow", [ALLOW]), approve.replace("a-approve", "b-approve")], fast=fast
    )
    assert asked.approval and asked.policy == "b-approve"


@pytest.mark.parametrize("fast", [True, False])
def test_under_first_match_it_answers_only_when_first(fast: bool) -> None:
    approve = policy_yaml("b-approve", [REQUIRE])
    first, _ = _decide([policy_yaml("a-allow", [ALLOW]), approve], Combine.FIRST_MATCH, fast=fast)
    assert first.allowed
    asked, _ = _decide([approve, policy_yaml("c-allow", [ALLOW])], Combine.FIRST_MATCH, fast=fast)
    assert asked.approval and asked.policy == "b-approve"
