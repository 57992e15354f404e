"""The metrics observer against real prometheus-client registries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from observe_events import denied, dry, errored, event, message, series, tool_call, value
from prometheus_client import CollectorRegistry, generate_latest

from authz_server.decision import DecidedBy, allow, deny
from authz_server.envoy import request_from_check
from authz_server.mcp.message import FailureReason, Kind
from authz_server.observe.metrics import DURATION_BUCKETS, Metrics
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def decisions(registry: CollectorRegistry, outcome: str, decided_by: str) -> float:
    return value(registry, "authz_decisions_total", outcome=outcome, decided_by=decided_by)


def test_decisions_counted_exactly_by_outcome_and_decider(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    plan = [
        (allow(policy="p"), 5, ("allow", "policy")),
        (denied(), 3, ("deny", "policy")),
        (deny(403, decided_by=DecidedBy.DEFAULT), 2, ("deny", "default")),
        (allow(decided_by=DecidedBy.DEFAULT), 4, ("allow", "default")),
        (deny(400, decided_by=DecidedBy.DECODE), 6, ("deny", "decode")),
        (errored(), 7, ("error", "error")),
        (deny(503, decided_by=DecidedBy.NO_POLICIES), 1, ("deny", "no_policies")),
    ]
    for decision, times, _ in plan:
        for _ in range(times):
            metrics.observe(event(decision))
    expected = {labels: times for _, times, labels in plan}
    for outcome in ("allow", "deny", "error"):
        for decided_by in DecidedBy:
            want = expected.get((outcome, str(decided_by)), 0)
            assert decisions(registry, outcome, decided_by) == want, (outcome, decided_by)


def test_every_decision_series_exists_before_the_first_decision(
    registry: CollectorRegistry,
) -> None:
    Metrics(registry)
    labels = series(registry, "authz_decisions_total")
    assert len(labels) == 3 * len(DecidedBy)
    assert {"outcome": "error", "decided_by": "error"} in labels


def test_an_allowed_decision_from_an_error_still_counts_as_error(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe(event(allow(decided_by=DecidedBy.ERROR)))
    assert decisions(registry, "error", "error") == 1
    assert decisions(registry, "allow", "error") == 0


def test_latency_histogram_buckets_sum_and_count(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    for seconds in (0.00001, 0.00003, 0.0004, 0.2):
        metrics.observe(event(seconds=seconds))
    name = "authz_decision_duration_seconds"
    assert value(registry, f"{name}_count") == 4
    assert value(registry, f"{name}_sum") == pytest.approx(0.20044)
    assert value(registry, f"{name}_bucket", le="2.5e-05") == 1
    assert value(registry, f"{name}_bucket", le="5e-05") == 2
    assert value(registry, f"{name}_bucket", le="0.0005") == 3
    assert value(registry, f"{name}_bucket", le="0.1") == 3
    assert value(registry, f"{name}_bucket", le="+Inf") == 4
    assert DURATION_BUCKETS[0] == 0.000025 and DURATION_BUCKETS[-1] == 0.1


def test_mcp_messages_by_method_tool_and_outcome(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe(event(allow(), tool_call("create_issue")))
    metrics.observe(event(allow(), tool_call("create_issue")))
    metrics.observe(event(denied(), tool_call("merge_pull_request")))
    metrics.observe(event(allow(), message("tools/list")))
    metrics.observe(event(allow(), message("resources/read", uri="file:///etc/passwd")))
    name = "authz_mcp_messages_total"
    assert value(registry, name, method="tools/call", tool="create_issue", outcome="allow") == 2
    assert (
        value(registry, name, method="tools/call", tool="merge_pull_request", outcome="deny") == 1
    )
    assert value(registry, name, method="tools/list", tool="", outcome="allow") == 1
    assert value(registry, name, method="resources/read", tool="", outcome="allow") == 1
    assert b"file:///etc/passwd" not in generate_latest(registry)


def test_batch_counts_every_element(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe(
        event(
            denied(), tool_call("a", id=1), tool_call("b", id=2), message("ping", id=3), batch=True
        )
    )
    name = "authz_mcp_messages_total"
    assert value(registry, name, method="tools/call", tool="a", outcome="deny") == 1
    assert value(registry, name, method="tools/call", tool="b", outcome="deny") == 1
    assert value(registry, name, method="ping", tool="", outcome="deny") == 1
    assert decisions(registry, "deny", "policy") == 1


def test_unknown_methods_and_responses_fold(metrics: Metrics, registry: CollectorRegistry) -> None:
    for index in range(50):
        metrics.observe(event(allow(), message(f"custom/method-{index}")))
    metrics.observe(event(allow(), message("", kind=Kind.RESULT)))
    name = "authz_mcp_messages_total"
    assert value(registry, name, method="other", tool="", outcome="allow") == 50
    assert value(registry, name, method="response", tool="", outcome="allow") == 1
    assert {labels["method"] for labels in series(registry, name)} == {"other", "response"}


def test_tool_names_beyond_the_limit_fold_into_other(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry, tool_limit=3, known_tools=["merge_pull_request"])
    for index in range(10):
        metrics.observe(event(allow(), tool_call(f"tool_{index}")))
    metrics.observe(event(allow(), tool_call("tool_0")))
    metrics.observe(event(denied(), tool_call("merge_pull_request")))
    name = "authz_mcp_messages_total"
    tools = {labels["tool"] for labels in series(registry, name)}
    assert tools == {"tool_0", "tool_1", "tool_2", "other", "merge_pull_request"}
    assert value(registry, name, method="tools/call", tool="other", outcome="allow") == 7
    assert value(registry, name, method="tools/call", tool="tool_0", outcome="allow") == 2


def test_tool_names_that_are_not_names_never_become_labels(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    odd = ["has space", "x" * 200, "ghp_" + "A" * 36, 'quote"brace}', "", "other"]
    for name in odd:
        metrics.observe(event(allow(), tool_call(name)))
    assert value(
        registry, "authz_mcp_messages_total", method="tools/call", tool="other", outcome="allow"
    ) == len(odd)
    text = generate_latest(registry).decode()
    assert "ghp_" not in text and "has space" not in text


def test_decode_failures_by_reason(metrics: Metrics, registry: CollectorRegistry) -> None:
    decision = deny(400, decided_by=DecidedBy.DECODE)
    for _ in range(3):
        metrics.observe(event(decision, failure=FailureReason.DUPLICATE_KEY))
    metrics.observe(event(decision, failure=FailureReason.TRUNCATED, detail="secret body"))
    name = "authz_decode_failures_total"
    assert value(registry, name, reason="duplicate_key") == 3
    assert value(registry, name, reason="truncated") == 1
    assert value(registry, name, reason="invalid_json") == 0
    assert len(series(registry, name)) >= len(FailureReason)
    assert decisions(registry, "deny", "decode") == 4


def test_dry_run_results_by_policy_and_outcome(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    decision = allow(policy="enforced", dry_run=(dry("audit-a", False), dry("audit-b", True)))
    metrics.observe(event(decision))
    metrics.observe(event(decision))
    metrics.observe(event(allow(dry_run=(dry("audit-a", True),))))
    name = "authz_dry_run_decisions_total"
    assert value(registry, name, policy="audit-a", outcome="deny") == 2
    assert value(registry, name, policy="audit-a", outcome="allow") == 1
    assert value(registry, name, policy="audit-b", outcome="allow") == 2
    assert decisions(registry, "allow", "policy") == 3


EVALUATED_POLICIES = {
    # Audit: asked about every message, even after another policy decided.
    "a-audit-rm": (["Audit"], 'mcp.ToolCall.Name == "rm" ? DENY : null', None),
    "b-deny-rm": (None, 'mcp.ToolCall.Name == "rm" ? DENY : null', None),
    "c-allow": (None, "ALLOW", None),
    "d-never": (None, "ALLOW", 'mcp.ToolCall.Name == "never"'),
    # Errors on "boom" only; Ignore, so the request is still decided by c-allow.
    "e-boom": (
        None,
        '{"x": 1}[mcp.ToolCall.Name] == 1 ? DENY : null',
        'mcp.ToolCall.Name == "boom"',
    ),
    # Not in the tools/call bucket: never asked about a tool call.
    "f-list": (None, "ALLOW", 'mcp.Method == "tools/list"'),
}


def _evaluation_policies(root: Path) -> None:
    allow_, deny_ = "envoy.Allowed().Response()", 'envoy.Denied(403).WithBody("no").Response()'
    for name, (actions, validation, condition) in EVALUATED_POLICIES.items():
        lines = [
            "apiVersion: policies.kyverno.io/v1",
            "kind: ValidatingPolicy",
            f"metadata: {{name: {name}}}",
            "spec:",
            "  evaluation: {mode: Envoy}",
            "  failurePolicy: Ignore",
        ]
        if actions:
            lines.append(f"  validationActions: {json.dumps(actions)}")
        if condition:
            lines += ["  matchConditions:", f"  - {{name: c, expression: {json.dumps(condition)}}}"]
        expression = validation.replace("DENY", deny_).replace("ALLOW", allow_)
        lines += ["  validations:", f"  - expression: {json.dumps(expression)}"]
        (root / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def test_policy_evaluations_are_counted_by_the_decision_path(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    """Checks go through the real pipeline (decoder, engine, metrics); the counter moves by
    itself (the flushing thread), per policy asked and with what it did."""
    _evaluation_policies(tmp_path)
    store = PolicyStore(tmp_path)
    assert store.reload(), store.status.last_error
    metrics = Metrics(registry)
    authorizer = PolicyAuthorizer(store, observers=(metrics,), metrics=metrics)
    plan = {"rm": 2, "search": 3, "boom": 1}
    for tool, times in plan.items():
        for _ in range(times):
            check = check_request_from_shorthand({"tool": tool, "arguments": {"path": "/"}})
            authorizer.check(request_from_check(check))
    expected = {
        ("a-audit-rm", "deny"): 2,
        ("b-deny-rm", "deny"): 2,
        ("c-allow", "skipped"): 2,
        ("d-never", "skipped"): 2,
        ("e-boom", "skipped"): 2,
        ("a-audit-rm", "no_match"): 4,
        ("b-deny-rm", "no_match"): 4,
        ("c-allow", "allow"): 4,
        ("d-never", "no_match"): 4,
        ("e-boom", "no_match"): 3,
        ("e-boom", "error"): 1,
    }
    name = "authz_policy_evaluations_total"

    def counted() -> dict[tuple[str, str], float]:
        return {
            (labels["policy"], labels["result"]): value(registry, name, **labels)
            for labels in series(registry, name)
        }

    deadline = time.monotonic() + 10
    while counted() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == expected
    assert value(registry, "authz_decisions_total", outcome="deny", decided_by="policy") == 2
    assert (
        value(registry, "authz_dry_run_decisions_total", policy="a-audit-rm", outcome="deny") == 2
    )
    metrics.close()


def test_evaluations_of_a_stopping_server_are_flushed(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    _evaluation_policies(tmp_path)
    store = PolicyStore(tmp_path)
    assert store.reload()
    metrics = Metrics(registry)
    authorizer = PolicyAuthorizer(store, observers=(metrics,), metrics=metrics)
    authorizer.check(request_from_check(check_request_from_shorthand({"tool": "search"})))
    authorizer.stop()
    name = "authz_policy_evaluations_total"
    assert value(registry, name, policy="c-allow", result="allow") == 1
    metrics.close()


def test_unknown_results_count_as_errors(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.policies_evaluated([(("p", "q"), ("surprise", "allow")), (("p",), ("error",))])
    metrics.flush()
    name = "authz_policy_evaluations_total"
    assert value(registry, name, policy="p", result="error") == 2
    assert value(registry, name, policy="q", result="allow") == 1
    assert {labels["result"] for labels in series(registry, name)} == {"error", "allow"}


def test_policy_loads(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert value(registry, "authz_policy_last_load_success_timestamp_seconds") == 0
    metrics.policy_loaded(True, None, 4, 0.02)
    first = value(registry, "authz_policy_last_load_success_timestamp_seconds")
    assert first > 1_600_000_000
    assert value(registry, "authz_policies_loaded") == 4
    assert value(registry, "authz_policy_last_load_ok") == 1
    metrics.policy_loaded(False, "bad.yaml: CEL error at 3:14", 0, 0.01)
    assert value(registry, "authz_policy_loads_total", result="success") == 1
    assert value(registry, "authz_policy_loads_total", result="failure") == 1
    assert value(registry, "authz_policies_loaded") == 4  # the last good set keeps serving
    assert value(registry, "authz_policy_last_load_ok") == 0
    assert value(registry, "authz_policy_last_load_success_timestamp_seconds") == first
    assert value(registry, "authz_policy_load_duration_seconds_count") == 2
    assert b"bad.yaml" not in generate_latest(registry)


def test_audit_drops(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.audit_dropped("queue_full")
    metrics.audit_dropped("queue_full", 4)
    metrics.audit_dropped("write_error", 2)
    name = "authz_audit_lines_dropped_total"
    assert value(registry, name, reason="queue_full") == 5
    assert value(registry, name, reason="write_error") == 2


def test_observe_never_raises(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe(None)  # type: ignore[arg-type]
    metrics.observe(event(seconds="slow"))  # type: ignore[arg-type]
    metrics.observe(event())
    assert decisions(registry, "allow", "policy") == 2


def test_one_instance_per_registry_until_closed(registry: CollectorRegistry) -> None:
    first = Metrics(registry)
    with pytest.raises(ValueError):
        Metrics(registry)
    first.close()
    second = Metrics(registry)
    second.observe(event())
    assert decisions(registry, "allow", "policy") == 1


def test_names_follow_prometheus_conventions(registry: CollectorRegistry) -> None:
    Metrics(registry)
    for family in registry.collect():
        assert family.name.startswith("authz_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
