"""The example policy library in policies/ passes its own PolicyTest files, and they cover it.

`authz-server test policies` is what a user runs after editing a policy; it must pass as shipped.
Coverage: every policy decides at least one case (Audit policies, which never decide, must record a
dry-run result in at least one case), and every policy that can deny is seen denying.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz_server.policy.engine import Engine, EngineOptions
from authz_server.policy.loader import load_directory
from authz_server.policy.offline import DecisionPath
from authz_server.policy.testing import (
    check_request_from_json,
    check_request_from_shorthand,
    decide,
    run_cases,
)

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"


def test_authz_server_test_passes_on_the_example_policies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "authz_server", "test", str(POLICIES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout
    assert "FAIL" not in done.stdout and "ERROR" not in done.stdout


def test_validate_still_sees_only_the_policies_not_the_test_files() -> None:
    # The test files live in policies/tests/; the loader must skip their PolicyTest documents.
    done = subprocess.run(
        [sys.executable, "-m", "authz_server", "validate", str(POLICIES)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = {
        d["metadata"]["name"]
        for f in POLICIES.glob("*.yaml")
        for d in yaml.safe_load_all(f.read_text(encoding="utf-8"))
        if d and d.get("kind") == "ValidatingPolicy"
    }
    assert f"ok: {len(names)} policies" in done.stdout
    assert {p.name for p in load_directory(POLICIES).policies} == names


def _test_files() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for file in sorted((POLICIES / "tests").glob("*.yaml")):
        for document in yaml.safe_load_all(file.read_text(encoding="utf-8")):
            if document and document.get("kind") == "PolicyTest":
                spec = document["spec"]
                # Coverage below assumes the default engine options the server runs with.
                assert not spec.get("options"), file
                assert (file.parent / spec["policies"]).resolve() == POLICIES.resolve()
                found.append((file, document))
    return found


@pytest.fixture(scope="module")
def outcomes() -> list[Any]:
    # Through the whole offline path, as `authz-server test` runs the cases: the identity stage
    # verifies the recorded tokens at each file's spec.now, and case identities stand in for it.
    decisions = []
    for file, document in _test_files():
        for run in run_cases(file, document):
            assert run.decision is not None, (file.name, run.name, run.problem)
            decisions.append(run.decision)
    return decisions


def _policies() -> dict[str, Any]:
    return {p.name: p for p in load_directory(POLICIES).policies}


def _audit_names() -> set[str]:
    names = set()
    for file in POLICIES.glob("*.yaml"):
        for document in yaml.safe_load_all(file.read_text(encoding="utf-8")):
            if document and document.get("kind") == "ValidatingPolicy":
                actions = document["spec"].get("validationActions") or ["Deny"]
                if "Deny" not in actions:
                    names.add(document["metadata"]["name"])
    return names


def test_every_enforcing_policy_decides_at_least_one_case(outcomes: list[Any]) -> None:
    enforcing = set(_policies()) - _audit_names()
    decided = {d.policy for d in outcomes if d.policy}
    assert enforcing - decided == set()


def test_every_audit_policy_records_a_would_be_decision_without_enforcing_it(
    outcomes: list[Any],
) -> None:
    audit = _audit_names()
    assert audit  # the library ships a dry-run example
    for name in audit:
        dry = [d for d in outcomes if any(r.policy == name for r in d.dry_run)]
        assert dry, f"no case exercises the Audit policy {name}"
        # At least one would-be denial went through: the policy was not enforced.
        assert any(
            d.allowed and any(r.policy == name and not r.allowed for r in d.dry_run) for d in dry
        )
        assert all(d.policy != name for d in outcomes)


def test_every_policy_that_can_deny_is_seen_denying_and_allowing_calls_pass(
    outcomes: list[Any],
) -> None:
    denying = set()
    for file in POLICIES.glob("*.yaml"):
        for document in yaml.safe_load_all(file.read_text(encoding="utf-8")):
            if document and document.get("kind") == "ValidatingPolicy":
                text = yaml.safe_dump(document["spec"]["validations"])
                if "envoy.Denied" in text:
                    denying.add(document["metadata"]["name"])
    denying -= _audit_names()
    denied_by = {d.policy for d in outcomes if not d.allowed}
    assert denying - denied_by == set()
    # ... and the suite shows allows as well as denials, including default-deny cases
    assert any(d.allowed for d in outcomes)
    assert any(not d.allowed and not d.policy for d in outcomes)


def _anonymous_cases() -> list[Any]:
    """Every case's request that carries no credential at all (no Authorization header, no
    client certificate or principal, no given identity): what a client without an identity
    sends."""
    found = []
    for _file, document in _test_files():
        for case in document["spec"]["cases"]:
            if "identity" in case:
                continue
            if "checkRequest" in case:
                message = check_request_from_json(case["checkRequest"])
            else:
                message = check_request_from_shorthand(case.get("request") or {})
            source = message.attributes.source
            headers = message.attributes.request.http.headers
            if "authorization" in headers or source.certificate or source.principal:
                continue
            found.append(message)
    return found


def test_requests_without_credentials_are_decided_as_without_the_identity_examples(
    tmp_path: Path,
) -> None:
    # authentication.yaml says required: false so that the rest of the library serves anonymous
    # requests as it did before identity existed: with the Authentication document and the
    # identity-* policies removed, every credential-less case must get the very same decision.
    for file in POLICIES.glob("*.yaml"):
        if file.name != "authentication.yaml" and not file.name.startswith("identity-"):
            shutil.copy(file, tmp_path / file.name)
    policies = load_directory(tmp_path)
    assert policies.authentication is None
    without = Engine(policies)
    messages = _anonymous_cases()
    assert len(messages) > 50
    with DecisionPath(load_directory(POLICIES)) as path:
        for message in messages:
            assert path.decide(message) == decide(without, message), message


@pytest.mark.parametrize(
    "body",
    [
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "merge_pull_re',
        '{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "tools/call"}',
    ],
    ids=["cut", "duplicate-keys"],
)
def test_an_undecodable_body_handed_to_the_policies_is_not_taken_for_plumbing(body: str) -> None:
    # --decode-failures-to-policies gives the policies a request with no MCP method; the library
    # must not allow it as if it were a body-less GET.
    engine = Engine(load_directory(POLICIES), EngineOptions(decode_failures_to_policies=True))
    decision = decide(engine, check_request_from_shorthand({"body": body}))
    assert not decision.allowed, decision
    # ... while body-less requests and client responses still pass in that mode
    for request in ({"method": "GET"}, {"mcp": {"jsonrpc": "2.0", "id": 9, "result": {}}}):
        assert decide(engine, check_request_from_shorthand(request)).allowed, request


# --- the path checks hold against every spelling of a system path ----------------------------

SYSTEM_PATHS = ["/etc/passwd", "/etc", "/root/.ssh/id_ed25519", "/proc/self/root/etc/shadow"]


@st.composite
def _spelled(draw: st.DrawFn, path: str, escapes: bool) -> str:
    """``path`` spelled another way that names the same file: ``./`` and ``x/../`` segments,
    doubled separators, backslashes, upper case, and (in URIs) %-escapes."""
    pieces = []
    for segment in path.strip("/").split("/"):
        detour = draw(st.sampled_from(["", "./", "x/../", ".//", "a/b/../../"]))
        separator = draw(st.sampled_from(["/", "//", "\\"] if not escapes else ["/", "//"]))
        pieces.append(separator + detour + segment)
    text = "".join(pieces)
    if draw(st.booleans()):
        text = text.upper()
    if escapes and draw(st.booleans()):
        text = "".join(
            f"%{ord(c):02X}" if c not in "/" and draw(st.booleans()) else c for c in text
        )
    return text


@functools.cache
def _engines() -> tuple[Engine, Engine]:
    policies = load_directory(POLICIES)
    return Engine(policies), Engine(policies, fast_path=False)


def _denied_by(shorthand: dict[str, Any], policy: str) -> None:
    fast_engine, reference_engine = _engines()
    message = check_request_from_shorthand(shorthand)
    fast = decide(fast_engine, message)
    reference = decide(reference_engine, message)
    assert fast == reference
    assert not fast.allowed and fast.http_status == 403, (shorthand, fast)
    assert fast.policy == policy, (shorthand, fast)


@settings(max_examples=150, deadline=None)
@given(
    path=st.sampled_from(SYSTEM_PATHS).flatmap(lambda p: _spelled(p, escapes=True)),
    prefix=st.sampled_from(
        ["file://", "FILE://", "file://localhost", "File://LocalHost", "file:", ""]
    ),
)
def test_no_spelling_of_a_system_file_is_readable_as_a_resource(path: str, prefix: str) -> None:
    if prefix == "file:" and path.startswith("//"):
        prefix = "file://"  # "file://" + "/etc": "file:" + "//etc" would name a host "etc"
    uri = prefix + path
    _denied_by(
        {"mcp": {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}},
        "resources-read",
    )


@settings(max_examples=150, deadline=None)
@given(
    path=st.sampled_from(SYSTEM_PATHS).flatmap(lambda p: _spelled(p, escapes=False)),
    tool=st.sampled_from(
        ["read_text_file", "list_directory", "get_file_info", "read_multiple_files"]
    ),
)
def test_no_spelling_of_a_system_path_is_readable_through_the_filesystem_tools(path, tool):
    arguments = (
        {"paths": ["/workspace/a", path]} if tool == "read_multiple_files" else {"path": path}
    )
    _denied_by({"tool": tool, "arguments": arguments}, "filesystem-paths")


def test_the_path_denial_also_wins_under_first_match() -> None:
    # filesystem-paths sorts before filesystem-read-only, whose allow would otherwise come first.
    engine = Engine(load_directory(POLICIES), EngineOptions(combine="first-match"))
    attack = {"tool": "read_text_file", "arguments": {"path": "/workspace/./../etc/passwd"}}
    decision = decide(engine, check_request_from_shorthand(attack))
    assert not decision.allowed and decision.policy == "filesystem-paths"
    benign = {"tool": "read_text_file", "arguments": {"path": "/workspace/notes.md"}}
    assert decide(engine, check_request_from_shorthand(benign)).allowed
