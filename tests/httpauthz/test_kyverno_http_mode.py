"""Kyverno's documented HTTP-mode behaviour, answered by a real ``serve`` process's HTTP
authorizer: allow, deny with the reason as the body, header membership, query parameters, host
match conditions, a PolicyException with ``evaluationMode: HTTP``, a policy error, the default
output, and nested requests (``--http-authz-nested-request``).

The server runs with Kyverno's combination (``--combine first-match --default-decision allow``)
so that "no policy decided" answers 200 as Kyverno's does; each policy matches its own path, as
each of Kyverno's end-to-end cases runs with its policy alone. The same directory holds an
Envoy-mode policy that denies everything: the HTTP authorizer never asks it, gRPC Check always
does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.policy.testing import check_request_from_shorthand
from tests.httpauthz.client import send
from tests.serving import ServerProcess, start_server, stop_server


def _policy(name: str, path: str, validation: str, extra: str = "", failure: str = "") -> str:
    return f"""\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: {name}
spec:
  evaluation:
    mode: HTTP
{failure}  matchConditions:
  - name: path
    expression: object.attributes.path.startsWith("{path}")
{extra}  validations:
  - expression: >
      {validation}
"""


POLICIES = "---\n".join(
    [
        _policy("allow", "/allow", "http.Allowed().Response()"),
        _policy("deny", "/deny", 'http.Denied("not allowed").Response()'),
        _policy(
            "headers",
            "/headers",
            '"bar" in object.attributes.Header("foo") ? http.Allowed().Response()'
            ' : http.Denied("not allowed").Response()',
        ),
        _policy(
            "query-params",
            "/query",
            '"bar" in object.attributes.QueryParam("foo") ? http.Allowed().Response()'
            ' : http.Denied("not allowed").Response()',
        ),
        _policy(
            "host-match",
            "/host",
            'http.Denied("not allowed").Response()',
            extra='  - name: host\n    expression: object.attributes.host == "http-srv.app"\n',
        ),
        _policy("guarded", "/exception", 'http.Denied("not allowed").Response()'),
        _policy(
            "erroring",
            "/error",
            'object.attributes.Header("x-missing")[0] == "x" ? http.Allowed().Response() : null',
            failure="  failurePolicy: Fail\n",
        ),
        """\
apiVersion: policies.kyverno.io/v1alpha1
kind: PolicyException
metadata:
  name: gateway-polex
spec:
  evaluationMode: HTTP
  policyRefs:
  - name: guarded
    kind: ValidatingPolicy
  matchConditions:
  - name: trusted-gateway
    expression: 'object.attributes.header["X-Gateway"][0] == "trusted"'
""",
        """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: envoy-deny-everything
spec:
  evaluation:
    mode: Envoy
  validations:
  - expression: envoy.Denied(403).WithBody("the Envoy-mode policy answered").Response()
