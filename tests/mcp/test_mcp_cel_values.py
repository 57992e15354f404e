"""Values must reach CEL intact, or the body is refused: proved through the engine, with policies.

cel-expr-python ends a string at U+0000 (so ``"pwd\\u0000; rm -rf /"`` reads as ``pwd`` and the
keys ``a`` and ``a\\u0000`` collide), and it cannot hold an integer outside int64/uint64 (every
policy that reads the message then errors). The decoder refuses the first and turns the second
into doubles, as Kyverno's Go decoder does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import Decision
from authz_server.mcp import FailureReason
from authz_server.policy.engine import Default
from authz_server.policy.testing import check_request_from_shorthand
from tests.policy.conftest import ALLOW, Policies, policy_yaml, run

DENY = "envoy.Denied(403).Response()"


def call(engine: Any, arguments: dict[str, Any] | None = None, body: str | None = None) -> Decision:
    shorthand: dict[str, Any] = {"tool": "run", "arguments": arguments or {}}
    if body is not None:
        shorthand = {"body": body}
    return run(engine, message=check_request_from_shorthand(shorthand))


def refused(decision: Decision, reason: FailureReason) -> bool:
    return not decision.allowed and reason.value in decision.reason


@pytest.fixture
def policies(tmp_path: Path) -> Policies:
    return Policies(tmp_path / "policies")


def test_a_nul_cannot_shorten_what_the_policy_reads(policies: Policies) -> None:
    policies.write(
        "p.yaml",
        policy_yaml(
            "only-pwd",
            [f'mcp.ToolCall.Arguments.command == "pwd" ? {ALLOW} : {DENY}'],
        ),
    )
    engine = policies.engine()
    assert call(engine, {"command": "pwd"}).allowed
    decision = call(engine, {"command": "pwd\u0000; rm -rf /"})
    assert refused(decision, FailureReason.NUL_CHARACTER), decision.reason


def test_keys_that_differ_by_a_nul_do_not_collide(policies: Policies) -> None:
    # Under failurePolicy: Ignore with a default allow, a map CEL cannot build skipped the guard.
    policies.write(
        "p.yaml",
        policy_yaml(
            "no-force",
            [f"has(mcp.ToolCall.Arguments.force) ? {DENY} : {ALLOW}"],
            failure="Ignore",
        ),
    )
    engine = policies.engine(default_decision=Default.ALLOW)
    assert not call(engine, {"force": True}).allowed
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run",'
    body += '"arguments":{"force":true,"force\\u0000":1}}}'
    decision = call(engine, body=body)
    assert refused(decision, FailureReason.NUL_CHARACTER), decision.reason


WEI_100_ETH = 100 * 10**18


@pytest.mark.parametrize(
    ("amount", "allowed"),
    [
        (10**18, True),
        (WEI_100_ETH, True),
        (WEI_100_ETH + 1, True),  # the nearest double is 1e20: 1 wei in 10**20 is lost
        (2 * WEI_100_ETH, False),
        (2**63, True),  # uint range: exact
        (2**64 - 1, True),
        (2**64, True),
        (10**30, False),
        (-(10**30), True),
    ],
)
def test_amounts_beyond_int64_reach_the_policy(
    policies: Policies, amount: int, allowed: bool
) -> None:
    policies.write(
        "p.yaml",
        policy_yaml(
            "at-most-100-eth",
            [f"mcp.ToolCall.Arguments.wei <= 100000000000000000000.0 ? {ALLOW} : {DENY}"],
        ),
    )
    decision = call(policies.engine(), {"wei": amount})
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert decision.policy == "at-most-100-eth"


@pytest.mark.parametrize("amount", [WEI_100_ETH, 2**63, 2**64 - 1, -(2**63) - 1, 10**300])
def test_policies_that_do_not_read_the_number_keep_working(policies: Policies, amount: int) -> None:
    policies.write(
        "p.yaml",
        policy_yaml("run-only", [f'mcp.ToolCall.Name == "run" ? {ALLOW} : {DENY}']),
    )
    decision = call(policies.engine(), {"wei": amount, "to": "0xabc"})
    assert decision.allowed, decision.reason


def test_the_policy_reads_the_double_kyverno_would(policies: Policies) -> None:
    policies.write(
        "p.yaml",
        policy_yaml(
            "echo",
            [
                "envoy.Allowed().WithHeader("
                '"x-type", type(mcp.ToolCall.Arguments.wei) == double ? "double" : '
                'type(mcp.ToolCall.Arguments.wei) == uint ? "uint" : "other")'
                '.WithHeader("x-wei", string(mcp.ToolCall.Arguments.wei)).Response()'
            ],
        ),
    )
    engine = policies.engine()
    seen = {h.key: h.value for h in call(engine, {"wei": WEI_100_ETH}).headers}
    assert seen["x-type"] == "double"
    assert float(seen["x-wei"]) == float(WEI_100_ETH)
    seen = {h.key: h.value for h in call(engine, {"wei": 2**64 - 1}).headers}
    assert (seen["x-type"], seen["x-wei"]) == ("uint", str(2**64 - 1))


def test_integers_beyond_doubles_are_refused(policies: Policies) -> None:
    policies.write("p.yaml", policy_yaml("allow", [ALLOW]))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}})
    body = body.replace("{}", '{"name":"run","arguments":{"wei":1' + "0" * 400 + "}}")
    decision = call(policies.engine(), body=body)
    assert refused(decision, FailureReason.INVALID_JSON), decision.reason
