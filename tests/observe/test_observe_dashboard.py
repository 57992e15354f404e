"""The example Grafana dashboard queries only metrics the server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from authz_server.observe.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/authz-server-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return {
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    }


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    found += [
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


def test_every_query_uses_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    used: set[str] = set()
    for expr in queries(dashboard):
        names = set(re.findall(r"\bauthz_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    for required in (
        "authz_decisions_total",
        "authz_decision_duration_seconds_bucket",
        "authz_decode_failures_total",
        "authz_mcp_messages_total",
        "authz_policy_last_load_success_timestamp_seconds",
        "authz_audit_lines_dropped_total",
        "authz_policy_evaluations_total",
    ):
        assert required in used


def test_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
