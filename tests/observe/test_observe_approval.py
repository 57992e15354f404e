"""Audit lines and metrics of the oversight stages, through the real decision path: a policy
answering approval.Require, a SQLite state store, the real AuditLog and Metrics. The line of an
approval answer names the approval (id, what became of the call, who decided it and when); a
revoked call's line names the operator's reason."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from observe_events import event, tool_call, value
from prometheus_client import CollectorRegistry

from authz_server.decision import DecidedBy, allow
from authz_server.envoy.adapter import request_from_check
from authz_server.observe.audit import AuditLog
from authz_server.observe.metrics import Metrics
from authz_server.observe.record import audit_view
from authz_server.observe.redact import Clipper, Limits
from authz_server.oversight.approvals import Approvals
from authz_server.oversight.revocations import Revocations
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.state import Store, open_store
from tests.policy.conftest import policy_yaml

REASON = "merging needs a maintainer"
# Asks for approval of merges, allows everything else; its allow of get_issue carries metadata
# shaped like an approval block, which must not pass for one.
POLICY = policy_yaml(
    "merge-needs-a-person",
    [
        f'mcp.ToolCall.Name == "merge_pull_request" ? approval.Require("{REASON}") : null',
        'mcp.ToolCall.Name == "get_issue" ? envoy.Allowed().Response().WithMetadata({"approval": '
        '{"id": "forged", "outcome": "used", "decided_by": "mallory"}}) : null',
        "envoy.Allowed().Response()",
    ],
)


class Served:
    """One authorizer writing audit lines to a file, and a second handle on its store (the CLI's
    view: approve, reject, revoke)."""

    def __init__(self, root: Path) -> None:
        (root / "policies").mkdir()
        (root / "policies" / "policy.yaml").write_text(POLICY)
        url = f"sqlite:///{root}/state.db"
        self.path = root / "audit.jsonl"
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        audit = AuditLog(str(self.path), flush_interval=0.01)
        self.authorizer = PolicyAuthorizer(
            PolicyStore(root / "policies"),
            observers=(self.metrics, audit),
            audit=audit,
            metrics=self.metrics,
            state=open_store(url),
            approval_url="https://authz-admin.example.com",
        )
        self.authorizer.start()
        self.store: Store = open_store(url)

    def call(self, tool: str = "merge_pull_request", pull: int = 7) -> str:
        """Make a call; its decision id."""
        check = check_request_from_shorthand(
            {
                "tool": tool,
                "arguments": {"owner": "acme", "pullNumber": pull, "github_token": "s3cr3t-abc"},
                "headers": {"mcp-protocol-version": "2025-11-25"},
            }
        )
        decision = self.authorizer.check(request_from_check(check))
        return str(decision.dynamic_metadata["decision_id"])

    def line(self, decision_id: str) -> dict[str, Any]:
        """The audit line of a decision, once the writer has written it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.path.exists():
                for text in self.path.read_text().splitlines():
                    line = json.loads(text)
                    if line["decision_id"] == decision_id:
                        return line
            time.sleep(0.02)
        raise AssertionError(f"no audit line for {decision_id}")

    def close(self) -> None:
        self.authorizer.stop()
        self.store.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path)
    yield server
    server.close()


def _time(text: str) -> float:
    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00").timestamp()


def test_the_pending_line_names_the_approval_waiting_for_a_person(served: Served) -> None:
    line = served.line(served.call())
    [pending] = Approvals(served.store).list()
    assert (line["outcome"], line["decided_by"], line["http_status"]) == ("deny", "approval", 200)
    assert line["policy"] == "merge-needs-a-person"
    assert line["reason"] == f"approval pending: {REASON}"
    assert line["approval"] == {
        "id": pending.id,
        "outcome": "pending",
        "decided_by": None,
        "decided": None,
    }
    # The arguments are masked in the line as everywhere else.
    assert line["mcp"]["messages"][0]["arguments"]["github_token"] == "[REDACTED]"
    assert "s3cr3t" not in served.path.read_text()


def test_the_used_line_names_who_approved_and_when(served: Served) -> None:
    served.call()
    [pending] = Approvals(served.store).list()
    approved = Approvals(served.store).approve(pending.id, "alice")
    line = served.line(served.call())
    assert (line["outcome"], line["decided_by"], line["http_status"]) == ("allow", "approval", 0)
    assert line["reason"] == f"approved by alice (approval {pending.id}), used once"
    block = line["approval"]
    assert (block["id"], block["outcome"], block["decided_by"]) == (pending.id, "used", "alice")
    assert approved.decided is not None
    assert _time(block["decided"]) == pytest.approx(approved.decided, abs=1e-6)
    # The next identical call asks again: a new pending line.
    again = served.line(served.call())
    assert again["outcome"] == "deny" and again["approval"]["outcome"] == "pending"


