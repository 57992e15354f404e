"""One decision as an audit record: what was asked, by whom, and what was answered.

The record is built from an allow-list of fields. Headers are never copied wholesale: the few that
help an investigation are picked by name, and the session id is hashed (it is not meant as an
authenticator, but a stolen one can hijack a session). Every string that came from the request
or from a policy passes through :class:`~authz_server.observe.redact.Redactor`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from authz_server.decision import Decision
from authz_server.mcp.message import Decoded, McpMessage
from authz_server.observe.event import DecisionEvent
from authz_server.observe.labels import outcome
from authz_server.observe.redact import Redactor
from authz_server.request import Request

JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
# Claims that identify the caller; every other claim stays out of the log.
_IDENTITY_CLAIMS = (
    ("sub", "subject"),
    ("iss", "issuer"),
    ("azp", "client_id"),
    ("client_id", "client_id"),
)


def audit_record(event: DecisionEvent, redact: Redactor) -> dict[str, Any]:
    """The audit line for ``event`` as a JSON-ready dict; top-level keys are always present."""
    decision = event.decision
    return {
        "time": _rfc3339(event.started),
        "decision_id": event.decision_id,
        "outcome": outcome(decision),
        "decided_by": str(decision.decided_by),
        "policy": redact.text(decision.policy) or None,
        "validation_index": decision.validation_index,
        "reason": redact.text(decision.reason) or None,
        "http_status": decision.http_status,
        "duration_seconds": round(event.seconds, 6),
        "dry_run": _dry_run(decision, redact),
        "request": _request(event.request, redact),
        "source": _source(event.request, redact),
        "identity": _identity(event.request.metadata, redact),
        "mcp": _mcp(event.decoded, redact),
        "decode_failure": _failure(event.decoded, redact),
    }


def fallback_record(event: DecisionEvent, error: Exception) -> dict[str, Any]:
    """What is still written when the full record cannot be built: one line per decision holds."""
    return {
        "time": _rfc3339(event.started),
        "decision_id": event.decision_id,
        "outcome": outcome(event.decision),
        "decided_by": str(event.decision.decided_by),
        "audit_error": type(error).__name__,
    }


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _dry_run(decision: Decision, redact: Redactor) -> list[dict[str, Any]]:
    return [
        {
            "policy": redact.text(result.policy),
            "outcome": "allow" if result.allowed else "deny",
            "http_status": result.http_status,
            "reason": redact.text(result.reason) or None,
        }
        for result in decision.dry_run
    ]


def _request(request: Request, redact: Redactor) -> dict[str, Any]:
    session = request.headers.get("mcp-session-id", "")
    return {
        "method": redact.text(request.method),
        "host": redact.text(request.host),
        # Without the query string, where tokens travel (?access_token=...).
        "path": redact.text(request.path),
        "request_id": redact.text(request.request_id) or None,
        "user_agent": redact.text(request.headers.get("user-agent", "")) or None,
        "protocol_version": redact.text(request.headers.get("mcp-protocol-version", "")) or None,
        "session": _digest(session) if session else None,
    }


def _digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]


def _source(request: Request, redact: Redactor) -> dict[str, Any]:
    return {
        "address": redact.text(request.source.address) or None,
        "principal": redact.text(request.source.principal) or None,
    }


def _identity(metadata: Mapping[str, Any], redact: Redactor) -> dict[str, Any]:
    """Identifying claims of the first verified JWT Envoy's jwt_authn filter stored, if any."""
    namespace = metadata.get(JWT_NAMESPACE)
    if not isinstance(namespace, Mapping):
        return {}
    for key in sorted(namespace):
        claims = namespace[key]
        if isinstance(claims, Mapping) and ("sub" in claims or "iss" in claims):
            identity: dict[str, Any] = {}
            for claim, field in _IDENTITY_CLAIMS:
                value = claims.get(claim)
                if isinstance(value, str) and field not in identity:
                    identity[field] = redact.text(value)
            return identity
    return {}


def _mcp(decoded: Decoded, redact: Redactor) -> dict[str, Any] | None:
    if not decoded.messages:
        return None
    return {
        "batch": decoded.batch,
        "messages": [_message(message, redact) for message in decoded.messages],
    }


def _message(message: McpMessage, redact: Redactor) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": str(message.kind),
        "id": redact.value(message.id),
        "method": redact.text(message.method) or None,
    }
    if message.tool_name:
        entry["tool"] = redact.text(message.tool_name)
    if message.prompt_name:
        entry["prompt"] = redact.text(message.prompt_name)
    if message.uri:
        entry["uri"] = redact.text(message.uri)
    if message.arguments is not None:
        entry["arguments"] = redact.value(message.arguments)
    return entry


def _failure(decoded: Decoded, redact: Redactor) -> dict[str, Any] | None:
    if decoded.failure is None:
        return None
    return {
        "reason": str(decoded.failure.reason),
        "detail": redact.text(decoded.failure.detail) or None,
    }
