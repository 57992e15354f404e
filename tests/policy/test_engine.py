"""Evaluation semantics: Kyverno's (kyverno-semantics §1, §4.3-4.4) and the deliberate
differences of design.md."""

from __future__ import annotations

import json
import textwrap

import pytest

from authz_server.decision import AppendAction, DecidedBy
from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import NO_MESSAGE, Decoded, DecodeFailure, FailureReason
from authz_server.policy import Engine, EngineOptions, load_text
from authz_server.policy.engine import Combine, Default
from authz_server.policy.render import POLICY_DENIED, POLICY_ERROR
from authz_server.policy.testing import check_request_from_shorthand, decide
from tests.policy.conftest import ALLOW, DENY, policy_yaml, run, tool_call

ERROR = "json.Unmarshal('{') == null ? null : null"


def _engine(*documents: str, **options) -> Engine:
    return Engine(load_text("---\n".join(documents)), EngineOptions(**options))


# matchConditions x failurePolicy (the four upstream e2e cases)


@pytest.mark.parametrize(
    ("conditions", "failure", "allowed", "decided_by"),
    [
        (["true"], "Fail", False, DecidedBy.POLICY),  # matched: the policy denies
        (["false"], "Fail", True, DecidedBy.DEFAULT),  # not matched: default (allow here)
        (["1/0 == 1"], "Fail", False, DecidedBy.ERROR),  # error + Fail: explicit denial
        (["1/0 == 1"], "Ignore", True, DecidedBy.DEFAULT),  # error + Ignore: no decision
    ],
)
def test_match_conditions_and_failure_policy(conditions, failure, allowed, decided_by):
    engine = _engine(
        policy_yaml("p", [DENY], conditions=conditions, failure=failure),
        default_decision=Default.ALLOW,
    )
    decision = run(engine, {"tool": "x"})
    assert (decision.allowed, decision.decided_by) == (allowed, decided_by)


def test_a_false_condition_skips_even_when_another_errors():
    engine = _engine(
        policy_yaml("p", [DENY], conditions=["1/0 == 1", "false"]), default_decision=Default.ALLOW
    )
    assert run(engine, {"tool": "x"}).decided_by is DecidedBy.DEFAULT


def test_runtime_error_under_fail_is_an_explicit_denial_naming_the_policy():
    engine = _engine(policy_yaml("broken", [ERROR]))
    decision = run(engine, {"tool": "x"})
    assert not decision.allowed and decision.decided_by is DecidedBy.ERROR
    assert decision.policy == "broken"
    body = json.loads(decision.body)
    assert body["error"]["code"] == POLICY_ERROR
    assert "broken" in body["error"]["message"]
    assert "spec.validations[0].expression" in decision.reason


# variables


def test_unreferenced_erroring_variable_is_harmless():
    engine = _engine(policy_yaml("p", [ALLOW], variables={"bad": "json.Unmarshal('{')"}))
    assert run(engine, {"tool": "x"}).allowed


def test_variable_not_reached_is_harmless():
    validation = "false && variables.bad == 1 ? envoy.Denied(403).Response() : " + ALLOW
    engine = _engine(policy_yaml("p", [validation], variables={"bad": "int(json.Unmarshal('{'))"}))
    assert run(engine, {"tool": "x"}).allowed


def test_referenced_erroring_variable_is_the_policy_error_with_its_cause():
    engine = _engine(
        policy_yaml(
            "p",
            ["variables.bad == 1 ? envoy.Denied(403).Response() : null"],
            variables={"bad": "int(json.Unmarshal('{'))"},
        )
    )
    decision = run(engine, {"tool": "x"})
    assert decision.decided_by is DecidedBy.ERROR
    assert "variable 'bad'" in decision.reason and "json.Unmarshal" in decision.reason


def test_variables_chain_and_see_the_request():
    engine = _engine(
        policy_yaml(
            "p",
            ['variables.shout == "SEARCH" ? envoy.Denied(418).Response() : null'],
            variables={"tool": "mcp.ToolCall.Name", "shout": "variables.tool.upperAscii()"},
        )
    )
    assert run(engine, {"tool": "search"}).http_status == 418


# validations and ordering


def test_validations_in_order_first_non_null_wins():
    engine = _engine(
        policy_yaml("p", ["null", "envoy.Denied(401).Response()", "envoy.Denied(402).Response()"])
    )
    decision = run(engine, {"tool": "x"})
    assert (decision.http_status, decision.validation_index) == (401, 1)


def test_all_null_is_no_decision_and_default_deny_applies():
    engine = _engine(policy_yaml("p", ["null"]))
    decision = run(engine, {"tool": "x"})
    assert not decision.allowed and decision.decided_by is DecidedBy.DEFAULT
    assert json.loads(decision.body)["error"]["code"] == POLICY_DENIED


