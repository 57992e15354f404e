"""HTTP-mode ValidatingPolicies: loading them beside Envoy-mode ones, Kyverno's ``object`` and
``http`` library, and what the engine answers.

Requests are built by the HTTP authorizer's own adapter from the request as a gateway sends it,
so these tests read ``object`` exactly as a served policy does.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authz_server.commands import validate
from authz_server.decision import DecidedBy, Decision
from authz_server.httpauthz import HttpRequest, request_from_http
from authz_server.mcp import decode
from authz_server.policy import PolicyLoadError, load_directory, load_text
from authz_server.policy.engine import Default, Engine, EngineOptions
from authz_server.policy.model import PolicySet
from tests.policy.conftest import ALLOW, DENY, policy_yaml

HTTP_ALLOW = "http.Allowed().Response()"


def http_policy(name: str, validations: list[str], **kwargs: Any) -> str:
    return policy_yaml(name, validations, mode="HTTP", **kwargs)


def judge(
    policies: PolicySet,
    method: str = "GET",
    target: str = "/get",
    headers: tuple[tuple[str, str], ...] = (("Host", "http-srv.app"),),
    body: bytes = b"",
    **options: Any,
) -> Decision:
    request = request_from_http(HttpRequest(method, target, "1.1", headers, body))
    engine = Engine(policies.http_set, EngineOptions(**options), mode="HTTP")
    return engine.check(request, decode(request.body, request.headers, method=request.method))


def _issues(text: str) -> list[Any]:
    with pytest.raises(PolicyLoadError) as caught:
        load_text(textwrap.dedent(text), "p.yaml")
    return list(caught.value.issues)


# -- Loading --------------------------------------------------------------------------------------


def test_a_directory_of_both_modes_loads_each_mode_apart(tmp_path: Path) -> None:
    (tmp_path / "envoy.yaml").write_text(policy_yaml("envoy-allow", [ALLOW]))
    (tmp_path / "http.yaml").write_text(
        http_policy("http-deny", ['http.Denied("not allowed").Response()'])
    )
    policies = load_directory(tmp_path)
    assert [p.name for p in policies.policies] == ["envoy-allow"]
    assert [p.name for p in policies.http_set.policies] == ["http-deny"]
    assert len(policies) == 2
    out, err = _Buffer(), _Buffer()
    assert validate(tmp_path, out, err) == 0
    assert out.text.splitlines()[1:] == ["  envoy-allow", "  http-deny (HTTP mode)"]


def test_a_directory_of_only_http_mode_policies_is_a_set_to_serve(tmp_path: Path) -> None:
    from authz_server.policy.store import PolicyStore

    (tmp_path / "http.yaml").write_text(http_policy("h", [HTTP_ALLOW]))
    store = PolicyStore(tmp_path)
    assert store.reload(), store.status.last_error
    assert store.status.ready and store.status.policy_count == 1


@pytest.mark.parametrize("mode", ["Kubernetes", "GRPC", "http"])
def test_an_unknown_mode_is_a_load_error_at_its_line(mode: str) -> None:
    (issue,) = _issues(policy_yaml("p", [ALLOW]).replace("mode: Envoy", f"mode: {mode}"))
    assert issue.file == "p.yaml" and (issue.line, issue.column) == (7, 11)
    assert f"spec.evaluation.mode is {mode!r}" in issue.message
    assert "p.yaml:7:11" in issue.format()


def test_the_same_name_in_both_modes_is_a_duplicate() -> None:
    text = policy_yaml("p", [ALLOW]) + "---\n" + http_policy("p", [HTTP_ALLOW])
    (issue,) = _issues(text)
    assert "duplicate ValidatingPolicy name 'p'" in issue.message


EXCEPTION = """\
apiVersion: policies.kyverno.io/v1alpha1
kind: PolicyException
metadata:
  name: gateway-polex
spec:
  evaluationMode: {mode}
  policyRefs:
  - name: policy
    kind: ValidatingPolicy
  matchConditions:
  - name: check
    expression: {expression}