def test_the_rejected_line_names_who_refused_and_why(served: Served) -> None:
    served.call(pull=8)
    [pending] = Approvals(served.store).list()
    Approvals(served.store).reject(pending.id, "bob", "not on a Friday")
    line = served.line(served.call(pull=8))
    assert (line["outcome"], line["decided_by"], line["http_status"]) == ("deny", "approval", 403)
    assert line["reason"] == "approval rejected by bob: not on a Friday"
    block = line["approval"]
    assert (block["id"], block["outcome"], block["decided_by"]) == (pending.id, "rejected", "bob")
    assert _time(block["decided"]) <= time.time()


def test_an_approvers_name_is_masked_like_every_other_string(served: Served) -> None:
    served.call()
    [pending] = Approvals(served.store).list()
    Approvals(served.store).approve(pending.id, "alice Bearer abcdefghijklmnopqrstuvwxyz0123")
    line = served.line(served.call())
    assert line["approval"]["decided_by"] == "alice Bearer [REDACTED]"
    assert "abcdefghijklmnopqrstuvwxyz0123" not in served.path.read_text()


def test_only_the_approval_gate_names_an_approval(served: Served) -> None:
    # A policy's own metadata cannot make a line claim that someone approved the call.
    line = served.line(served.call("get_issue"))
    assert (line["outcome"], line["decided_by"]) == ("allow", "policy")
    assert line["approval"] is None
    assert served.line(served.call("list_issues"))["approval"] is None


def test_a_revoked_call_is_audited_with_the_operators_reason(served: Served) -> None:
    Revocations(served.store).add(everyone=True, tools=("drop_table",), reason="incident 42")
    deadline = time.monotonic() + 5
    while True:  # the mirror refreshes every 0.5 s
        line = served.line(served.call("drop_table"))
        if line["decided_by"] == "revoked" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (line["outcome"], line["decided_by"], line["http_status"]) == ("deny", "revoked", 403)
    assert line["reason"] == "revoked: incident 42"
    assert line["approval"] is None


def test_approval_answers_are_counted_by_outcome(served: Served) -> None:
    served.call()  # pending
    served.call()  # the same approval, still pending
    [pending] = Approvals(served.store).list()
    Approvals(served.store).approve(pending.id, "alice")
    served.call()  # used
    served.call(pull=8)  # another call: pending
    other = [a for a in Approvals(served.store).list() if a.id != pending.id]
    Approvals(served.store).reject(other[0].id, "bob")
    served.call(pull=8)  # rejected
    served.call("get_issue")  # a policy's allow: not an approval

    def approvals(outcome: str) -> float:
        return value(served.registry, "authz_approvals_total", outcome=outcome)

    assert [approvals(o) for o in ("pending", "used", "rejected", "unavailable")] == [3, 1, 1, 0]
    decisions = "authz_decisions_total"
    assert value(served.registry, decisions, outcome="deny", decided_by="approval") == 4
    assert value(served.registry, decisions, outcome="allow", decided_by="approval") == 1
    assert value(served.registry, decisions, outcome="allow", decided_by="policy") == 1


def test_an_approval_block_is_cut_and_counted_against_the_queue_bound(tmp_path: Path) -> None:
    # An approver's name is the approver's free text: the queued view holds it cut to the line's
    # limits, and its estimated size (what max_pending_bytes bounds) grows with it.
    def approval_event(name: str) -> Any:
        metadata = {"approval": {"id": "a" * 24, "outcome": "used", "decided_by": name}}
        return event(
            allow(decided_by=DecidedBy.APPROVAL, dynamic_metadata=metadata),
            tool_call("merge_pull_request"),
        )

    clip = Clipper(Limits(max_value_length=16))
    short = audit_view(approval_event("al"), clip)
    long = audit_view(approval_event("x" * 9000), clip)
    assert long.approval is not None and long.approval.decided_by == clip.cut("x" * 9000)
    assert long.size - short.size >= clip.keep
    assert long.size - short.size < 9000
    [line] = write_lines([approval_event("x" * 9000)], tmp_path / "audit.jsonl", 16)
    assert line["approval"]["decided_by"] == "x" * 16 + "...[9000 chars]"
    assert line["approval"]["decided"] is None  # absent: never a made-up time


def write_lines(events: list[Any], path: Path, length: int) -> list[dict[str, Any]]:
    audit = AuditLog(str(path), max_value_length=length)
    audit.start()
    for item in events:
        audit.observe(item)
    assert audit.close()
    return [json.loads(text) for text in path.read_text().splitlines()]
