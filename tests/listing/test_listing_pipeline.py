"""PolicyAuthorizer.filter_list with the example library, as the transports call it.

The caller of a list is the list request's: anonymous, a Bearer token whose ``tools`` claim
names some tools, a DPoP-bound token whose proof the request phase already claimed. For each,
the tools listed are exactly those some call of theirs is allowed by the same authorizer's
``check`` (each call with a fresh proof), over argument sets that reach the argument rules of
the library (paths, shell commands).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from authz_server.decision import DecidedBy, Decision
from authz_server.envoy.adapter import request_from_check
from authz_server.observe import Metrics
from authz_server.oversight.revocations import Revocations
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_json
from authz_server.request import Request
from authz_server.state import open_store

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
MINT_PATH = ROOT / "examples" / "identity" / "mint.py"

TOOLS = [
    # filesystem (reads are allowed when the paths are; writes never)
    "read_file",
    "read_multiple_files",
    "list_directory",
    "list_allowed_directories",
    "write_file",
    "move_file",
    "delete_file",
    # github
    "get_issue",
    "list_issues",
    "create_pull_request",
    "push_files",
    "merge_pull_request",
    "delete_branch",
    "delete_repository",
    "create_or_update_file",
    # shell (allowed for some commands)
    "run_command",
    "shell",
    "no_such_tool",
]
ARGUMENT_SETS: list[dict[str, Any] | None] = [
    None,
    {"path": "/home/me/notes.txt"},
    {"paths": ["/home/me/a.txt"]},
    {"path": "/etc/passwd"},
    {"command": "ls -l"},
    {"command": "rm -rf /"},
    {"force": True},
]


def _mint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_mint", MINT_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MINT = _mint()


def token(tools: list[str] | None, *, dpop: bool = False, sub: str = "agent-7") -> str:
    args = argparse.Namespace(
        now=None,
        key="es256",
        audience=MINT.AUDIENCE,
        sub=sub,
        client_id=None,
        lifetime=3600,
        scope=None,
        tools=",".join(tools) if tools is not None else None,
        dpop=dpop,
    )
    return str(MINT.mint_token(args))


class Caller:
    """The headers a client sends on every request; a DPoP client signs a fresh proof each time."""

    def __init__(self, token: str | None = None, *, dpop: bool = False) -> None:
        self.token = token
        self.dpop = dpop

    def request(self, message: dict[str, Any]) -> Request:
        headers = {
            ":authority": "mcp.example.com",
            ":method": "POST",
            ":path": "/mcp",
            ":scheme": "https",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-06-18",
        }
        if self.token is not None:
            if self.dpop:
                headers["authorization"] = f"DPoP {self.token}"
                headers["dpop"] = MINT.mint_proof(self.token, "POST", MINT.URL, None)
            else:
                headers["authorization"] = f"Bearer {self.token}"
        body = json.dumps(message)
        http = {
            "method": "POST",
            "path": "/mcp",
            "host": "mcp.example.com",
            "scheme": "https",
            "protocol": "HTTP/1.1",
            "headers": headers,
            "body": body,
            "size": str(len(body)),
        }
        return request_from_check(
            check_request_from_json({"attributes": {"request": {"http": http}}})
        )

    def list_request(self, method: str = "tools/list") -> Request:
        return self.request({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}})

    def call(self, tool: str, arguments: dict[str, Any] | None) -> Request:
        params: dict[str, Any] = {"name": tool}
        if arguments is not None:
            params["arguments"] = arguments
        return self.request({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})


def tools_result(names: list[str], cursor: str | None = "page-2") -> dict[str, Any]:
    result: dict[str, Any] = {
        "tools": [{"name": n, "inputSchema": {"type": "object"}} for n in names]
    }
    if cursor is not None:
        result["nextCursor"] = cursor
    return result


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def authorizer(tmp_path: Path, registry: CollectorRegistry) -> Iterator[PolicyAuthorizer]:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory, ignore=shutil.ignore_patterns("tests"))
    metrics = Metrics(registry)
    authorizer = PolicyAuthorizer(
        PolicyStore(directory),
        observers=(metrics,),
        metrics=metrics,
        state=open_store(f"sqlite:///{tmp_path}/state.db"),
        reload_interval=60,
    )
    authorizer.start()
    try:
        yield authorizer
    finally:
        authorizer.stop()
        metrics.close()


def listed(authorizer: PolicyAuthorizer, caller: Caller, *, check_first: bool = True) -> set[str]:
    request = caller.list_request()
    if check_first:
        # The request phase decides the list request itself (and claims a DPoP proof).
        assert authorizer.check(request).allowed
    result, hidden = authorizer.filter_list(request, tools_result(TOOLS), "tools/list")
    names = [tool["name"] for tool in result["tools"]]
    assert hidden == len(TOOLS) - len(names)
    assert result["nextCursor"] == "page-2"
    return set(names)


def usable(authorizer: PolicyAuthorizer, caller: Caller) -> set[str]:
    """The tools some call of which is allowed, or waits for a person's approval (which then
    lets it through: main's approval-merge-delete.yaml)."""
    return {
        tool
        for tool in TOOLS
        if any(_may_run(authorizer.check(caller.call(tool, a))) for a in ARGUMENT_SETS)
    }


