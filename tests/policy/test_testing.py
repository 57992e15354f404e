"""The policy test runner behind ``authz-server test``."""

from __future__ import annotations

import io
import json
import textwrap

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
