"""The policy test runner behind ``authz-server test``."""

from __future__ import annotations

import io
import json
import textwrap

import pytest

from authz_server.policy.testing import run_tests
from tests.policy.conftest import policy_yaml

POLICY = policy_yaml(
    "github-no-merge",
    [
        'mcp.ToolCall.Name == "merge_pull_request" ? '
        'envoy.Denied(403).WithBody("merging is reserved for humans").Response() : '
        "envoy.Allowed().Response()"
    ],
    conditions=['mcp.Method == "tools/call"'],
)

TESTS = textwrap.dedent(
    """\
    apiVersion: authz-server/v1alpha1
    kind: PolicyTest
    metadata:
      name: github
    spec:
      cases:
      - name: merging is refused
        request: {tool: merge_pull_request, arguments: {owner: octo}}
        expect: {decision: deny, status: 403, bodyContains: reserved, policy: github-no-merge}
      - name: reading is fine
        request: {tool: get_file}
        expect: {decision: allow}
      - name: listing has no policy, default deny
        request:
          mcp: {jsonrpc: "2.0", id: 1, method: tools/list}
        expect:
          decision: deny
          headers: {content-type: application/json}
      - name: proto-JSON request
        checkRequest: %s
        expect: {decision: deny}
    """
)


def _check_request() -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "merge_pull_request"},
    }
    return json.dumps(
        {
            "attributes": {
                "request": {
                    "http": {
                        "method": "POST",
                        "path": "/mcp",
                        "headers": {"content-type": "application/json", ":method": "POST"},
                        "body": json.dumps(body),
                    }
                }
            }
        }
    )


def test_passing_suite(tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "policy_test.yaml").write_text(TESTS % _check_request())
    out = io.StringIO()
    assert run_tests(tmp_path, out) == 0, out.getvalue()
    assert "4 passed, 0 failed" in out.getvalue()


def test_failing_case_is_reported(tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "policy_test.yaml").write_text(
        (TESTS % _check_request()).replace("expect: {decision: allow}", "expect: {decision: deny}")
    )
    out = io.StringIO()
    assert run_tests(tmp_path, out) == 1
    assert "FAIL github / reading is fine" in out.getvalue()
    assert "expected deny, got allow" in out.getvalue()


def test_broken_policies_are_an_error(tmp_path):
    (tmp_path / "policy.yaml").write_text(POLICY.replace("mcp.ToolCall.Name", "mcp.ToolCall.name"))
    (tmp_path / "policy_test.yaml").write_text(TESTS % _check_request())
    out = io.StringIO()
    assert run_tests(tmp_path, out) == 2
    assert "has no field 'name'" in out.getvalue()


def test_no_tests_found(tmp_path):
    out = io.StringIO()
    assert run_tests(tmp_path, out) == 2


CASE = """\
      - name: merging is refused
        request: {tool: merge_pull_request}
        expect: {decision: deny}
"""
GOOD = (
    "apiVersion: authz-server/v1alpha1\nkind: PolicyTest\nmetadata:\n  name: ok\n"
    f"spec:\n  policies: ../policies\n  cases:\n{CASE}"
)

# Each a test file that cannot run as written: the run must fail and name the file, whatever
# the other (good) test file next to it does.
BROKEN = {
    "invalid YAML": "apiVersion: authz-server/v1alpha1\nkind: PolicyTest\nspec: [unclosed\n",
    "not UTF-8": b"kind: PolicyTest\nmetadata: {name: \xff}\n",
    "unknown top-level field": GOOD + "extra: 1\n",
    "unknown spec field": GOOD.replace("  cases:", "  policy: .\n  cases:"),
    "misspelt cases": GOOD.replace("  cases:", "  case:"),
    "unknown option": GOOD.replace("spec:\n", "spec:\n  options: {defaultDecison: allow}\n"),
    "no cases": GOOD.split("  cases:")[0] + "  cases: []\n",
    "cases not a list": GOOD.split("  cases:")[0] + "  cases: {name: x}\n",
    "a case not a mapping": GOOD.split("  cases:")[0] + "  cases: [just a string]\n",
    "spec not a mapping": GOOD.split("spec:")[0] + "spec: cases\n",
    "unknown apiVersion": GOOD.replace("authz-server/v1alpha1", "authz-server/v2"),
    "policies path missing": GOOD.replace("../policies", "../nowhere"),
    "policies path without policies": GOOD.replace("../policies", "../empty"),
}


