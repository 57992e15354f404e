"""Label values for MCP traffic, folded so that no client can grow the number of time series.

Every label value comes from a closed set (the MCP methods of every protocol version) or from a
set that grows only to a configured size (tool names); anything else becomes ``other``. A raw
path, id, URI or argument never becomes a label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from authz_server.decision import DecidedBy, Decision
from authz_server.mcp.message import Kind, McpMessage
from authz_server.observe.redact import looks_secret

OTHER = "other"
RESPONSE = "response"

# Client-to-server methods of MCP 2024-11-05 to 2026-07-28, plus the server-to-client ones a
# confused or hostile client might send: all fixed by the specification.
MCP_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "subscriptions/listen",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        "tasks/update",
        "sampling/createMessage",
        "roots/list",
        "elicitation/create",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "notifications/tasks/status",
        "notifications/message",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/elicitation/complete",
    }
)

# MCP's tool-name alphabet (letters, digits, _ - .) plus the / and : some servers use.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")


def outcome(decision: Decision) -> str:
    """``error`` when the pipeline failed (whatever was answered), else ``allow`` or ``deny``."""
    if decision.decided_by is DecidedBy.ERROR:
        return "error"
    return "allow" if decision.allowed else "deny"


def method_label(message: McpMessage) -> str:
    """The method as a label: a known MCP method, ``response`` or ``other``."""
    if message.kind is Kind.RESULT or message.kind is Kind.ERROR:
        return RESPONSE
    return message.method if message.method in MCP_METHODS else OTHER


class ToolLabels:
    """Admits tool names as label values up to a limit; later names fold into ``other``.

    Known names (from configuration) are always admitted and do not count towards the limit, so
    a client sending many invented names cannot push real tools out of their own series. With
    several workers each process admits its own first names, so the bound is per process.
    """

    def __init__(self, limit: int = 100, known: Iterable[str] = ()) -> None:
        self._limit = limit
        self._admitted: dict[str, str] = {name: name for name in known if _acceptable(name)}
        self._learned = 0

    def __call__(self, name: str) -> str:
        label = self._admitted.get(name)
        if label is not None:
            return label
        if self._learned >= self._limit or not _acceptable(name):
            return OTHER
        self._learned += 1
        self._admitted[name] = name
        return name


def _acceptable(name: str) -> bool:
    return _TOOL_NAME.fullmatch(name) is not None and name != OTHER and not looks_secret(name)


# An issuer is a URL (RFC 8414 §2): printable ASCII without spaces, bounded in length.
_ISSUER = re.compile(r"[!-~]{1,256}")


class IssuerLabels:
    """Admits issuers as label values up to a limit; later ones and odd ones fold into ``other``.

    Tokens verified here come only from configured issuers, but a gateway's verified claims
    (``method="gateway"``) name whatever issuer the gateway accepts: the limit keeps that bounded
    too. Admission is per process, like :class:`ToolLabels`.
    """

    def __init__(self, limit: int = 20) -> None:
        self._limit = limit
        self._admitted: dict[str, str] = {"": ""}

    def __call__(self, issuer: str) -> str:
        label = self._admitted.get(issuer)
        if label is not None:
            return label
        if len(self._admitted) > self._limit or not _acceptable_issuer(issuer):
            return OTHER
        self._admitted[issuer] = issuer
        return issuer


def _acceptable_issuer(issuer: str) -> bool:
    return _ISSUER.fullmatch(issuer) is not None and issuer != OTHER and not looks_secret(issuer)