"""


def test_an_exception_of_the_other_mode_is_a_load_error() -> None:
    text = (
        http_policy("policy", ['http.Denied("not allowed").Response()'])
        + "---\n"
        + EXCEPTION.format(mode="Envoy", expression="'true'")
    )
    (issue,) = _issues(text)
    assert issue.policy == "gateway-polex" and issue.field == "spec.evaluationMode"
    assert "evaluationMode 'Envoy' but policy 'policy' is of mode 'HTTP'" in issue.message


def test_an_exception_condition_is_compiled_in_its_policys_mode() -> None:
    # `object.attributes.header` exists only on Kyverno's HTTP request.
    text = (
        policy_yaml("policy", [DENY])
        + "---\n"
        + EXCEPTION.format(mode="Envoy", expression='\'object.attributes.header["X"][0] == "y"\'')
    )
    (issue,) = _issues(text)
    assert issue.policy == "policy" and "header" in issue.message


@pytest.mark.parametrize(
    ("mode", "expression", "says"),
    [
        ("Envoy", "true", "but this one evaluates to bool"),
        ("Envoy", "'allow'", "but this one evaluates to string"),
        ("HTTP", "[1, 2]", "but this one evaluates to list(int)"),
        ("HTTP", "http.Allowed()", "but this one evaluates to http.CheckResponseOk"),
        (
            "HTTP",
            "envoy.service.auth.v3.CheckResponse{}",
            "the response of mode Envoy: set spec.evaluation.mode to 'Envoy'",
        ),
        ("Envoy", "http.CheckResponse{}", "set spec.evaluation.mode to 'HTTP'"),
    ],
)
def test_a_validation_that_is_not_a_response_is_refused_naming_its_type(
    mode: str, expression: str, says: str
) -> None:
    (issue,) = _issues(policy_yaml("p", [expression], mode=mode))
    assert issue.field == "spec.validations[0].expression"
    expected = "envoy.service.auth.v3.CheckResponse" if mode == "Envoy" else "http.CheckResponse"
    assert f"a validation must evaluate to {expected} or null" in issue.message
    assert says in issue.message


def test_each_mode_has_its_own_library() -> None:
    issues = _issues(http_policy("p", [ALLOW]))
    assert any("undeclared reference to 'envoy'" in i.message for i in issues)
    issues = _issues(policy_yaml("p", [HTTP_ALLOW]))
    assert any("undeclared reference to 'http'" in i.message for i in issues)


def test_a_dyn_validation_that_is_not_a_response_fails_at_run_time_naming_its_type() -> None:
    policies = load_text(
        http_policy("p", ["variables.v"], variables={"v": "dyn('a string')"}, failure="Fail")
    )
    decision = judge(policies)
    assert decision.decided_by is DecidedBy.ERROR
    assert "type error (not a response: string)" in decision.reason


# -- Kyverno's object and http library ----------------------------------------------------------

KYVERNO_REQUEST = (
    ("Host", "http-srv.app"),
    ("Foo", "bar"),
    ("foo", "baz"),
    ("X-Gateway", "trusted"),
    ("User-Agent", "curl/8"),
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('"bar" in object.attributes.Header("foo")', True),
        ('"baz" in object.attributes.Header("FOO")', True),
        ('object.attributes.Header("foo")', ["bar", "baz"]),
        ('object.attributes.Header("x-" + "gateway")', ["trusted"]),
        ('object.attributes.Header("missing")', []),
        ('object.attributes.header["X-Gateway"][0] == "trusted"', True),
        ('"x-gateway" in object.attributes.header', False),
        ('"Host" in object.attributes.header', False),
        ('object.attributes.QueryParam("q")', ["a b", ""]),
        ('object.attributes.QueryParam("Q")', []),
        ("object.attributes.query", {"q": ["a b", ""], "n": ["1"]}),
        ("object.attributes.host", "http-srv.app"),
        ("object.attributes.path", "/get/a b"),
        ("object.attributes.method", "GET"),
        ("object.attributes.protocol", "HTTP/1.1"),
        ("object.attributes.contentLength", 0),
        ("object.attributes.body", b""),
        ("object.attributes.scheme", ""),
    ],
)
def test_object_reads_as_kyvernos_http_request(expression: str, expected: Any) -> None:
    policies = load_text(
        http_policy(
            "p",
            ["variables.seen == variables.want ? http.Allowed().Response() : null"],
            variables={"seen": expression, "want": json_cel(expected)},
        )
    )
    decision = judge(policies, target="/get/a%20b?q=a+b&n=1&q=", headers=KYVERNO_REQUEST)
    assert decision.allowed, decision.reason


def json_cel(value: Any) -> str:
    if isinstance(value, bytes):
        return "b" + json.dumps(value.decode())
    return json.dumps(value)


def test_the_body_and_its_length_are_the_bytes_received() -> None:
    policies = load_text(
        http_policy(
            "p",
            [
                "object.attributes.contentLength == 5 && object.attributes.body == b'hello'"
                ' ? http.Allowed().Response() : http.Denied("no").Response()'
            ],
        )
    )
    headers = (("Host", "h"), ("Content-Type", "text/plain"))
    sent = {"method": "PUT", "target": "/x", "headers": headers, "body": b"hello"}
    assert judge(policies, **sent, decode_failures_to_policies=True).allowed
    # By default a body a server might read as MCP is held to JSON-RPC before any policy.
    refused = judge(policies, **sent)
    assert (refused.decided_by, refused.http_status) == (DecidedBy.DECODE, 400)


def test_allow_and_deny_with_reason() -> None:
    policies = load_text(
        http_policy(
            "policy",
            [
                '"bar" in object.attributes.Header("foo") ? http.Allowed().Response()'
                ' : http.Denied("not allowed").Response()'
            ],
            conditions=['object.attributes.path.startsWith("/get")'],
        )
    )
    allowed = judge(policies, headers=(("Host", "h"), ("Foo", "bar")))
    assert allowed.allowed and allowed.policy == "policy"
    denied = judge(policies, headers=(("Host", "h"), ("Foo", "qux")))
    assert (denied.allowed, denied.http_status, denied.body) == (False, 403, "not allowed")
    assert denied.reason == "not allowed"


def test_no_decision_gives_the_configured_default() -> None:
    policies = load_text(
        http_policy(
            "host-match",
            ['http.Denied("not allowed").Response()'],
            conditions=['object.attributes.host == "http-srv.app"'],
        )
    )
    other = (("Host", "http-srv.app.svc.cluster.local"),)
    assert judge(policies, headers=other, default_decision=Default.ALLOW).allowed
    refused = judge(policies, headers=other)
    assert refused.decided_by is DecidedBy.DEFAULT and refused.http_status == 403
    assert not judge(policies, default_decision=Default.ALLOW).allowed


def test_an_exception_with_evaluation_mode_http_skips_its_policy() -> None:
    text = (
        http_policy("policy", ['http.Denied("not allowed").Response()'])
        + "---\n"
        + EXCEPTION.format(
            mode="HTTP", expression="""'object.attributes.header["X-Gateway"][0] == "trusted"'"""
        )
    )
    policies = load_text(text)
    trusted = (("Host", "h"), ("X-Gateway", "trusted"))
    untrusted = (("Host", "h"), ("X-Gateway", "untrusted"))
    assert judge(policies, headers=trusted, default_decision=Default.ALLOW).allowed
    assert not judge(policies, headers=untrusted, default_decision=Default.ALLOW).allowed


def test_an_error_denies_under_fail_and_is_no_answer_under_ignore() -> None:
    failing = 'object.attributes.Header("missing")[0] == "x" ? ' + HTTP_ALLOW + " : null"
    fail = judge(load_text(http_policy("p", [failing])), default_decision=Default.ALLOW)
    assert (fail.allowed, fail.decided_by, fail.http_status) == (False, DecidedBy.ERROR, 403)
    assert "policy 'p' failed at spec.validations[0].expression" in fail.reason
    ignore = load_text(http_policy("p", [failing], failure="Ignore"))
    assert judge(ignore, default_decision=Default.ALLOW).decided_by is DecidedBy.DEFAULT


def test_an_mcp_aware_http_policy_sees_mcp_and_identity() -> None:
    policies = load_text(
        http_policy(
            "tools",
            [
                'mcp.ToolCall.Name == "delete_repo" && !identity.Authenticated'
                ' ? http.Denied("deleting repositories needs a verified agent").Response()'
                " : " + HTTP_ALLOW
            ],
            conditions=["mcp.Method == mcp.ToolsCallMethod"],
        )
    )
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "delete_repo"}}
    ).encode()
    headers = (("Host", "mcp.example"), ("Content-Type", "application/json"))
    denied = judge(policies, method="POST", target="/mcp", headers=headers, body=body)
    assert denied.http_status == 403
    assert json.loads(denied.body) == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": -31403, "message": "deleting repositories needs a verified agent"},
    }


def test_approval_require_answers_an_http_response() -> None:
    policies = load_text(http_policy("p", ['approval.Require("a person must look")']))
    decision = judge(policies)
    assert decision.approval == "a person must look" and not decision.allowed


def test_a_response_with_both_ok_and_denied_denies() -> None:
    both = "http.CheckResponse{ok: http.CheckResponseOk{}, denied: http.CheckResponseDenied{}}"
    assert not judge(load_text(http_policy("p", [both]))).allowed
    assert not judge(load_text(http_policy("p", ["http.CheckResponse{}"]))).allowed


def test_header_lookups_do_not_pass_the_request_into_python() -> None:
    """cel-expr-python 0.1.3 keeps every argument of a call into Python; Header's receiver is
    the whole request. The rewrite keeps a body of 1 MiB from being kept per evaluation."""
    policies = load_text(
        http_policy(
            "p",
            [
                '"bar" in object.attributes.Header("foo") && object.attributes.QueryParam("q")'
                ' == ["1"] ? http.Allowed().Response() : http.Denied("no").Response()'
            ],
        )
    )
    body = b"x" * (1 << 20)
    request = request_from_http(
        HttpRequest("PUT", "/put?q=1", "1.1", (("Host", "h"), ("Foo", "bar")), body)
    )
    engine = Engine(policies.http_set, mode="HTTP")
    decoded = decode(b"", {})
    before = _resident_mib()
    for _ in range(60):
        assert engine.check(request, decoded).allowed
    assert _resident_mib() - before < 20


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


class _Buffer:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)


def test_without_http_mode_policies_the_http_authorizer_cannot_decide() -> None:
    policies = load_text(policy_yaml("envoy-only", [ALLOW]))
    decision = judge(policies, default_decision=Default.ALLOW)
    assert (decision.allowed, decision.http_status) == (False, 503)
    assert decision.decided_by is DecidedBy.NO_POLICIES
    assert decision.reason == "no HTTP-mode policies are loaded"
