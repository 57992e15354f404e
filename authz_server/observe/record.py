"""One decision as an audit record: what was asked, by whom, and what was answered.

The record is built from an allow-list of fields. Headers are never copied wholesale: the few that
help an investigation are picked by name, and the session id is hashed (it is not meant as an
authenticator, but a stolen one can hijack a session). The caller is the identity the identity
stage verified, named by a few fields (never its claims); without that stage, the identifying
claims a gateway put in the metadata. An answer of the approval gate names its approval: the
record a person decides, what became of this call (pending, used, rejected), who decided and
when, so that "who let this merge through" has an answer in the log. Every string that came from
the request, from a policy or from an approver passes through
:class:`~authz_server.observe.redact.Redactor`.

In two steps, on two threads: :func:`audit_view` takes from the decision only what the line will
show, cut to the line's limits (:class:`~authz_server.observe.redact.Clipper`), so that the audit
queue holds that and not the request; :func:`audit_record` masks it into the record on the
writer thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from authz_server.decision import DecidedBy
from authz_server.identity.model import Identity
from authz_server.observe.event import DecisionEvent
from authz_server.observe.labels import outcome
from authz_server.observe.redact import STR_SIZE, Clipper, Redactor, Text, text_size

JWT_NAMESPACE = "envoy.filters.http.jwt_authn"
# Claims that identify the caller; every other claim stays out of the log.
_IDENTITY_CLAIMS = (
    ("sub", "subject"),
    ("iss", "issuer"),
    ("azp", "client_id"),
    ("client_id", "client_id"),
)
# The verified identity's fields an audit line shows, besides ``authenticated``: never the
# claims (the token's whole payload), the audiences and scopes (lists a policy reads, not who
# called), nor ``detail`` (fixed text today, but text).
_VERIFIED_FIELDS = (
    "method",
    "issuer",
    "subject",
    "client_id",
    "actor",
    "spiffe_id",
    "certificate_thumbprint",
    "key_thumbprint",
    "error",
)


class MessageView(NamedTuple):
    kind: str
    id: Any
    method: Text
    tool: Text
    prompt: Text
    uri: Text
    arguments: Any


class DryRunView(NamedTuple):
    policy: Text
    allowed: bool
    http_status: int
    reason: Text


class ApprovalView(NamedTuple):
    """The approval an answer of the approval gate names (``decision.dynamic_metadata
    ["approval"]``): its id, what became of this call (``pending``, ``used``, ``rejected``), who
    decided (an approver's free text) and when (Unix seconds, None while pending)."""

    id: Text
    outcome: Text
    decided_by: Text
    decided: float | None


class AuditView(NamedTuple):
    """What one audit line will show, cut but not yet masked; ``size`` estimates its memory in
    bytes. ``error`` names the exception that left only the fallback fields.

    A named tuple rather than a frozen dataclass: it is made on the decision path, for every
    check, and a tuple is the cheapest immutable value to build.
    """

    decision_id: str
    started: float
    outcome: str
    decided_by: str
    seconds: float = 0.0
    policy: Text = ""
    validation_index: int | None = None
    reason: Text = ""
    http_status: int = 0
    dry_run: tuple[DryRunView, ...] = ()
    # method, host, path, request id, user agent, protocol version, source address, principal
    request: tuple[Text, ...] = ("",) * 8
    # The session id's digest ("" when there is none).
    session: str = ""
    # (field, value) pairs: strings, and booleans (authenticated, unavailable) for a verified
    # identity.
    identity: tuple[tuple[str, Text | bool], ...] = ()
    batch: bool = False
    messages: tuple[MessageView, ...] = ()
    failure: tuple[str, Text] | None = None
    size: int = 0
    error: str = ""
    approval: ApprovalView | None = None
    # Request.transport: "grpc" or "http" (the HTTP authorizer).
    transport: str = "grpc"


# The view's own objects, its numbers and its fixed strings: the estimate's constant part.
_VIEW_SIZE = 1024
_MESSAGE_SIZE = 256
# One (field, value) pair of the identity: the tuple and its slot.
_PAIR_SIZE = 72


def audit_view(event: DecisionEvent, clip: Clipper) -> AuditView:
    """The parts of ``event`` its audit line shows, cut to the line's limits.

    On the decision path: the common case (short strings, one message with small arguments) is
    a few length tests and one walk of the arguments.
    """
    decision = event.decision
    request = event.request
    headers = request.headers
    source = request.source
    texts: tuple[str, ...] = (
        request.method,
        request.host,
        # Without the query string, where tokens travel (?access_token=...).
        request.path,
        request.request_id,
        headers.get("user-agent", ""),
        headers.get("mcp-protocol-version", ""),
        source.address,
        source.principal,
        decision.policy,
        decision.reason,
    )
    texts, used = _clip_texts(texts, clip)
    size = _VIEW_SIZE + used
    session = headers.get("mcp-session-id", "")
    if session:
        session = _digest(session)
        size += STR_SIZE + len(session)
    dry_run: tuple[DryRunView, ...] = ()
    if decision.dry_run:
        dry_run = tuple(
            DryRunView(clip.text(r.policy), r.allowed, r.http_status, clip.text(r.reason))
            for r in decision.dry_run
        )
        size += sum(text_size(d.policy) + text_size(d.reason) + _MESSAGE_SIZE for d in dry_run)
    messages: tuple[MessageView, ...] = ()
    if event.decoded.messages:
        views = []
        for message in event.decoded.messages:
            ident = message.id
            if type(ident) is not int:
                ident, used = clip.value(ident)
                size += used
            names, used = _clip_texts(
                (message.method, message.tool_name, message.prompt_name, message.uri), clip
            )
            size += used + _MESSAGE_SIZE
            arguments = None
            if message.arguments is not None:
                arguments, used = clip.value(message.arguments)
                size += used
            views.append(MessageView(str(message.kind), ident, *names, arguments))
        messages = tuple(views)
    identity: tuple[tuple[str, Text | bool], ...]
    if event.identity is not None:
        identity, used = _verified(event.identity, clip)
        size += used
    else:
        claims = _identity(request.metadata)
        identity = tuple((field, clip.text(claim)) for field, claim in claims)
        size += sum(text_size(claim) + _MESSAGE_SIZE for _, claim in claims)
    failure = event.decoded.failure
    failed: tuple[str, Text] | None = None
    if failure is not None:
        failed = (str(failure.reason), clip.text(failure.detail))
        size += text_size(failed[1])
    approval: ApprovalView | None = None
    if decision.decided_by is DecidedBy.APPROVAL:
        approval, used = _approval(decision.dynamic_metadata, clip)
        size += used
    return AuditView(
        event.decision_id,
        event.started,
        outcome(decision),
        str(decision.decided_by),
        event.seconds,
        texts[8],
        decision.validation_index,
        texts[9],
        decision.http_status,
        dry_run,
        texts[:8],
        session,
        identity,
        event.decoded.batch,
        messages,
        failed,
        size,
        approval=approval,
        transport=request.transport,
    )


def _clip_texts(texts: tuple[str, ...], clip: Clipper) -> tuple[tuple[Text, ...], int]:
    """``texts`` clipped, and their estimated memory; one test for the common case."""
    joined = "".join(texts)
    if len(joined) <= clip.keep and joined.isascii():
        return texts, STR_SIZE * len(texts) + len(joined)
    clipped = tuple(map(clip.text, texts))
    return clipped, sum(map(text_size, clipped))


def fallback_view(event: DecisionEvent, error: Exception) -> AuditView:
    """What is still written when the view cannot be taken: one line per decision holds."""
    return AuditView(
        decision_id=str(event.decision_id),
        started=float(event.started),
        outcome=outcome(event.decision),
        decided_by=str(event.decision.decided_by),
        size=_VIEW_SIZE,
        error=type(error).__name__,
    )


def audit_record(view: AuditView, redact: Redactor) -> dict[str, Any]:
    """The audit line for ``view`` as a JSON-ready dict; top-level keys are always present."""
    if view.error:
        return _fallback(view, view.error)
    text = redact.text
    method, host, path, request_id, user_agent, protocol_version, address, principal = view.request
    session = view.session
    return {
        "time": _rfc3339(view.started),
        "decision_id": view.decision_id,
        "outcome": view.outcome,
        "decided_by": view.decided_by,
        "transport": view.transport,
        "policy": text(view.policy) or None,
        "validation_index": view.validation_index,
        "reason": text(view.reason) or None,
        "http_status": view.http_status,
        "duration_seconds": round(view.seconds, 6),
        "dry_run": [
            {
                "policy": text(result.policy),
                "outcome": "allow" if result.allowed else "deny",
                "http_status": result.http_status,
                "reason": text(result.reason) or None,
            }
            for result in view.dry_run
        ],
        "request": {
            "method": text(method),
            "host": text(host),
            "path": text(path),
            "request_id": text(request_id) or None,
            "user_agent": text(user_agent) or None,
            "protocol_version": text(protocol_version) or None,
            "session": session or None,
        },
        "source": {"address": text(address) or None, "principal": text(principal) or None},
        "identity": {
            field: claim if type(claim) is bool else text(claim) for field, claim in view.identity
        },
        "mcp": _mcp(view, redact),
        "decode_failure": (
            None
            if view.failure is None
            else {"reason": view.failure[0], "detail": text(view.failure[1]) or None}
        ),
        "approval": _approval_record(view.approval, redact),
    }


def fallback_record(view: AuditView, error: Exception) -> dict[str, Any]:
    """What is still written when the full record cannot be built: one line per decision holds."""
    return _fallback(view, type(error).__name__)


def _fallback(view: AuditView, error: str) -> dict[str, Any]:
    return {
        "time": _rfc3339(view.started),
        "decision_id": view.decision_id,
        "outcome": view.outcome,
        "decided_by": view.decided_by,
        "audit_error": error,
    }


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]


