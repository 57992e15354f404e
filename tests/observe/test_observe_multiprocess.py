"""Two real worker processes record decisions; a third renders the sum, as ``--workers 2`` does.

prometheus-client picks multiprocess mode when it is first imported, so every process here is
fresh and gets ``PROMETHEUS_MULTIPROC_DIR`` before it starts, like the supervisor's workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PER_WORKER = 40

WORKER = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(HERE)!r})
    from observe_events import denied, event, tool_call
    from authz_server.decision import allow
    from authz_server.identity.model import Identity, Method
    from authz_server.mcp.message import FailureReason
    from authz_server.observe.metrics import Metrics

    metrics = Metrics(tool_limit=5)
    caller = Identity(authenticated=True, method=Method.DPOP, issuer="https://idp.example")
    metrics.policy_loaded(True, None, int(sys.argv[1]), 0.01)
    for index in range({PER_WORKER}):
        decision = allow(policy="p") if index % 4 else denied()
        identity = caller if index % 4 else None
        metrics.observe(
            event(decision, tool_call("create_issue"), seconds=0.0003, identity=identity)
        )
    metrics.observe(event(denied(), failure=FailureReason.INVALID_JSON))
    metrics.policies_evaluated([(("p",), ("allow",))])
    metrics.flush()
    metrics.audit_dropped("queue_full", 3)
    metrics.jwks.fetched("https://idp.example", True)
    metrics.jwks.key_count("https://idp.example", int(sys.argv[2]))
""")

RENDER = "from authz_server.observe.metrics import render_metrics; print(render_metrics().decode())"


def run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_two_workers_add_up(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(count), str(keys)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for count, keys in ((3, 2), (3, 5))
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    assert len(list(tmp_path.glob("counter_*.db"))) == 2

    got = samples(run(RENDER, env))

    def at(name: str, **labels: str) -> float:
        return got.get((name, frozenset(labels.items())), 0.0)

    denies = 2 * (PER_WORKER // 4)
    assert (
        at("authz_decisions_total", outcome="allow", decided_by="policy") == 2 * PER_WORKER - denies
    )
    assert at("authz_decisions_total", outcome="deny", decided_by="policy") == denies + 2
    assert at("authz_decision_duration_seconds_count") == 2 * PER_WORKER + 2
    assert at("authz_decision_duration_seconds_bucket", le="0.0005") == 2 * PER_WORKER + 2
    assert (
        at("authz_mcp_messages_total", method="tools/call", tool="create_issue", outcome="allow")
        == 2 * PER_WORKER - denies
    )
    assert at("authz_decode_failures_total", reason="invalid_json") == 2
    assert at("authz_policy_evaluations_total", policy="p", result="allow") == 2
    assert at("authz_audit_lines_dropped_total", reason="queue_full") == 6
    assert at("authz_policy_loads_total", result="success") == 2
    # Gauges are not summed: each has the aggregation its meaning needs.
    assert at("authz_policies_loaded") == 3
    assert at("authz_policy_last_load_ok") == 1
    assert at("authz_policy_last_load_success_timestamp_seconds") > 1_600_000_000
    verified = {"issuer": "https://idp.example", "method": "dpop", "outcome": "verified"}
    assert at("authz_identity_verifications_total", **verified) == 2 * PER_WORKER - denies
    assert at("authz_jwks_fetches_total", issuer="https://idp.example", result="ok") == 2
    # The fewest keys any worker holds, not their sum.
    assert at("authz_jwks_keys", issuer="https://idp.example") == 2
    build = [value for (name, _), value in got.items() if name == "authz_build_info"]
    assert build == [1.0]