def _may_run(decision: Decision) -> bool:
    return decision.allowed or (
        decision.decided_by is DecidedBy.APPROVAL
        and decision.dynamic_metadata.get("approval", {}).get("outcome") == "pending"
    )


def test_an_anonymous_caller_sees_exactly_the_tools_some_call_may_use(
    authorizer: PolicyAuthorizer,
) -> None:
    caller = Caller()
    shown = listed(authorizer, caller)
    assert shown == usable(authorizer, caller)
    assert shown == {
        "read_file",
        "read_multiple_files",
        "list_directory",
        "list_allowed_directories",
        "get_issue",
        "list_issues",
        "create_pull_request",
        "push_files",
        "run_command",
        "shell",
    }


def test_a_tools_claim_narrows_the_list_and_a_bearer_token_loses_the_write_tools(
    authorizer: PolicyAuthorizer,
) -> None:
    claim = ["get_issue", "create_pull_request", "merge_pull_request", "read_file", "shell"]
    caller = Caller(token(claim))
    shown = listed(authorizer, caller)
    assert shown == usable(authorizer, caller)
    # create_pull_request writes: a Bearer token gets 401 (DPoP needed); merging is refused.
    assert shown == {"get_issue", "read_file", "shell"}


def test_a_dpop_caller_is_judged_with_the_proof_the_request_phase_claimed(
    authorizer: PolicyAuthorizer,
) -> None:
    claim = ["get_issue", "create_pull_request", "merge_pull_request", "read_file", "shell"]
    caller = Caller(token(claim, dpop=True), dpop=True)
    shown = listed(authorizer, caller)
    assert shown == usable(authorizer, caller)
    # merge_pull_request: main's approval-merge-delete.yaml lets a person approve it for a
    # caller whose tools claim names it, so some call of it can be allowed.
    assert shown == {"get_issue", "create_pull_request", "merge_pull_request", "read_file", "shell"}


def test_a_refused_credential_sees_nothing(authorizer: PolicyAuthorizer) -> None:
    forged = token(["get_issue"])[:-4] + "AAAA"
    result, hidden = authorizer.filter_list(
        Caller(forged).list_request(), tools_result(TOOLS), "tools/list"
    )
    assert result["tools"] == [] and hidden == len(TOOLS)