def _identity(metadata: Mapping[str, Any]) -> tuple[tuple[str, Text], ...]:
    """Identifying claims of the first verified JWT Envoy's jwt_authn filter stored, if any."""
    namespace = metadata.get(JWT_NAMESPACE)
    if not isinstance(namespace, Mapping):
        return ()
    for key in sorted(namespace):
        claims = namespace[key]
        if isinstance(claims, Mapping) and ("sub" in claims or "iss" in claims):
            identity: dict[str, str] = {}
            for claim, field in _IDENTITY_CLAIMS:
                value = claims.get(claim)
                if isinstance(value, str) and field not in identity:
                    identity[field] = value
            return tuple(identity.items())
    return ()


def _verified(identity: Identity, clip: Clipper) -> tuple[tuple[tuple[str, Text | bool], ...], int]:
    """The identity the stage verified, as the line shows it (empty fields left out), and its
    estimated memory. The strings are the caller's to choose (a subject can be any length), so
    they are clipped and later masked like every other value."""
    pairs: list[tuple[str, Text | bool]] = [("authenticated", identity.authenticated)]
    size = _PAIR_SIZE
    for field in _VERIFIED_FIELDS:
        value = getattr(identity, field)
        if value:
            clipped = clip.text(str(value))
            pairs.append((field, clipped))
            size += _PAIR_SIZE + text_size(clipped)
    if identity.unavailable:
        pairs.append(("unavailable", True))
        size += _PAIR_SIZE
    return tuple(pairs), size


