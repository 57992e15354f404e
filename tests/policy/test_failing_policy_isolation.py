"""A policy that fails at run time is judged alone: the rest of its bucket keeps the fast path.

When a bucket's combined program fails, each policy's own program answers and only the failing
one takes the reference path; the policies that failed are remembered, so that the next request
that makes them fail evaluates the bucket once without them. Whatever the order of requests, the
decisions are the reference path's.
"""

from __future__ import annotations

import json

import pytest

from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.policy import Engine, load_text
from authz_server.policy import engine as engine_module
from authz_server.policy.engine import EngineOptions
from tests.benchmarks import workload
from tests.policy.conftest import ALLOW, DENY, policy_yaml

TOOL_CALL = ['mcp.Method == "tools/call"']
POLICIES = "\n---\n".join(
    [
        policy_yaml(
            "a-allow", [f"mcp.ToolCall.Name == {json.dumps(workload.TOOL)} ? {ALLOW} : null"]
        ),
        # Fails when the request lacks x-tenant (a missing map key), unless x-skip is sent.
        policy_yaml(
            "b-tenant",
            [f'object.attributes.request.http.headers["x-tenant"] == "acme" ? null : {DENY}'],
            conditions=[*TOOL_CALL, '!("x-skip" in object.attributes.request.http.headers)'],
        ),
        policy_yaml(
            "c-ignored",
            [f'object.attributes.request.http.headers["x-other"] == "y" ? {DENY} : null'],
            conditions=['"x-probe" in object.attributes.request.http.headers'],
            failure="Ignore",
        ),
        policy_yaml("d-deny-shell", [f'mcp.ToolCall.Name == "shell" ? {DENY} : null'], TOOL_CALL),
        policy_yaml("e-audit", [DENY], TOOL_CALL, actions=["Audit"]),
    ]
)

# (headers, tool): b-tenant fails without x-tenant; c-ignored fails (Ignore) with x-probe.
REQUESTS = [
    ({"x-tenant": "acme"}, workload.TOOL),
    ({}, workload.TOOL),
    ({}, workload.TOOL),
    ({"x-tenant": "acme"}, workload.TOOL),
    ({}, "shell"),
    ({"x-skip": "1"}, workload.TOOL),
    ({"x-probe": "1", "x-tenant": "acme"}, workload.TOOL),
    ({"x-probe": "1"}, workload.TOOL),
    ({"x-probe": "1", "x-other": "y"}, workload.TOOL),
    ({}, workload.TOOL),
    ({"x-tenant": "acme"}, "shell"),
]


def _request(headers: dict[str, str], tool: str):
    check = workload.check_request()
    http = check.attributes.request.http
    http.headers.update(headers)
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    ).encode()
    http.raw_body = body
    http.headers["content-length"] = str(len(body))
    request = request_from_check(check)
    return request, decode(request.body, request.headers)


def _key(decision):
    return (decision.allowed, decision.http_status, decision.policy, decision.reason,
            decision.decided_by, decision.body, decision.dry_run)  # fmt: skip


@pytest.mark.parametrize("combine", ["deny-overrides", "first-match"])
def test_decisions_match_the_reference_path_in_any_order(combine):
    # The policies each path reports as asked (the metrics) must match too: a policy whose
    # answer the combination never asks is left out of the bucket's second evaluation.
    policies, options = load_text(POLICIES), EngineOptions(combine=combine)
    fast_seen: list[object] = []
    reference_seen: list[object] = []
    fast = Engine(policies, options, on_evaluated=fast_seen.extend)
    reference = Engine(policies, options, fast_path=False, on_evaluated=reference_seen.extend)
    # The same failure several times running (then the failing policy is not probed alone).
    repeated = [({}, workload.TOOL)] * 4 + [({"x-tenant": "acme"}, workload.TOOL)]
    repeated += [({}, "shell")] * 3 + [({"x-probe": "1"}, workload.TOOL)] * 3 + REQUESTS[:1]
    for order in (REQUESTS, REQUESTS[::-1], REQUESTS[1::2] + REQUESTS[::2], repeated):
        for headers, tool in order:
            request, decoded = _request(headers, tool)
            got, want = fast.check(request, decoded), reference.check(request, decoded)
            assert _key(got) == _key(want), (headers, tool)
            assert fast_seen == reference_seen, (headers, tool)
            fast_seen.clear()
            reference_seen.clear()


def test_only_the_failing_policy_takes_the_reference_path(monkeypatch):
    judged = []
    original = engine_module.evaluate_policy
    monkeypatch.setattr(
        engine_module,
        "evaluate_policy",
        lambda policy, *args: judged.append(policy.name) or original(policy, *args),
    )
    engine = Engine(load_text(POLICIES))
    for _ in range(3):
        decision = engine.check(*_request({}, workload.TOOL))
        assert decision.policy == "b-tenant" and not decision.allowed
    assert judged == ["b-tenant"] * 3
    judged.clear()
    # After failures on consecutive requests b-tenant is no longer probed alone: the first
    # request that does not make it fail is judged with it on the reference path, the next
    # ones by the bucket's program.
    for _ in range(2):
        assert engine.check(*_request({"x-tenant": "acme"}, workload.TOOL)).allowed
    assert judged == ["b-tenant"]
    judged.clear()
    assert engine.check(*_request({}, workload.TOOL)).policy == "b-tenant"
    assert engine.check(*_request({"x-tenant": "acme"}, workload.TOOL)).allowed
    assert judged == ["b-tenant"]  # one failure: probed alone, and the next request is not