def test_default_allow_is_selectable():
    engine = _engine(policy_yaml("p", ["null"]), default_decision=Default.ALLOW)
    assert run(engine, {"tool": "x"}).allowed


def test_first_match_is_kyverno_order_by_name():
    documents = (policy_yaml("b-deny", [DENY]), policy_yaml("a-allow", [ALLOW]))
    assert run(_engine(*documents, combine=Combine.FIRST_MATCH), {"tool": "x"}).allowed


def test_first_match_an_earlier_error_wins():
    documents = (policy_yaml("a-broken", [ERROR]), policy_yaml("b-allow", [ALLOW]))
    decision = run(_engine(*documents, combine=Combine.FIRST_MATCH), {"tool": "x"})
    assert decision.decided_by is DecidedBy.ERROR


def test_deny_overrides_any_deny_wins():
    documents = (policy_yaml("b-deny", [DENY]), policy_yaml("a-allow", [ALLOW]))
    decision = run(_engine(*documents), {"tool": "x"})
    assert not decision.allowed and decision.policy == "b-deny"
    # The policy's own body reaches an MCP client as the message of a JSON-RPC error.
    assert json.loads(decision.body)["error"]["message"] == "denied"


def test_deny_overrides_merges_allow_mutations_in_name_order():
    documents = (
        policy_yaml("b", ['envoy.Allowed().WithHeader("x-b", "2").Response()']),
        policy_yaml(
            "a",
            ['envoy.Allowed().WithHeader("x-a", "1").Response().WithMetadata({"k": "a"})'],
        ),
    )
    decision = run(_engine(*documents), {"tool": "x"})
    assert decision.allowed
    assert [h.key for h in decision.headers] == ["x-a", "x-b"]
    assert decision.dynamic_metadata == {"k": "a"}


# exceptions


EXCEPTION = """\
apiVersion: policies.kyverno.io/v1
kind: PolicyException
metadata:
  name: trusted-agent
spec:
  policyRefs:
  - name: deny-all
    kind: ValidatingPolicy
  matchConditions:
  - name: trusted
    expression: variables.agent == "trusted"
"""


def test_exception_skips_the_policy_and_sees_its_variables():
    engine = _engine(
        policy_yaml(
            "deny-all",
            [DENY],
            variables={"agent": 'object.attributes.request.http.headers[?"x-agent"].orValue("")'},
        ),
        EXCEPTION,
        default_decision=Default.ALLOW,
    )
    trusted = run(engine, {"tool": "x", "headers": {"x-agent": "trusted"}})
    other = run(engine, {"tool": "x", "headers": {"x-agent": "other"}})
    assert trusted.allowed and trusted.decided_by is DecidedBy.DEFAULT
    assert not other.allowed and other.policy == "deny-all"


def test_exception_error_follows_the_failure_policy():
    exception = EXCEPTION.replace('variables.agent == "trusted"', "1/0 == 1")
    engine = _engine(policy_yaml("deny-all", [DENY]), exception)
    assert run(engine, {"tool": "x"}).decided_by is DecidedBy.ERROR


# audit (dry run)


def test_audit_policy_is_reported_never_enforced():
    engine = _engine(policy_yaml("audit", [DENY], actions=["Audit"]), policy_yaml("allow", [ALLOW]))
    decision = run(engine, {"tool": "x"})
    assert decision.allowed
    (dry,) = decision.dry_run
    assert (dry.policy, dry.allowed, dry.http_status) == ("audit", False, 403)


# no policies, decode failures, batches, non-MCP requests


def test_no_policies_denies():
    decision = decide(Engine(load_text("")), tool_call())
    assert not decision.allowed and decision.decided_by is DecidedBy.NO_POLICIES


def test_decode_failure_denies_before_policies():
    engine = _engine(policy_yaml("allow", [ALLOW]))
    decision = run(engine, {"body": '{"jsonrpc": "2.0", "id": 1, "method": '})
    assert not decision.allowed and decision.decided_by is DecidedBy.DECODE
    assert decision.reason == str(FailureReason.INVALID_JSON)
    assert decision.http_status == 400
    assert json.loads(decision.body)["error"]["code"] == -32700


def test_decode_failure_can_be_handed_to_policies():
    engine = _engine(
        policy_yaml("p", ['mcp.Method == "" ? envoy.Denied(451).Response() : null']),
        decode_failures_to_policies=True,
    )
    request = request_from_check(tool_call())
    failed = Decoded(failure=DecodeFailure(FailureReason.INVALID_JSON, "x"))
    assert engine.check(request, failed).http_status == 451