# The RFC 3339 range of a decision time: years 1970 to 9999.
_LATEST = 253402300799.0


def _approval(metadata: Mapping[str, Any], clip: Clipper) -> tuple[ApprovalView | None, int]:
    """The approval the gate put in the decision's metadata, cut to the line's limits, and its
    estimated memory. None when the gate named none (the store could not be reached)."""
    block = metadata.get("approval")
    if not isinstance(block, Mapping):
        return None, 0
    texts = tuple(
        clip.text(value if type(value) is str else str(value or ""))
        for value in (block.get("id"), block.get("outcome"), block.get("decided_by"))
    )
    decided = block.get("decided")
    # Not a number, or out of range (NaN and infinities too): no time rather than a made-up one.
    number = isinstance(decided, int | float) and not isinstance(decided, bool)
    if not number or not 0 <= decided <= _LATEST:
        decided = None
    view = ApprovalView(texts[0], texts[1], texts[2], decided)
    return view, _MESSAGE_SIZE + sum(map(text_size, texts))


def _approval_record(view: ApprovalView | None, redact: Redactor) -> dict[str, Any] | None:
    if view is None:
        return None
    return {
        "id": redact.text(view.id) or None,
        "outcome": redact.text(view.outcome) or None,
        "decided_by": redact.text(view.decided_by) or None,
        "decided": None if view.decided is None else _rfc3339(view.decided),
    }


def _mcp(view: AuditView, redact: Redactor) -> dict[str, Any] | None:
    if not view.messages:
        return None
    return {"batch": view.batch, "messages": [_message(m, redact) for m in view.messages]}


def _message(message: MessageView, redact: Redactor) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": message.kind,
        "id": redact.masked(message.id),
        "method": redact.text(message.method) or None,
    }
    if message.tool:
        entry["tool"] = redact.text(message.tool)
    if message.prompt:
        entry["prompt"] = redact.text(message.prompt)
    if message.uri:
        entry["uri"] = redact.text(message.uri)
    if message.arguments is not None:
        entry["arguments"] = redact.masked(message.arguments)
    return entry
