"""Loading: accepted documents, every rejection with its position, directory layouts."""

from __future__ import annotations

import os
import textwrap

import pytest

from authz_server.policy import PolicyLoadError, load_directory, load_text
from authz_server.policy.model import FailurePolicy
from tests.policy.conftest import ALLOW, policy_yaml


def _issues(text: str) -> list:
    with pytest.raises(PolicyLoadError) as caught:
        load_text(textwrap.dedent(text), "p.yaml")
    return list(caught.value.issues)


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha1"])
def test_accepts_every_supported_version(version):
    text = policy_yaml("p", [ALLOW]).replace(
        "policies.kyverno.io/v1", f"policies.kyverno.io/{version}"
    )
    (policy,) = load_text(text).policies
    assert policy.name == "p" and policy.failure_policy is FailurePolicy.FAIL


def test_typo_in_a_block_scalar_is_reported_at_its_file_position():
    issues = _issues(
        """\
        apiVersion: policies.kyverno.io/v1
        kind: ValidatingPolicy
        metadata:
          name: typo
        spec:
          evaluation:
            mode: Envoy
          validations:
          - expression: >
              mcp.Method == "tools/call" &&
              mcp.ToolCall.Nme == "x" ? envoy.Denied(403).Response() : null
        """
    )
    (issue,) = issues
    assert issue.policy == "typo"
    assert issue.field == "spec.validations[0].expression"
    assert (issue.line, issue.column) == (11, 19)
    assert "Nme" in issue.message
    assert "p.yaml:11:19" in issue.format()


def test_typo_in_a_plain_scalar_is_reported_at_its_file_position():
    issue = _issues(policy_yaml("p", ["envoy.Alowed().Response()"]))[-1]
    assert "Alowed" in issue.message
    # line 9 is `  - expression: "envoy.Alowed()..."`; the opening quote shifts the column by one
    assert issue.line == 9
    assert issue.column == len('  - expression: "') + issue.expression_column


def test_every_problem_is_reported_at_once():
    text = policy_yaml("a", ["1 +"]) + "---\n" + policy_yaml("b", ["nope"])
    issues = _issues(text)
    assert {i.policy for i in issues} == {"a", "b"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("mode: Envoy", "mode: Kubernetes"), "is 'Kubernetes'; this server evaluates mode"),
        (("    mode: Envoy\n", ""), "absent (Kubernetes)"),
        (("kind: ValidatingPolicy", "kind: ClusterPolicy"), "unsupported kind"),
        (("policies.kyverno.io/v1", "kyverno.io/v1"), "unsupported apiVersion"),
        (("  validations:", "  validatoins:"), "unknown field 'validatoins'"),
        (("  evaluation:", "  failurePolicy: Sometimes\n  evaluation:"), "failurePolicy"),
        (("name: p", "name: Not_A_Name"), "invalid or missing name"),
    ],
)
def test_rejections(change, message):
    text = policy_yaml("p", [ALLOW]).replace(*change)
    assert any(message in i.message for i in _issues(text))


def test_duplicate_names_are_rejected():
    issues = _issues(policy_yaml("p", [ALLOW]) + "---\n" + policy_yaml("p", [ALLOW]))
    assert "duplicate ValidatingPolicy name 'p'" in issues[0].message


def test_validation_must_return_a_response_or_null():
    (issue,) = _issues(policy_yaml("p", ["true"]))
    assert "CheckResponse or null" in issue.message


def test_match_condition_must_be_bool():
    (issue,) = _issues(policy_yaml("p", [ALLOW], conditions=["mcp.Method"]))
    assert "must evaluate to bool" in issue.message


def test_match_conditions_cannot_see_variables():
    (issue,) = _issues(
        policy_yaml("p", [ALLOW], conditions=["variables.x"], variables={"x": "true"})
    )
    assert issue.field == "spec.matchConditions[0].expression"


def test_variables_see_only_earlier_variables_and_are_typed():
    issues = _issues(policy_yaml("p", [ALLOW], variables={"a": "variables.b", "b": "1"}))
    assert "variables.b" in issues[0].message
    # typed: an int variable cannot be compared with a string
    (issue,) = _issues(
        policy_yaml(
            "p", ['variables.n == "1" ? envoy.Allowed().Response() : null'], variables={"n": "1"}
        )
    )
    assert issue.field == "spec.validations[0].expression"


def test_yaml_syntax_errors_have_a_position():
    (issue,) = _issues("a: [\n")
    assert issue.line >= 1 and "invalid YAML" in issue.message


def test_duplicate_yaml_keys_are_rejected():
    text = policy_yaml("p", [ALLOW]).replace(
        "spec:\n", "spec:\n  failurePolicy: Fail\n  failurePolicy: Ignore\n"
    )
    assert any("duplicate key 'failurePolicy'" in i.message for i in _issues(text))


def test_exception_referencing_an_unknown_policy_is_rejected():
    exception = """\
    apiVersion: policies.kyverno.io/v1
    kind: PolicyException
    metadata:
      name: e
    spec:
      policyRefs:
      - name: missing
        kind: ValidatingPolicy
    """
    issues = _issues(policy_yaml("p", [ALLOW]) + "---\n" + textwrap.dedent(exception))
    assert "unknown policy 'missing'" in issues[0].message


def test_kubernetes_admission_fields_are_accepted_and_ignored():
    text = policy_yaml("p", [ALLOW]).replace(
        "spec:\n",
        "spec:\n  matchConstraints: {resourceRules: []}\n"
        "  webhookConfiguration: {timeoutSeconds: 3}\n",
    )
    assert len(load_text(text)) == 1


def test_policy_test_documents_are_skipped():
    text = policy_yaml("p", [ALLOW]) + "---\nkind: PolicyTest\napiVersion: authz-server/v1alpha1\n"
    assert [p.name for p in load_text(text).policies] == ["p"]


def test_directory_recursive_sorted_and_hidden_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.yml").write_text(policy_yaml("zeta", [ALLOW]))
    (tmp_path / "one.yaml").write_text(
        policy_yaml("alpha", [ALLOW]) + "---\n" + policy_yaml("mid", [ALLOW])
    )
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text("not: [valid")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in load_directory(tmp_path).policies] == ["alpha", "mid", "zeta"]


def test_configmap_layout_reads_each_file_once(tmp_path):
    version = tmp_path / "..2026_01_01_00_00_00.1"
    version.mkdir()
    (version / "a.yaml").write_text(policy_yaml("a", [ALLOW]))
    os.symlink(version.name, tmp_path / "..data")
    os.symlink("..data/a.yaml", tmp_path / "a.yaml")
    policies = load_directory(tmp_path)
    assert [p.name for p in policies.policies] == ["a"]


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(PolicyLoadError, match="no such file"):
        load_directory(tmp_path / "absent")


def test_audit_action_and_method_index():
    text = policy_yaml("p", [ALLOW], conditions=['mcp.Method == "tools/call"'], actions=["Audit"])
    (policy,) = load_text(text).policies
    assert policy.audit is True
    assert policy.methods == frozenset({"tools/call"})


def test_example_policies_load():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "policies")
    if not os.path.isdir(root):
        pytest.skip("no example policies in this checkout")
    assert len(load_directory(root)) > 0