def test_required_authentication_shows_an_anonymous_caller_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory, ignore=shutil.ignore_patterns("tests"))
    authentication = directory / "authentication.yaml"
    authentication.write_text(
        authentication.read_text().replace("required: false", "required: true")
    )
    authorizer = PolicyAuthorizer(
        PolicyStore(directory), state=open_store(f"sqlite:///{tmp_path}/state.db")
    )
    authorizer.start()
    try:
        request = Caller().list_request()
        assert not authorizer.check(request).allowed  # 401 before the policies
        result, hidden = authorizer.filter_list(request, tools_result(TOOLS), "tools/list")
        assert result == {"tools": [], "nextCursor": "page-2"} and hidden == len(TOOLS)
    finally:
        authorizer.stop()


def test_a_revoked_tool_is_hidden_from_its_caller_only(
    authorizer: PolicyAuthorizer, tmp_path: Path
) -> None:
    revoked = Caller(token(None, sub="agent-7"))
    other = Caller(token(None, sub="agent-8"))
    assert {"get_issue", "read_file"} <= listed(authorizer, revoked)
    Revocations(open_store(f"sqlite:///{tmp_path}/state.db")).add(
        subject="agent-7", tools=["get_issue"], reason="test"
    )
    deadline = time.monotonic() + 10
    while "get_issue" in listed(authorizer, revoked, check_first=False):
        assert time.monotonic() < deadline, "the revocation never reached the filter"
        time.sleep(0.1)
    assert "read_file" in listed(authorizer, revoked, check_first=False)
    assert "get_issue" in listed(authorizer, other)


def test_prompts_and_resources_lists(authorizer: PolicyAuthorizer) -> None:
    caller = Caller()
    prompts = {"prompts": [{"name": "summarize"}, {"name": "explain"}]}
    result, hidden = authorizer.filter_list(
        caller.list_request("prompts/list"), prompts, "prompts/list"
    )
    assert (result, hidden) == (prompts, 0)
    resources = {
        "resources": [
            {"uri": "file:///etc/shadow", "name": "shadow"},
            {"uri": "file:///home/me/todo.md", "name": "todo"},
            {"uri": "file:///srv/../etc/hosts", "name": "hosts"},
        ]
    }
    result, hidden = authorizer.filter_list(
        caller.list_request("resources/list"), resources, "resources/list"
    )
    assert [r["name"] for r in result["resources"]] == ["todo"] and hidden == 2


def test_a_result_that_is_not_a_list_is_untouched_and_a_malformed_one_loses_everything(
    authorizer: PolicyAuthorizer, registry: CollectorRegistry
) -> None:
    request = Caller().list_request()
    other = {"content": [{"type": "text", "text": "hi"}]}
    assert authorizer.filter_list(request, other, "tools/call") == (other, 0)
    broken = {"tools": {"name": "read_file"}, "nextCursor": "x"}
    assert authorizer.filter_list(request, broken, "tools/list") == (
        {"tools": [], "nextCursor": "x"},
        0,
    )
    assert authorizer.filter_list(request, ["read_file"], "tools/list") == ({"tools": []}, 0)
    sample = registry.get_sample_value
    assert sample("authz_list_results_total", {"method": "tools/list", "outcome": "error"}) == 2
    assert sample("authz_list_results_total", {"method": "other", "outcome": "error"}) == 0


def test_list_metrics_count_results_and_entries(
    authorizer: PolicyAuthorizer, registry: CollectorRegistry
) -> None:
    caller = Caller()
    listed(authorizer, caller)
    listed(authorizer, caller)
    authorizer.filter_list(caller.list_request(), tools_result(["read_file"]), "tools/list")
    sample = registry.get_sample_value
    assert sample("authz_list_results_total", {"method": "tools/list", "outcome": "filtered"}) == 2
    assert sample("authz_list_results_total", {"method": "tools/list", "outcome": "unchanged"}) == 1
    assert sample("authz_list_entries_total", {"method": "tools/list", "verdict": "hidden"}) == 16
    assert sample("authz_list_entries_total", {"method": "tools/list", "verdict": "shown"}) == 21
    assert sample("authz_list_filter_duration_seconds_count", {}) == 3
