"""Human approval end to end (issue 15): an MCP SDK agent calls a tool a policy holds for a
person; the person approves or rejects it on the admin page in a real headless Chromium; the
agent's retry goes through once, or is refused with the person's reason.

The chain is the one users run: the SDK client (with a bearer token its issuer signed) -> the
Envoy stand-in -> ``authz-server serve`` (a real process with the admin listener, an audit log
file and a SQLite state store) -> the SDK MCP server. The page is driven as a person would: the
agent's error carries the link, the browser follows it, logs in with the admin token and presses
the button.

What the agent sees, by protocol era:

* 2025-11-25 (``mode="legacy"``): the SDK raises a plain ``MCPError`` with code -32042 (URL
  elicitation required) whose ``data`` holds ``{"elicitations": [{"mode": "url",
  "elicitationId", "url", "message"}]}``; the SDK does not raise its
  ``UrlElicitationRequiredError`` subclass for it, but ``UrlElicitationRequiredError.from_error``
  turns the error into typed elicitations. The session stays usable.
* 2026-07-28 (``mode="auto"``): an ``MCPError`` with code -31428 whose message carries the same
  URL (that era has no -32042).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError

from authz_server.observe.redact import MASK
from authz_server.policy.render import APPROVAL_REQUIRED, POLICY_DENIED, URL_ELICITATION_REQUIRED
from tests.oversight.browser_kit import by, chromium, submit
from tests.oversight.served import Agents, agent_policies
from tests.serving import ServerProcess, free_port, start_server, stop_server

from .conftest import MAX_REQUEST_BYTES, LoopThread, Served, _serve
from .gateway import Gateway
from .mcp_server import Recorder, build_app

T = TypeVar("T")

REASON = "merging needs a maintainer"
APPROVAL_POLICY = f"""\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: merges-need-a-maintainer
spec:
  evaluation:
    mode: Envoy
  validations:
  - expression: >
      mcp.Method == "tools/call" && mcp.ToolCall.Name == "merge_pull_request"
        ? approval.Require("{REASON}")
        : envoy.Allowed().Response()
