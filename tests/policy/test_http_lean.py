"""HTTP-mode policies are judged on a fast path of their own: the same answers as the reference
path, no Python memory kept per check, and the reference path only for a policy that fails.

As loaded, a call such as ``mcp.GetStringArgument(...)`` passes the whole ``mcp`` map into Python
and cel-expr-python 0.1.3 keeps it: an attacker's arguments, kept on every check. The combined
programs (authz_server/policy/combined.py) and, for a failing policy, the lean programs
(authz_server/policy/lean.py) make those calls from Python instead.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest

from authz_server.decision import Decision
from authz_server.httpauthz import HttpRequest, request_from_http
from authz_server.mcp import decode
from authz_server.policy import load_text
from authz_server.policy.engine import Engine
from authz_server.policy.model import PolicySet
from tests.leaks import kept_bytes, steady_growth
from tests.policy.conftest import policy_yaml

ALLOW = "http.Allowed().Response()"
CHECKS = 2_000
# Per check, each request carries an argument this long, new each time.
ARGUMENT = 2_000
# A leak of one small object per check is far above this (the argument: a thousand times).
BOUND = 50_000

POLICIES = "\n---\n".join(
    [
        policy_yaml(
            "owners",
            [
                'variables.owner == "evil" || mcp.GetStringArgument("repo", "").size() > 5000'
                ' ? http.Denied("owner " + variables.owner + " is refused").Response()'
                f" : {ALLOW}"
            ],
            conditions=["mcp.Method == mcp.ToolsCallMethod"],
            variables={"owner": 'mcp.GetStringArgument("owner", "")'},
            mode="HTTP",
        ),
        policy_yaml(
            "agents",
            [
                '"ci" in object.attributes.Header("x-agent") && mcp.ToolCall.Name == "deploy"'
                ' ? http.Denied("agents do not deploy").Response() : null'
            ],
            mode="HTTP",
        ),
        # Fails at run time when "count" is not a number: failurePolicy Fail makes it a denial.
        policy_yaml(
            "counts",
            ['mcp.GetIntArgument("count", 0) > 10 ? http.Denied("too many").Response() : null'],
            failure="Fail",
            mode="HTTP",
        ),
        # Reported, never enforced: a dry-run record on the decision.
        policy_yaml(
            "watch",
            ['mcp.ToolCall.Name == "read" ? http.Denied("watched").Response() : null'],
            actions=["Audit"],
            mode="HTTP",
        ),
    ]
)


def judge(engine: Engine, arguments: dict[str, object], tool: str = "read", agent: str = "x"):
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
    ).encode()
    headers = (
        ("Host", "mcp.example"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("X-Agent", agent),
    )
    request = request_from_http(HttpRequest("POST", "/mcp", "1.1", headers, body))
    return engine.check(request, decode(request.body, request.headers, method=request.method))


def engines(policies: PolicySet) -> tuple[Engine, Engine]:
    """The engine as served (fast path) and the reference path as loaded."""
    return (
        Engine(policies.http_set, mode="HTTP"),
        Engine(policies.http_set, mode="HTTP", fast_path=False),
    )


def _answer(decision: Decision) -> tuple[object, ...]:
    return (
        decision.allowed,
        decision.http_status,
        decision.policy,
        decision.reason,
        decision.body,
        decision.decided_by,
        decision.dry_run,
    )


CASES = [
    pytest.param({"owner": "acme"}, "read", "x", id="allowed"),
    pytest.param({"owner": "evil"}, "read", "x", id="denied-naming-a-variable"),
    pytest.param({"owner": 7}, "read", "x", id="variable-fails"),
    pytest.param({"owner": "acme", "count": "many"}, "read", "x", id="policy-fails"),
    pytest.param({"owner": "acme", "count": 11}, "read", "x", id="denied-by-a-count"),
    pytest.param({"owner": "acme"}, "deploy", "ci", id="header-and-tool"),
    pytest.param({"owner": "acme"}, "deploy", "other", id="header-not-matching"),
]


@pytest.mark.parametrize(("arguments", "tool", "agent"), CASES)
def test_http_mode_answers_as_the_reference_path(arguments, tool, agent):
    served, reference = engines(load_text(POLICIES))
    expected = _answer(judge(reference, arguments, tool, agent))
    assert _answer(judge(served, arguments, tool, agent)) == expected


def test_the_cases_reach_every_kind_of_answer():
    # The comparison above means something only if the cases differ in what they answer.
    _, reference = engines(load_text(POLICIES))
    answers = {case.id: judge(reference, *case.values) for case in CASES if case.id is not None}
    assert answers["allowed"].allowed
    assert answers["denied-naming-a-variable"].reason == "owner evil is refused"
    assert "variable 'owner'" in answers["variable-fails"].reason
    assert answers["policy-fails"].policy == "counts" and not answers["policy-fails"].allowed
    assert answers["header-and-tool"].reason == "agents do not deploy"
    assert answers["header-not-matching"].allowed
    assert [r.policy for r in answers["allowed"].dry_run] == ["watch"]


def _distinct_checks(engine: Engine, fail: bool = False) -> Callable[[], object]:
    """Checks whose arguments are new long strings each time: each allowed, or (``fail``)
    refused by the policy that fails on them."""
    counter = itertools.count()

    def run() -> object:
        owner = f"o{next(counter):08d}-" + "o" * ARGUMENT
        arguments = {"owner": owner, "repo": "r" * 100}
        if fail:
            arguments["count"] = owner
        decision = judge(engine, arguments)
        assert decision.allowed is not fail and decision.policy == (
            "counts" if fail else "owners"
        ), decision
        return decision

    return run


@pytest.mark.parametrize("fail", [False, True], ids=["allowed", "failing-policy"])
def test_http_mode_checks_retain_no_memory(fail):
    served, _ = engines(load_text(POLICIES))
    leaks = steady_growth(_distinct_checks(served, fail), CHECKS, every=2)
    assert kept_bytes(leaks) < BOUND, leaks


def test_the_measure_sees_the_http_mode_leak_of_the_reference_path():
    # Control: the expressions as loaded hand the whole ``mcp`` map to each getter.
    _, reference = engines(load_text(POLICIES))
    leaks = steady_growth(_distinct_checks(reference), CHECKS, every=2)
    assert kept_bytes(leaks) > BOUND


def test_only_a_failing_policy_takes_the_reference_path(monkeypatch):
    from authz_server.policy import engine as engine_module

    judged: list[str] = []
    original = engine_module.evaluate_policy

    def counting(policy, *args, **kwargs):
        judged.append(policy.name)
        return original(policy, *args, **kwargs)

    monkeypatch.setattr(engine_module, "evaluate_policy", counting)
    served, _ = engines(load_text(POLICIES))
    assert judge(served, {"owner": "acme"}).allowed
    assert judged == []
    assert not judge(served, {"owner": "acme", "count": "many"}).allowed
    assert judged == ["counts"]
