"""Building list requests, judging entries, and the engine's own answer for a call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from authz_server.envoy.adapter import request_from_check
from authz_server.identity.model import ANONYMOUS, Identity
from authz_server.listing import ListFilter, ListingCaller, ListKind
from authz_server.policy import Engine, EngineOptions, PolicySet, load_text
from authz_server.policy.offline import decode_request
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.request import Request

CALLS = {
    ListKind.TOOLS: ("tools/call", "name"),
    ListKind.PROMPTS: ("prompts/get", "name"),
    ListKind.RESOURCES: ("resources/read", "uri"),
}


def list_request(
    kind: ListKind = ListKind.TOOLS, headers: Mapping[str, str] | None = None
) -> Request:
    message = {"jsonrpc": "2.0", "id": 1, "method": kind.method, "params": {}}
    return request_from_check(
        check_request_from_shorthand({"mcp": message, "headers": dict(headers or {})})
    )


def policy_set(*documents: str) -> PolicySet:
    return load_text("---\n".join(documents))


def visible(
    policies: PolicySet | str,
    names: Sequence[str],
    *,
    kind: ListKind = ListKind.TOOLS,
    headers: Mapping[str, str] | None = None,
    identity: Identity = ANONYMOUS,
    **options: Any,
) -> set[str]:
    """The names the caller is shown. Both evaluation paths (one program per list, and entry by
    entry) must agree; the answer is checked to be the same either way."""
    policy_set_ = load_text(policies) if isinstance(policies, str) else policies
    caller = ListingCaller(list_request(kind, headers), identity)
    answers = []
    for entry_programs in (True, False):
        list_filter = ListFilter(
            policy_set_, EngineOptions(**options), entry_programs=entry_programs
        )
        verdicts = list_filter.visible(caller, kind, names)
        answers.append({name for name, shown in zip(names, verdicts, strict=True) if shown})
    assert answers[0] == answers[1], answers
    return answers[0]


def call_request(
    kind: ListKind,
    name: str,
    arguments: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None = None,
) -> Request:
    method, key = CALLS[kind]
    params: dict[str, Any] = {key: name}
    if arguments is not None:
        params["arguments"] = dict(arguments)
    message = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    return request_from_check(
        check_request_from_shorthand({"mcp": message, "headers": dict(headers or {})})
    )


def usable(
    engine: Engine,
    name: str,
    argument_sets: Iterable[Mapping[str, Any] | None],
    *,
    kind: ListKind = ListKind.TOOLS,
    headers: Mapping[str, str] | None = None,
    identity: Identity = ANONYMOUS,
) -> bool:
    """Whether the engine allows (or asks a person to approve) a call using ``name`` with one
    of ``argument_sets``: the ground truth list filtering is held to."""
    for arguments in argument_sets:
        request = call_request(kind, name, arguments, headers)
        decoded = decode_request(request)
        assert decoded.failure is None, decoded.failure
        decision = engine.decide(request, decoded, identity)
        if decision.allowed or decision.approval:
            return True
    return False