""",
    ]
)

KYVERNO = ("--combine", "first-match", "--default-decision", "allow")


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kyverno-http")
    (directory / "policies.yaml").write_text(POLICIES)
    return directory


@pytest.fixture(scope="module")
def server(policies: Path) -> Iterator[ServerProcess]:
    served = start_server(policies, *KYVERNO)
    yield served
    stop_server(served)


@pytest.fixture(scope="module")
def nested(policies: Path) -> Iterator[ServerProcess]:
    served = start_server(policies, *KYVERNO, "--http-authz-nested-request")
    yield served
    stop_server(served)


def _get(server: ServerProcess, target: str, *headers: tuple[str, str], host: str = "http-srv.app"):
    return send(server.http_authz_port, "GET", target, (("Host", host), *headers))


def test_allow(server: ServerProcess) -> None:
    answer = _get(server, "/allow")
    assert (answer.status, answer.body) == (200, b"")


def test_deny_with_the_reason_as_the_body(server: ServerProcess) -> None:
    answer = _get(server, "/deny")
    assert (answer.status, answer.text) == (403, "not allowed")


def test_header_membership(server: ServerProcess) -> None:
    assert _get(server, "/headers/get", ("Foo", "bar")).status == 200
    assert _get(server, "/headers/get", ("foo", "baz"), ("FOO", "bar")).status == 200
    refused = _get(server, "/headers/get", ("Foo", "baz"))
    assert (refused.status, refused.text) == (403, "not allowed")
    assert _get(server, "/headers/get").status == 403


def test_query_parameters(server: ServerProcess) -> None:
    assert _get(server, "/query?foo=bar").status == 200
    assert _get(server, "/query?foo=baz&foo=bar").status == 200
    assert _get(server, "/query?Foo=bar").status == 403  # names are case-sensitive
    assert _get(server, "/query").status == 403


def test_host_match_conditions(server: ServerProcess) -> None:
    assert _get(server, "/host", host="http-srv.app").status == 403
    # Another host: the policy does not apply, and no decision is Kyverno's 200.
    assert _get(server, "/host", host="http-srv.app.svc.cluster.local").status == 200


def test_a_policy_exception_with_evaluation_mode_http(server: ServerProcess) -> None:
    assert _get(server, "/exception", ("X-Gateway", "untrusted")).status == 403
    assert _get(server, "/exception", ("X-Gateway", "trusted")).status == 200


def test_a_policy_error_under_fail_is_an_explicit_denial(server: ServerProcess) -> None:
    answer = _get(server, "/error")
    assert answer.status == 403
    assert "policy 'erroring' failed at spec.validations[0].expression" in answer.text


def test_the_default_output_when_no_policy_decides(server: ServerProcess, policies: Path) -> None:
    assert _get(server, "/unmatched").status == 200
    strict = start_server(policies)  # this server's own default: deny
    try:
        answer = _get(strict, "/unmatched")
        assert answer.status == 403
        assert answer.text == "no policy allowed the request (default deny)\n"
    finally:
        stop_server(strict)


def test_any_method_and_path_is_judged(server: ServerProcess) -> None:
    for method in ("GET", "DELETE", "OPTIONS", "HEAD"):
        assert send(server.http_authz_port, method, "/deny/x", (("Host", "h"),)).status == 403
        assert send(server.http_authz_port, method, "/allow/x", (("Host", "h"),)).status == 200


def test_grpc_check_is_judged_by_the_envoy_mode_policy_alone(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        check = check_request_from_shorthand({"method": "GET", "path": "/allow"})
        response = stub.Check(check, timeout=10)
    assert response.status.code == 7
    assert response.denied_response.body.startswith("the Envoy-mode policy answered")


def _nested(server: ServerProcess, raw: bytes):
    return send(server.http_authz_port, "POST", "/", (("Host", "authz"),), raw)


def test_a_nested_request_is_judged_instead_of_the_post_carrying_it(nested: ServerProcess) -> None:
    allowed = _nested(
        nested, b"GET /headers/get HTTP/1.1\r\nHost: http-srv.app\r\nFoo: bar\r\n\r\n"
    )
    assert allowed.status == 200
    refused = _nested(
        nested, b"GET /headers/get HTTP/1.1\r\nHost: http-srv.app\r\nFoo: baz\r\n\r\n"
    )
    assert (refused.status, refused.text) == (403, "not allowed")
    assert _nested(nested, b"GET /host HTTP/1.1\r\nHost: http-srv.app\r\n\r\n").status == 403
    assert _nested(nested, b"GET /host HTTP/1.1\r\nHost: elsewhere\r\n\r\n").status == 200


def test_a_nested_body_that_is_not_a_request_is_an_error(nested: ServerProcess) -> None:
    answer = _nested(nested, b"this is not an HTTP request")
    assert answer.status == 500
    decision_id = answer.headers["x-authz-decision-id"]
    assert answer.text == f"internal error (decision {decision_id})\n"