"""
AGENT = "agent-7"
APPROVER = "alice"
# Made-up credentials the agent puts in a tool call: one that looks like a GitHub token (masked
# wherever it appears), one under a key that names a secret (masked whatever it looks like).
GITHUB_TOKEN = "ghp_" + "Zq8" * 12
PLAIN_SECRET = "correct-horse-battery-staple-42"
MODES = {"legacy": URL_ELICITATION_REQUIRED, "auto": APPROVAL_REQUIRED}
"""SDK connect mode -> the code of the error that asks for approval (2025-11-25, 2026-07-28)."""


@dataclass
class Stack:
    authz: ServerProcess
    agents: Agents
    bearer: str
    admin_url: str
    admin_token: str
    audit_log: Path
    upstream: Recorder
    gateway_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """SDK client -> gateway -> authz-server (admin listener on) -> SDK MCP server."""
    base = tmp_path_factory.mktemp("approval-e2e")
    agents = agent_policies(base / "policies", APPROVAL_POLICY)
    admin_token = secrets.token_urlsafe(32)
    (base / "admin-token").write_text(admin_token + "\n")
    admin_address = f"127.0.0.1:{free_port()}"
    audit_log = base / "audit.log"
    authz = start_server(
        agents.directory,
        "--state", f"sqlite://{base / 'state' / 'state.db'}",
        "--admin-address", admin_address,
        "--admin-token-file", str(base / "admin-token"),
        "--audit-log", str(audit_log),
        log=base / "authz-server.log",
    )  # fmt: skip
    loop = LoopThread()
    started: list[Served] = []
    try:
        upstream = build_app()
        started.append(loop.run(_serve(upstream)))
        gateway = Gateway(started[0].url, authz.target, max_request_bytes=MAX_REQUEST_BYTES)
        started.append(loop.run(_serve(gateway)))
        yield Stack(
            authz=authz,
            agents=agents,
            bearer=agents.token(AGENT),
            admin_url=f"http://{admin_address}",
            admin_token=admin_token,
            audit_log=audit_log,
            upstream=upstream,
            gateway_url=f"{started[1].url}/mcp",
        )
    finally:
        for served in reversed(started):
            with contextlib.suppress(Exception):
                loop.run(served.stop())
        loop.close()
        stop_server(authz)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as session:
        yield session


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def agent(stack: Stack, mode: str) -> Any:
    """An SDK client session through the gateway, sending the agent's bearer token."""
    headers = {"authorization": f"Bearer {stack.bearer}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as http:
        transport = streamable_http_client(stack.gateway_url, http_client=http)
        async with Client(transport, mode=mode, read_timeout_seconds=15) as client:
            yield client


async def refused(client: Client, arguments: dict[str, Any]) -> MCPError:
    try:
        result = await client.call_tool("merge_pull_request", arguments)
    except MCPError as error:
        return error
    pytest.fail(f"the call was not refused: {result}")


def approval_url(error: MCPError) -> str:
    """The approval link, from the error the agent got (either era)."""
    if error.code == URL_ELICITATION_REQUIRED:
        [elicitation] = error.data["elicitations"]
        return str(elicitation["url"])
    match = re.search(r"(http://\S+/\?approval=[0-9a-f]{24})", error.message)
    assert match, error.message
    return match.group(1)


def approval_id(url: str) -> str:
    return url.rsplit("=", 1)[1]


def decide_on_the_page(
    browser: Any, stack: Stack, url: str, action: str, reason: str = ""
) -> tuple[str, str]:
    """Follow the agent's link, log in with the admin token, then approve or reject the approval
    the link shows first; the flash message and the page's HTML as it showed the approval."""
    browser.get(f"{stack.admin_url}/")
    browser.delete_all_cookies()
    browser.get(url)
    browser.find_element(*by("NAME", "token")).send_keys(stack.admin_token)
    browser.find_element(*by("NAME", "name")).send_keys(APPROVER)
    submit(browser, browser.find_element(*by("CSS_SELECTOR", "form[action='/login'] button")))
    row = browser.find_element(*by("ID", f"approval-{approval_id(url)}"))
    shown = browser.page_source
    if reason:
        row.find_element(*by("NAME", "reason")).send_keys(reason)
    submit(browser, row.find_element(*by("NAME", action)))
    return browser.find_element(*by("ID", "flash")).text, shown


def merges_upstream(stack: Stack, start: int, pull: int) -> int:
    """How many merge_pull_request calls for ``pull`` reached the MCP server since ``start``."""
    return sum(
        1
        for seen in stack.upstream.seen[start:]
        if seen.tool_call() == "merge_pull_request"
        and json.loads(seen.body)["params"]["arguments"].get("pull_number") == pull
    )


def pull_request(pull: int, **extra: Any) -> dict[str, Any]:
    return {"owner": "octo", "repo": "widgets", "pull_number": pull, **extra}


@dataclass
class Approved:
    first: MCPError
    flash: str
    page: str
    result_text: list[str]
    again: MCPError
    reached_upstream: int


async def approve_and_retry(
    stack: Stack, browser: Any, mode: str, arguments: dict[str, Any]
) -> Approved:
    """The agent's call is held; a person approves it on the page while the agent's session
    stays open; the agent retries, then makes the same call once more."""
    seen = len(stack.upstream.seen)
    async with agent(stack, mode) as client:
        first = await refused(client, arguments)
        flash, page = await asyncio.to_thread(
            decide_on_the_page, browser, stack, approval_url(first), "approve"
        )
        result = await client.call_tool("merge_pull_request", arguments)
        assert not result.is_error, result
        again = await refused(client, arguments)
    return Approved(
        first,
        flash,
        page,
        [c.text for c in result.content],
        again,
        merges_upstream(stack, seen, arguments["pull_number"]),
    )


@pytest.mark.parametrize("mode", MODES)
def test_an_approved_call_goes_through_once_and_the_next_one_asks_again(
    stack: Stack, browser: Any, mode: str
) -> None:
    pull = 11 if mode == "legacy" else 12
    outcome = run(approve_and_retry(stack, browser, mode, pull_request(pull)))

    first = outcome.first
    assert first.code == MODES[mode]
    assert REASON in first.message
    url = approval_url(first)
    assert url.startswith(f"{stack.admin_url}/?approval=")
    if mode == "legacy":
        # What an agent built on the SDK can do with it: typed URL elicitations.
        [elicitation] = UrlElicitationRequiredError.from_error(first.error).elicitations
        assert (elicitation.url, elicitation.elicitation_id) == (url, approval_id(url))
        assert elicitation.message == f"Approve this call: {REASON}"
    assert outcome.flash == "Approved merge_pull_request for one call."
    assert AGENT in outcome.page and REASON in outcome.page
    assert outcome.result_text == [f"merged octo/widgets#{pull}"]
    assert outcome.reached_upstream == 1

    again = outcome.again
    assert again.code == MODES[mode]
    # The approval id is derived from the call, so the same call asks under the same id: a
    # new pending approval, the used one kept aside.
    assert approval_id(approval_url(again)) == approval_id(url)
    approvals = admin_api(stack, "approvals?state=all")
    states = sorted(a["state"] for a in approvals if a["id"].startswith(approval_id(url)))
    assert states == ["pending", "used"]


def test_a_rejected_call_is_refused_with_the_approvers_reason(stack: Stack, browser: Any) -> None:
    arguments = pull_request(13)

    async def reject_and_retry() -> tuple[MCPError, str, MCPError]:
        async with agent(stack, "legacy") as client:
            first = await refused(client, arguments)
            flash, _ = await asyncio.to_thread(
                decide_on_the_page, browser, stack, approval_url(first), "reject",
                "not on a Friday",
            )  # fmt: skip
            return first, flash, await refused(client, arguments)

    seen = len(stack.upstream.seen)
    first, flash, retry = run(reject_and_retry())
    assert first.code == URL_ELICITATION_REQUIRED
    assert flash == "Rejected merge_pull_request."
    assert retry.code == POLICY_DENIED
    assert retry.message == f"approval rejected by {APPROVER}: not on a Friday"
    assert merges_upstream(stack, seen, 13) == 0
    refused_line = audit_lines(stack, 13, 2)[1]
    assert refused_line["outcome"] == "deny" and refused_line["http_status"] == 403
    assert refused_line["approval"]["outcome"] == "rejected"
    assert refused_line["approval"]["decided_by"] == APPROVER


def admin_api(stack: Stack, path: str) -> Any:
    request = urllib.request.Request(
        f"{stack.admin_url}/api/v1/{path}",
        headers={"Authorization": f"Bearer {stack.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def audit_lines(stack: Stack, pull: int, count: int) -> list[dict[str, Any]]:
    """The audit lines of the merge_pull_request calls for ``pull``, once ``count`` of them were
    written (the writer flushes in batches)."""

    def merges(line: dict[str, Any]) -> bool:
        messages = (line.get("mcp") or {}).get("messages") or []
        return any(
            m.get("tool") == "merge_pull_request"
            and (m.get("arguments") or {}).get("pull_number") == pull
            for m in messages
        )

    deadline = time.monotonic() + 10
    while True:
        text = stack.audit_log.read_text() if stack.audit_log.exists() else ""
        found = [line for line in map(json.loads, text.splitlines()) if merges(line)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_no_credential_reaches_the_page_the_api_or_the_audit_line(
    stack: Stack, browser: Any
) -> None:
    """The agent's bearer token (a header) and secrets in its tool arguments are shown to
    nobody: not on the page the approver sees, not in the API's approvals, not in the audit
    lines of the held call and of its approved retry; nor is the admin token."""
    arguments = pull_request(14, note=f"use {GITHUB_TOKEN} to push", api_key=PLAIN_SECRET)
    outcome = run(approve_and_retry(stack, browser, "legacy", arguments))
    assert outcome.result_text == ["merged octo/widgets#14"]
    approval = approval_id(approval_url(outcome.first))

    api = json.dumps(admin_api(stack, "approvals?state=all"))
    [recorded] = [a for a in admin_api(stack, "approvals?state=all") if a["id"] == approval]
    assert recorded["caller"]["subject"] == AGENT
    # The person sees the call's arguments, with the secrets masked as in the audit line.
    assert recorded["arguments"]["pull_number"] == 14
    assert recorded["arguments"]["api_key"] == MASK
    assert recorded["arguments"]["note"] == f"use {MASK} to push"
    # Held, let through once (naming who approved it and the approval), asked again.
    audit = audit_lines(stack, 14, 3)
    assert [(line["decided_by"], line["outcome"]) for line in audit] == [
        ("approval", "deny"), ("approval", "allow"), ("approval", "deny")
    ]  # fmt: skip
    assert audit[0]["reason"] == audit[2]["reason"] == f"approval pending: {REASON}"
    assert audit[1]["reason"] == f"approved by {APPROVER} (approval {approval}), used once"
    # Each line names the approval: what became of the call, who decided and when.
    blocks = [line["approval"] for line in audit]
    assert [(b["id"], b["outcome"], b["decided_by"]) for b in blocks] == [
        (approval, "pending", None), (approval, "used", APPROVER), (approval, "pending", None)
    ]  # fmt: skip
    assert blocks[1]["decided"].endswith("Z") and blocks[0]["decided"] is None
    assert all(line["identity"]["subject"] == AGENT for line in audit)
    audit_text = stack.audit_log.read_text()
    for secret in (stack.bearer, GITHUB_TOKEN, PLAIN_SECRET, stack.admin_token):
        assert secret not in outcome.page
        assert secret not in api
        assert secret not in audit_text