def _batch(*names: str):
    body = [
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": n, "arguments": {}}}
        for i, n in enumerate(names)
    ]
    return check_request_from_shorthand({"mcp": body})


def test_batch_elements_are_judged_one_by_one():
    engine = _engine(
        policy_yaml(
            "p",
            ['mcp.ToolCall.Name == "rm" ? envoy.Denied(403).Response() : ' + ALLOW],
            conditions=['mcp.Method == "tools/call"'],
        )
    )
    assert decide(engine, _batch("ls", "cat")).allowed
    denied = decide(engine, _batch("ls", "rm"))
    assert not denied.allowed
    errors = json.loads(denied.body)
    assert [e["id"] for e in errors] == [0, 1]


def test_request_without_mcp_message_binds_empty_method():
    engine = _engine(policy_yaml("p", ['mcp.Method == "" ? envoy.Denied(405).Response() : null']))
    decision = run(engine, {"method": "GET"})
    assert decision.http_status == 405
    assert decision.body.strip() and ("content-type", "text/plain") in [
        (h.key, h.value) for h in decision.headers
    ]


def test_skipped_policies_by_method_index_do_not_run():
    # The condition would error for any method other than tools/call if evaluated.
    engine = _engine(
        policy_yaml("p", [DENY], conditions=['mcp.Method == "tools/call"', "1/0 == 1"]),
        default_decision=Default.ALLOW,
    )
    assert run(engine, {"mcp": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}).allowed


def test_mcp_is_parsed_once_not_per_expression(monkeypatch):
    from authz_server.mcp import kyverno

    def refuse(*_args, **_kwargs):
        raise AssertionError("the engine must not parse the body again")

    monkeypatch.setattr(kyverno, "parse", refuse)
    engine = _engine(
        policy_yaml("p", ['mcp.ToolCall.Name == "x" ? envoy.Denied(403).Response() : null'])
    )
    assert run(engine, {"tool": "x"}).http_status == 403


def test_engine_never_raises(monkeypatch):
    engine = _engine(policy_yaml("p", [ALLOW]))
    decision = engine.check(object(), NO_MESSAGE)  # type: ignore[arg-type]
    assert not decision.allowed and decision.decided_by is DecidedBy.ERROR


# the same answer as Kyverno for a policy using optional syntax, builders, jwt and mcp.Parse

KYVERNO_POLICY = textwrap.dedent(
    """\
    apiVersion: policies.kyverno.io/v1alpha1
    kind: ValidatingPolicy
    metadata:
      name: kyverno-style
    spec:
      evaluation:
        mode: Envoy
      failurePolicy: Fail
      variables:
      - name: authorization
        expression: object.attributes.request.http.headers[?"authorization"].orValue("").split(" ")
      - name: token
        expression: >
          size(variables.authorization) == 2 && variables.authorization[0].lowerAscii() == "bearer"
            ? jwt.Decode(variables.authorization[1], "a-shared-secret-of-decent-length-32b")
            : null
      - name: request
        expression: mcp.Parse(object.attributes.request.http.body)
      validations:
      - expression: >
          variables.token == null || !variables.token.Valid
            ? envoy.Denied(401).WithHeader("www-authenticate", "Bearer").Response()
            : null
      - expression: >
          variables.request.Method == mcp.ToolsCallMethod &&
          variables.request.ToolCall.Name == "delete_repo"
            ? envoy.Denied(403).WithBody("forbidden tool").Response()
            : null
      - expression: >
          envoy.Allowed()
            .WithHeader("x-user", string(variables.token.Claims.sub))
            .WithoutHeader("authorization")
            .Response()
    """
)


def _bearer(claims: dict) -> str:
    import jwt

    return "Bearer " + jwt.encode(claims, "a-shared-secret-of-decent-length-32b", "HS256")


def test_kyverno_style_policy_gives_kyverno_answers():
    import time

    engine = _engine(KYVERNO_POLICY)
    good = _bearer({"sub": "alice", "exp": int(time.time()) + 60})
    expired = _bearer({"sub": "alice", "exp": int(time.time()) - 60})

    assert run(engine, {"tool": "search"}).http_status == 401
    assert run(engine, {"tool": "search", "headers": {"authorization": expired}}).http_status == 401
    forbidden = run(engine, {"tool": "delete_repo", "headers": {"authorization": good}})
    assert forbidden.http_status == 403
    assert json.loads(forbidden.body)["error"]["message"] == "forbidden tool"
    allowed = run(engine, {"tool": "search", "headers": {"authorization": good}})
    assert allowed.allowed
    assert [(h.key, h.value, h.action) for h in allowed.headers] == [
        ("x-user", "alice", AppendAction.OVERWRITE_IF_EXISTS_OR_ADD)
    ]
    assert allowed.headers_to_remove == ("authorization",)
