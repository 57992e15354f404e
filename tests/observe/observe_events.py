"""Builders of DecisionEvents and readers of registries, shared by the observe tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from authz_server.decision import DecidedBy, Decision, DryRunResult, allow, deny
from authz_server.identity.model import Identity
from authz_server.mcp.message import Decoded, DecodeFailure, FailureReason, Kind, McpMessage
from authz_server.observe.event import DecisionEvent
from authz_server.request import Peer, Request

STARTED = 1_780_000_000.25


def tool_call(name: str, arguments: Mapping[str, Any] | None = None, id: int = 1) -> McpMessage:
    return McpMessage(
        kind=Kind.REQUEST,
        id=id,
        method="tools/call",
        tool_name=name,
        arguments=dict(arguments or {}),
    )


def message(method: str, **fields: Any) -> McpMessage:
    kind = fields.pop("kind", Kind.REQUEST)
    return McpMessage(kind=kind, id=fields.pop("id", 1), method=method, **fields)


def event(
    decision: Decision | None = None,
    *messages: McpMessage,
    batch: bool = False,
    failure: FailureReason | None = None,
    detail: str = "",
    headers: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    seconds: float = 0.0001,
    decision_id: str = "d-1",
    body: bytes = b"{}",
    source: Peer | None = None,
    identity: Identity | None = None,
    request: Request | None = None,
) -> DecisionEvent:
    decoded = Decoded(
        messages=tuple(messages),
        batch=batch,
        failure=DecodeFailure(failure, detail) if failure is not None else None,
    )
    request = request or Request(
        method="POST",
        path="/mcp",
        query="",
        host="mcp.example",
        headers=dict(headers or {"content-type": "application/json"}),
        body=body,
        source=source or Peer(address="10.0.0.7", port=50000),
        metadata=dict(metadata or {}),
        request_id="req-1",
    )
    return DecisionEvent(
        decision_id=decision_id,
        started=STARTED,
        seconds=seconds,
        request=request,
        decoded=decoded,
        decision=decision or allow(policy="p", validation_index=0),
        identity=identity,
    )


def denied(policy: str = "p", **kwargs: Any) -> Decision:
    return deny(403, reason=kwargs.pop("reason", "no"), policy=policy, **kwargs)


def errored() -> Decision:
    return deny(500, reason="internal error", decided_by=DecidedBy.ERROR)


def dry(policy: str, allowed: bool) -> DryRunResult:
    return DryRunResult(
        policy=policy,
        allowed=allowed,
        http_status=0 if allowed else 403,
        reason="" if allowed else "would deny",
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series that does not exist (yet)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [
        dict(sample.labels)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    ]
