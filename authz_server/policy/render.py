"""What a denied client receives.

A denied MCP request gets a JSON-RPC error (with the request's ``id``; one entry per element for
a batch; no ``id`` for a notification) with ``content-type: application/json``, so MCP clients
show the reason instead of a bare status. The message is the policy's own body when it gave one
(``envoy.Denied(403).WithBody("merging pull requests is reserved for humans")``), otherwise the
decision's reason. The policy's status and other headers are kept.

Why a policy's plain-text body is wrapped: MCP SDK clients read a non-2xx reply only when it is
``application/json`` holding a JSON-RPC error. The Python SDK (``mcp`` 2.3, checked end to end in
``tests/e2e``) turns a 403 ``text/plain`` reply into ``MCPError(-32603, "Server returned an error
response")`` and drops the body, so the policy's reason never reached the agent; Envoy labels a
body without a content type ``text/plain``. A policy that sets its own ``content-type`` header is
sent exactly as given (that is how to send plain text or a custom JSON-RPC error on purpose), and
so is a body for a request that carries no MCP message (a GET, a DELETE), which Envoy sends as
``text/plain``. A denial without any body gets a short plain-text reason in that case. Kyverno's
server sends a policy's body as given, so this is a deliberate difference from it.

JSON-RPC has no "forbidden" code and MCP reserves -32000..-32099, so policy outcomes use
application-defined codes outside -32768..-32000 (MCP's rule for them). Decode failures use the
standard codes: -32700 parse error, -32600 invalid request, -32602 invalid params, and MCP's
-32020 for a header that disagrees with the body. A failure inside the server (a defect, whatever
raised) is -32603 with status 500, and its message is a fixed text with the decision id, never
the exception's text.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from authz_server.decision import AppendAction, DecidedBy, Decision, HeaderMutation, deny
from authz_server.identity.challenge import Refusal
from authz_server.mcp.message import Decoded, FailureReason, Kind, McpMessage

POLICY_DENIED = -31403
"""A policy (or the default decision) denied the request."""
POLICY_ERROR = -31500
"""A policy failed to evaluate under ``failurePolicy: Fail``; the request is denied."""
NOT_READY = -31503
"""No policy set is loaded, or a dependency of the identity stage is unavailable: the server
cannot decide now."""
REVOKED = -31410
"""The caller matched a revocation: an operator stopped this agent (or this tool for it)."""
APPROVAL_REQUIRED = -31428
"""A person must approve the call first (clients before MCP 2025-11-25's URL elicitation)."""
URL_ELICITATION_REQUIRED = -32042
"""MCP 2025-11-25's "URL elicitation required": the client opens the URL, then retries."""
URL_ELICITATION_VERSION = "2025-11-25"
UNAUTHENTICATED = -31401
"""The request carries no valid credential and the Authentication document requires one."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020

INTERNAL_REASON = "internal error"

JSON = "application/json"
TEXT = "text/plain"

# reason -> (HTTP status, JSON-RPC code)
DECODE_FAILURES: dict[FailureReason, tuple[int, int]] = {
    FailureReason.TRUNCATED: (413, PARSE_ERROR),
    FailureReason.TOO_LARGE: (413, INVALID_REQUEST),
    FailureReason.DECOMPRESSION_LIMIT: (413, INVALID_REQUEST),
    FailureReason.INVALID_JSON: (400, PARSE_ERROR),
    FailureReason.TRAILING_DATA: (400, PARSE_ERROR),
    FailureReason.INVALID_UTF8: (400, PARSE_ERROR),
    FailureReason.BYTE_ORDER_MARK: (400, PARSE_ERROR),
    FailureReason.DUPLICATE_KEY: (400, PARSE_ERROR),
    FailureReason.TOO_DEEP: (400, PARSE_ERROR),
    FailureReason.UNSUPPORTED_ENCODING: (400, PARSE_ERROR),
    FailureReason.INVALID_ENCODING: (400, PARSE_ERROR),
    FailureReason.UNSUPPORTED_CHARSET: (400, PARSE_ERROR),
    FailureReason.NOT_JSONRPC: (400, INVALID_REQUEST),
    FailureReason.INVALID_ID: (400, INVALID_REQUEST),
    FailureReason.INVALID_METHOD: (400, INVALID_REQUEST),
    FailureReason.EMPTY_BATCH: (400, INVALID_REQUEST),
    FailureReason.AMBIGUOUS_MESSAGE: (400, INVALID_REQUEST),
    FailureReason.INVALID_PARAMS: (400, INVALID_PARAMS),
    FailureReason.HEADER_MISMATCH: (400, HEADER_MISMATCH),
    FailureReason.INTERNAL_ERROR: (500, INTERNAL_ERROR),
    FailureReason.MISSING_BODY: (400, INVALID_REQUEST),
    FailureReason.AMBIGUOUS_ENCODING: (400, PARSE_ERROR),
    FailureReason.NUL_CHARACTER: (400, INVALID_PARAMS),
}


def _error(message: McpMessage | None, code: int, text: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"jsonrpc": "2.0"}
    if message is None:
        entry["id"] = None
    elif message.kind is not Kind.NOTIFICATION:
        entry["id"] = message.id
    entry["error"] = {"code": code, "message": text}
    return entry


def _with_body(decision: Decision, body: str, content_type: str, status: int) -> Decision:
    header = HeaderMutation("content-type", content_type, AppendAction.OVERWRITE_IF_EXISTS_OR_ADD)
    kept = tuple(h for h in decision.headers if h.key.lower() != "content-type")
    return dataclasses.replace(
        decision, body=body, headers=(header, *kept), http_status=decision.http_status or status
    )


def render_denial(decision: Decision, decoded: Decoded, code: int = POLICY_DENIED) -> Decision:
    """The body of a denial: a JSON-RPC error for an MCP request (see the module docstring).

    An allow, a denial whose policy set its own ``content-type``, and a denial with a body for a
    request without an MCP message are returned unchanged.
    """
    if decision.allowed:
        return decision
    messages = decoded.messages
    if decision.body:
        if not messages or any(h.key.lower() == "content-type" for h in decision.headers):
            return decision
        reason = decision.body
    else:
        reason = decision.reason or "request denied"
        if not messages:
            return _with_body(decision, reason + "\n", TEXT, 403)
    if decoded.batch:
        payload: Any = [_error(m, code, reason) for m in messages]
    else:
        payload = _error(messages[0], code, reason)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return _with_body(decision, body, JSON, 403)


def render_decode_failure(decision: Decision, decoded: Decoded) -> Decision:
    """The body of a request denied because its MCP body could not be trusted."""
    failure = decoded.failure
    status, code = (
        DECODE_FAILURES.get(failure.reason, (400, INVALID_REQUEST))
        if failure
        else (
            400,
            INVALID_REQUEST,
        )
    )
    text = decision.reason
    if (
        failure is not None
        and failure.detail
        and failure.reason is not FailureReason.INTERNAL_ERROR
    ):
        text = f"{failure.reason}: {failure.detail}"
    payload = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}}
    decision = dataclasses.replace(decision, http_status=status)
    return _with_body(decision, json.dumps(payload, separators=(",", ":")), JSON, status)


def render_internal_error(decoded: Decoded, decision_id: str) -> Decision:
    """The denial of a check that failed inside the server: status 500, JSON-RPC -32603 (for an
    MCP request, or a body that was being decoded) and a message naming only the decision id,
    which joins the answer to the audit line and the server log."""
    decision = deny(500, reason=INTERNAL_REASON, decided_by=DecidedBy.ERROR)
    text = f"{INTERNAL_REASON} (decision {decision_id})"
    messages = decoded.messages
    if decoded.batch and messages:
        payload: Any = [_error(m, INTERNAL_ERROR, text) for m in messages]
    elif messages or decoded.failure is not None:
        payload = _error(messages[0] if messages else None, INTERNAL_ERROR, text)
    else:
        return _with_body(decision, text + "\n", TEXT, 500)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return _with_body(decision, body, JSON, 500)


def render_refusal(refusal: Refusal, decoded: Decoded) -> Decision:
    """The denial of a request refused by the identity stage, before any policy: 401 with the
    ``WWW-Authenticate`` challenge (or 503 when verification could not be done) and a JSON-RPC
    error, also for a request without an MCP message (the client is an MCP client)."""
    unavailable = refusal.status == 503
    headers = ()
    if refusal.challenge:
        headers = (HeaderMutation("www-authenticate", refusal.challenge),)
    decision = deny(
        refusal.status,
        reason=f"identity: {refusal.description}",
        decided_by=DecidedBy.IDENTITY,
        headers=headers,
    )
    code = NOT_READY if unavailable else UNAUTHENTICATED
    text = (
        f"authorization unavailable: {refusal.description}"
        if unavailable
        else f"authentication required: {refusal.description}"
    )
    return _jsonrpc_denial(decision, decoded, code, text)


def _jsonrpc_denial(decision: Decision, decoded: Decoded, code: int, text: str) -> Decision:
    """A denial with a JSON-RPC error body for every request, message or not (the client is an
    MCP client)."""
    messages = decoded.messages
    if decoded.batch and messages:
        payload: Any = [_error(m, code, text) for m in messages]
    else:
        payload = _error(messages[0] if messages else None, code, text)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return _with_body(decision, body, JSON, decision.http_status)


def render_revoked(reason: str, decoded: Decoded) -> Decision:
    """The denial of a caller an operator revoked: 403 naming the operator's reason."""
    decision = deny(403, reason=f"revoked: {reason}", decided_by=DecidedBy.REVOKED)
    return _jsonrpc_denial(decision, decoded, REVOKED, f"access revoked: {reason}")


def render_revocations_unavailable(decoded: Decoded) -> Decision:
    """The denial when revocations cannot be checked (the store has not answered for longer than
    the staleness bound): 503, never an allow."""
    decision = deny(
        503, reason="revocations cannot be checked: state store unavailable",
        decided_by=DecidedBy.REVOKED,
    )  # fmt: skip
    return _jsonrpc_denial(
        decision, decoded, NOT_READY, "authorization unavailable: revocations cannot be checked"
    )


def render_approval_pending(
    decision: Decision, decoded: Decoded, url: str, approval_id: str
) -> Decision:
    """The answer to a call waiting for a person: for an MCP 2025-11-25 request the -32042 URL
    elicitation error (HTTP 200, as the spec's flow expects: the client shows the URL, the person
    approves, the client retries); for other versions an application error (403) whose message
    carries the same URL, since they have no such error (2026-07-28 forbids -32042)."""
    reason = decision.approval
    text = (
        f"approval required: {reason}. A person can approve this call at {url} "
        f"(approval {approval_id}); retry it once approved."
    )
    message = decoded.messages[0] if decoded.messages else None
    if message is not None and message.protocol_version == URL_ELICITATION_VERSION:
        entry = _error(message, URL_ELICITATION_REQUIRED, text)
        entry["error"]["data"] = {
            "elicitations": [
                {
                    "mode": "url",
                    "elicitationId": approval_id,
                    "url": url,
                    "message": f"Approve this call: {reason}",
                }
            ]
        }
        status = 200
    else:
        entry, status = _error(message, APPROVAL_REQUIRED, text), 403
    answer = dataclasses.replace(
        decision,
        http_status=status,
        decided_by=DecidedBy.APPROVAL,
        reason=f"approval pending: {reason}",
        headers=(),
        body="",
    )
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
    return _with_body(answer, body, JSON, status)


def render_approval_rejected(decision: Decision, decoded: Decoded, by: str, why: str) -> Decision:
    """The denial of a call a person refused: 403 naming who and why."""
    text = f"approval rejected by {by or 'an operator'}" + (f": {why}" if why else "")
    answer = dataclasses.replace(
        decision, http_status=403, decided_by=DecidedBy.APPROVAL, reason=text, headers=(), body=""
    )
    return _jsonrpc_denial(answer, decoded, POLICY_DENIED, text)


def render_approvals_unavailable(decision: Decision, decoded: Decoded) -> Decision:
    """The denial when the approval store cannot be reached: 503, never an allow."""
    text = "authorization unavailable: approvals cannot be checked"
    answer = dataclasses.replace(
        decision, http_status=503, decided_by=DecidedBy.APPROVAL, reason=text, headers=(), body=""
    )
    return _jsonrpc_denial(answer, decoded, NOT_READY, text)