def _suite(root):
    """Policies in ``policies/``, tests in ``tests/`` (as the examples are laid out)."""
    (root / "policies").mkdir()
    (root / "policies" / "policy.yaml").write_text(POLICY)
    (root / "empty").mkdir()
    (root / "tests").mkdir()
    (root / "tests" / "good_test.yaml").write_text(GOOD)
    return root / "tests"


@pytest.mark.parametrize("content", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_test_file_fails_the_run_and_is_named(tmp_path, content):
    tests = _suite(tmp_path)
    broken = tests / "broken_test.yaml"
    if isinstance(content, bytes):
        broken.write_bytes(content)
    else:
        broken.write_text(content)
    out = io.StringIO()
    assert run_tests(tests, out) == 2, out.getvalue()
    errors = [line for line in out.getvalue().splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR {broken}: "), out.getvalue()
    assert "PASS ok / merging is refused" in out.getvalue()


def test_the_good_test_file_alone_passes(tmp_path):
    # Control for the test above: the same suite without the broken file.
    out = io.StringIO()
    assert run_tests(_suite(tmp_path), out) == 0, out.getvalue()
    assert "1 passed, 0 failed" in out.getvalue()


# A policy that asks for approval of merges and denies deletions with a body that merely says
# "approval required": expect.approval must tell the two apart.
APPROVAL_POLICY = policy_yaml(
    "merge-needs-a-person",
    [
        'mcp.ToolCall.Name == "merge_pull_request" ? approval.Require("a maintainer decides") : '
        'mcp.ToolCall.Name == "delete_file" ? '
        'envoy.Denied(403).WithBody("approval required: never").Response() : ' + "null"
    ],
    conditions=['mcp.Method == "tools/call"'],
)


def _approval_suite(tmp_path, merge_expect: str, delete_expect: str):
    (tmp_path / "policy.yaml").write_text(APPROVAL_POLICY)
    (tmp_path / "policy_test.yaml").write_text(
        "apiVersion: authz-server/v1alpha1\nkind: PolicyTest\nmetadata: {name: approvals}\n"
        "spec:\n  cases:\n"
        "  - name: merge\n    request: {tool: merge_pull_request}\n"
        f"    expect: {merge_expect}\n"
        "  - name: delete\n    request: {tool: delete_file}\n"
        f"    expect: {delete_expect}\n"
    )
    out = io.StringIO()
    return run_tests(tmp_path, out), out.getvalue()


def test_expect_approval_tells_an_approval_from_a_denial_that_says_so(tmp_path):
    status, out = _approval_suite(
        tmp_path,
        "{decision: deny, status: 403, approval: a maintainer decides, "
        "bodyContains: 'approval required: a maintainer decides'}",
        "{decision: deny, approval: false, bodyContains: 'approval required'}",
    )
    assert status == 0, out
    assert "2 passed, 0 failed" in out


@pytest.mark.parametrize(
    ("merge", "delete", "problem"),
    [
        ("{decision: deny, approval: false}", "{decision: deny}", "approval: expected none, got"),
        ("{decision: deny}", "{decision: deny, approval: true}", "expected approval.Require, got"),
        (
            "{decision: deny, approval: someone else decides}",
            "{decision: deny}",
            "expected reason 'someone else decides', got 'a maintainer decides'",
        ),
    ],
    ids=["not-an-approval", "a-denial-is-not-one", "another-reason"],
)
def test_a_wrong_approval_expectation_fails_the_case(tmp_path, merge, delete, problem):
    status, out = _approval_suite(tmp_path, merge, delete)
    assert status == 1, out
    assert problem in out


def test_an_approval_expectation_of_another_type_is_an_invalid_case(tmp_path):
    status, out = _approval_suite(tmp_path, "{decision: deny, approval: 1}", "{decision: deny}")
    assert status == 1, out
    assert "invalid case: expect.approval must be true, false or the approval's reason" in out
