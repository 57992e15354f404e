"""``authz-server test`` and ``check --policies`` run the identity stage as the server does.

Real keys, tokens, DPoP proofs and certificates (tests/identity/helpers.py), written into
PolicyTest files next to an ``Authentication`` document; the runner must reach the same answers
the server would: verified callers reach the policies, a failed credential under ``required`` is
a 401 with its challenge, a replayed proof is refused, and ``spec.now`` pins the clock.
"""

from __future__ import annotations

import datetime
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server import cli, commands
from authz_server.decision import DecidedBy
from authz_server.identity.challenge import PROOF_ALGORITHMS
from authz_server.policy.testing import run_cases, run_tests
from tests.identity import helpers
from tests.identity.helpers import NOW
from tests.policy.conftest import policy_yaml

# Tool "whoami" is always denied with what the policies saw of the caller; any other tool is
# allowed to a verified caller with tools:read, or with the tool named in its "tools" claim.
WHOAMI = (
    '"method=" + identity.Method + " subject=" + identity.Subject + " spiffe=" + '
    'identity.SPIFFEID + " key=" + identity.KeyThumbprint + " error=" + identity.Error'
)
POLICY = policy_yaml(
    "who",
    [
        'mcp.ToolCall.Name == "whoami" ? '
        f"envoy.Denied(403).WithBody({WHOAMI}).Response() : "
        '(identity.Authenticated && ("tools:read" in identity.Scopes || '
        "(has(identity.Claims.tools) && mcp.ToolCall.Name in identity.Claims.tools))) ? "
        "envoy.Allowed().Response() : "
        'envoy.Denied(403).WithBody("refused: " + identity.Error).Response()'
    ],
    conditions=['mcp.Method == "tools/call"'],
)
SPIFFE = "spiffe://example.org/agent"
RFC3339_NOW = datetime.datetime.fromtimestamp(NOW, datetime.UTC).isoformat().replace("+00:00", "Z")


def _authentication(spec: dict[str, Any]) -> str:
    document = {
        "apiVersion": "authz-server/v1alpha1",
        "kind": "Authentication",
        "metadata": {"name": "agents"},
        "spec": spec,
    }
    return yaml.safe_dump(document, sort_keys=False)


def _policies(root: Path, key: helpers.SigningKey, *, required: bool = False) -> Path:
    """policies/ with the policy and an Authentication document whose keys are in a file."""
    directory = root / "policies"
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY)
    (directory / "keys.json").write_text(json.dumps({"keys": [key.jwk()]}))
    spec = helpers.spec(
        [key],
        issuer={"jwks": {"file": "keys.json"}},
        required=required,
        mtls={"trustDomains": ["example.org"]},
    )
    (directory / "authentication.yaml").write_text(_authentication(spec))
    return directory


def _test_file(directory: Path, cases: list[dict[str, Any]], **spec: Any) -> Path:
    document = {
        "apiVersion": "authz-server/v1alpha1",
        "kind": "PolicyTest",
        "metadata": {"name": "identity"},
        "spec": {"policies": "../policies", **spec, "cases": cases},
    }
    directory.mkdir(exist_ok=True)
    path = directory / "identity_test.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _case(name: str, expect: dict[str, Any], tool: str = "read_file", **request: Any) -> dict:
    return {"name": name, "request": {"tool": tool, **request}, "expect": expect}


def _run(tests: Path) -> tuple[int, str]:
    out = io.StringIO()
    status = run_tests(tests, out)
    return status, out.getvalue()


@pytest.fixture
def key() -> helpers.SigningKey:
    return helpers.rsa_key()


def test_verified_callers_reach_the_policies_as_the_server_would_see_them(tmp_path, key):
    _policies(tmp_path, key)
    access = helpers.token(key, NOW)
    proof_key = helpers.ec_key()
    bound = helpers.token(key, NOW, cnf={"jkt": proof_key.thumbprint()})
    proof = helpers.proof(proof_key, bound, NOW)
    pem, _ = helpers.certificate(SPIFFE)
    dpop_headers = {"authorization": f"DPoP {bound}", "dpop": proof}
    cases = [
        _case("bearer token", {"decision": "allow"}, headers={"authorization": f"Bearer {access}"}),
        _case(
            "bearer token seen",
            {
                "decision": "deny",
                "bodyContains": "method=bearer subject=user-1 spiffe= key= error=",
            },
            tool="whoami",
            headers={"authorization": f"Bearer {access}"},
        ),
        _case(
            "expired token reaches the policies as expired",
            {"decision": "deny", "status": 403, "bodyContains": "refused: expired"},
            headers={"authorization": f"Bearer {helpers.token(key, NOW - 3600)}"},
        ),
        _case("no credential", {"decision": "deny", "bodyContains": "refused: missing"}),
        _case(
            "dpop token and proof",
            {
                "decision": "deny",
                "bodyContains": f"method=dpop subject=user-1 spiffe= "
                f"key={proof_key.thumbprint()} error=",
            },
            tool="whoami",
            headers=dpop_headers,
        ),
        _case(
            "the same proof replayed",
            {"decision": "deny", "bodyContains": "error=dpop_replayed"},
            tool="whoami",
            headers=dpop_headers,
        ),
        _case(
            "client certificate",
            {"decision": "deny", "bodyContains": f"method=mtls subject= spiffe={SPIFFE} key="},
            tool="whoami",
            certificate=pem,
        ),
        _case(
            "spiffe principal",
            {"decision": "deny", "bodyContains": f"spiffe={SPIFFE}"},
            tool="whoami",
            principal=SPIFFE,
        ),
        {
            "name": "identity given directly",
            "request": {"tool": "get_issue", "headers": {"authorization": "Bearer not-a-jwt"}},
            "identity": {
                "Authenticated": True,
                "Method": "bearer",
                "Subject": "alice",
                "Scopes": ["tools:write"],
                "Claims": {"tools": ["get_issue"]},
                "SPIFFEID": SPIFFE,
            },
            "expect": {"decision": "allow"},
        },
        {
            "name": "identity given directly, as the policies see it",
            "request": {"tool": "whoami"},
            "identity": {"Authenticated": True, "Method": "dpop", "Subject": "alice"},
            "expect": {"decision": "deny", "bodyContains": "method=dpop subject=alice spiffe="},
        },
        {
            "name": "a failed identity given directly",
            "request": {"tool": "whoami", "headers": {"authorization": f"Bearer {access}"}},
            "identity": {"Error": "wrong_audience"},
            "expect": {"decision": "deny", "bodyContains": "subject= spiffe= key= error=wrong_aud"},
        },
    ]
    _test_file(tmp_path / "tests", cases, now=RFC3339_NOW)
    status, out = _run(tmp_path / "tests")
    assert status == 0, out
    assert f"{len(cases)} passed, 0 failed" in out


def test_required_authentication_answers_401_with_a_challenge_before_the_policies(tmp_path, key):
    _policies(tmp_path, key, required=True)
    proof_key = helpers.ec_key()
    bound = helpers.token(key, NOW, cnf={"jkt": proof_key.thumbprint()})
    dpop_headers = {"authorization": f"DPoP {bound}", "dpop": helpers.proof(proof_key, bound, NOW)}
    expired = {"authorization": f"Bearer {helpers.token(key, NOW - 3600)}"}
    cases = [
        _case(
            "valid token",
            {"decision": "allow"},
            headers={"authorization": f"Bearer {helpers.token(key, NOW)}"},
        ),
        _case("expired token", {"decision": "deny", "status": 401}, headers=expired),
        _case(
            "no credential",
            {
                "decision": "deny",
                "status": 401,
                "headers": {"www-authenticate": f'Bearer, DPoP algs="{PROOF_ALGORITHMS}"'},
                "bodyContains": "-31401",
            },
        ),
        _case("dpop", {"decision": "allow"}, headers=dpop_headers),
        _case("dpop replayed", {"decision": "deny", "status": 401}, headers=dpop_headers),
        {
            "name": "an unauthenticated identity given directly",
            "request": {"tool": "read_file"},
            "identity": {"Error": "expired"},
            "expect": {"decision": "deny", "status": 401},
        },
    ]
    file = _test_file(tmp_path / "tests", cases, now=NOW)
    status, out = _run(tmp_path / "tests")
    assert status == 0, out
    assert f"{len(cases)} passed, 0 failed" in out

    # The challenges name what failed, on the scheme the client used.
    runs = {run.name: run.decision for run in run_cases(file, yaml.safe_load(file.read_text()))}
    assert _www_authenticate(runs["expired token"]).startswith(
        'Bearer error="invalid_token", error_description="expired'
    )
    assert _www_authenticate(runs["dpop replayed"]).startswith(
        'DPoP error="invalid_dpop_proof", error_description="dpop_replayed'
    )
    # Every denial came before the policies (the policy would have answered 403).
    denied = [d for d in runs.values() if not d.allowed]
    assert len(denied) == 4
    assert all(d.decided_by == DecidedBy.IDENTITY and not d.policy for d in denied)


def _www_authenticate(decision: Any) -> str:
    return {h.key.lower(): h.value for h in decision.headers}["www-authenticate"]


@pytest.mark.parametrize("now", [RFC3339_NOW, NOW, int(NOW), RFC3339_NOW.replace("Z", "+02:00")])
def test_now_pins_the_clock_for_tokens_and_proofs(tmp_path, key, now):
    # Valid only within a few minutes of NOW (2027): the real clock would refuse both.
    _policies(tmp_path, key, required=True)
    proof_key = helpers.ec_key()
    bound = helpers.token(key, NOW, cnf={"jkt": proof_key.thumbprint()})
    cases = [
        _case(
            "token",
            {"decision": "allow"},
            headers={"authorization": f"Bearer {helpers.token(key)}"},
        ),
        _case(
            "token and proof",
            {"decision": "allow"},
            headers={"authorization": f"DPoP {bound}", "dpop": helpers.proof(proof_key, bound)},
        ),
    ]
    if isinstance(now, str) and now.endswith("+02:00"):
        # Two hours off the tokens' times: both are refused, so the zone was read.
        expected_status, expected = 1, "0 passed, 2 failed"
    else:
        expected_status, expected = 0, "2 passed, 0 failed"
    _test_file(tmp_path / "tests", cases, now=now)
    status, out = _run(tmp_path / "tests")
    assert status == expected_status, out
    assert expected in out


def test_without_now_the_real_clock_refuses_tokens_recorded_for_another_time(tmp_path, key):
    _policies(tmp_path, key, required=True)
    cases = [
        _case(
            "token",
            {"decision": "allow"},
            headers={"authorization": f"Bearer {helpers.token(key)}"},
        ),
        _case(
            "fresh token",
            {"decision": "allow"},
            headers={"authorization": f"Bearer {helpers.token(key, time.time())}"},
        ),
    ]
    _test_file(tmp_path / "tests", cases)
    status, out = _run(tmp_path / "tests")
    assert status == 1, out
    assert "FAIL identity / token" in out and "PASS identity / fresh token" in out


BAD_IDENTITIES = {
    "unknown field": ({"Authenticated": True, "Subjet": "alice"}, "Subjet"),
    "wrong type": ({"Authenticated": True, "Scopes": "tools:read"}, "Scopes"),
    "not a bool": ({"Authenticated": "yes"}, "Authenticated"),
    "unknown method": ({"Authenticated": True, "Method": "basic"}, "Method"),
    "unknown error": ({"Error": "stale"}, "Error"),
    "authenticated with an error": ({"Authenticated": True, "Error": "expired"}, "Error"),
    "half a verification": ({"Subject": "alice"}, "only Error"),
    "claims not JSON": ({"Authenticated": True, "Claims": {"at": datetime.date(2026, 1, 1)}}, "at"),
    "not a mapping": ("alice", "mapping"),
}


@pytest.mark.parametrize("identity,named", BAD_IDENTITIES.values(), ids=BAD_IDENTITIES.keys())
def test_an_identity_that_cannot_be_read_is_an_error_naming_the_file(
    tmp_path, key, identity, named
):
    _policies(tmp_path, key)
    good = _case("good", {"decision": "deny"})
    bad = {
        "name": "bad one",
        "request": {"tool": "x"},
        "identity": identity,
        "expect": good["expect"],
    }
    file = _test_file(tmp_path / "tests", [good, bad])
    status, out = _run(tmp_path / "tests")
    assert status == 2, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR {file}: case 'bad one': "), out
    assert named in errors[0]


@pytest.mark.parametrize("now", ["yesterday", "2026-12-01T00:00:00", True, [1]])
def test_a_now_that_cannot_be_read_is_an_error(tmp_path, key, now):
    _policies(tmp_path, key)
    file = _test_file(tmp_path / "tests", [_case("c", {"decision": "deny"})], now=now)
    status, out = _run(tmp_path / "tests")
    assert status == 2, out
    assert f"ERROR {file}: spec.now" in out


def test_a_certificate_must_be_text(tmp_path, key):
    _policies(tmp_path, key)
    _test_file(tmp_path / "tests", [_case("c", {"decision": "deny"}, certificate=["pem"])])
    status, out = _run(tmp_path / "tests")
    assert status == 1 and "request.certificate must be a string" in out, out


def _check_request(headers: dict[str, str], tool: str = "read_file") -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    return {
        "attributes": {
            "request": {
                "http": {
                    "method": "POST",
                    "path": "/mcp",
                    "host": "mcp.example.com",
                    "headers": {
                        ":method": "POST",
                        ":path": "/mcp",
                        "content-type": "application/json",
                        **headers,
                    },
                    "body": json.dumps(body),
                }
            }
        }
    }


def _check(tmp_path: Path, policies: Path, request: dict[str, Any]) -> tuple[int, dict]:
    """``authz-server check --policies DIR --request FILE``: exit status and printed decision."""
    file = tmp_path / "request.json"
    file.write_text(json.dumps(request))
    args = cli.build_parser().parse_args(
        ["check", "--policies", str(policies), "--request", str(file)]
    )
    out, err = io.StringIO(), io.StringIO()
    status = commands.run(args, out, err)
    assert not err.getvalue()
    return status, json.loads(out.getvalue())


def test_check_offline_verifies_the_bearer_token(tmp_path, key):
    policies = _policies(tmp_path, key, required=True)
    valid = helpers.token(key, time.time())
    status, decision = _check(
        tmp_path, policies, _check_request({"authorization": f"Bearer {valid}"})
    )
    assert status == 0 and decision["allowed"], decision

    status, decision = _check(tmp_path, policies, _check_request({}))
    assert status == 1
    assert decision["decided_by"] == "identity" and decision["http_status"] == 401
    headers = decision["check_response"]["denied_response"]["headers"]
    assert {"key": "www-authenticate", "value": f'Bearer, DPoP algs="{PROOF_ALGORITHMS}"'} in [
        h["header"] for h in headers
    ]

    expired = helpers.token(key, time.time() - 3600)
    status, decision = _check(
        tmp_path, policies, _check_request({"authorization": f"Bearer {expired}"})
    )
    assert status == 1 and decision["http_status"] == 401


def test_check_offline_hands_the_verified_caller_to_the_policies(tmp_path, key):
    policies = _policies(tmp_path, key)
    valid = helpers.token(key, time.time(), sub="bob")
    request = _check_request({"authorization": f"Bearer {valid}"}, tool="whoami")
    status, decision = _check(tmp_path, policies, request)
    assert status == 1 and decision["decided_by"] == "policy"
    body = decision["check_response"]["denied_response"]["body"]
    assert "method=bearer subject=bob" in body
    # No credential tokens in what check prints.
    assert valid not in json.dumps(decision)


EVERY_FIELD = {
    "Authenticated": True,
    "Method": "gateway",
    "Issuer": "https://idp.example.com",
    "Subject": "alice",
    "ClientID": "agent-7",
    "Audiences": ["https://mcp.example.com/mcp"],
    "Scopes": ["tools:read", "tools:call"],
    "Claims": {"n": 2, "tools": ["get_issue"], "nested": {"ok": True}},
    "Actor": "bob",
    "SPIFFEID": SPIFFE,
    "CertificateThumbprint": "cert-print",
    "KeyThumbprint": "key-print",
    "Error": "",
}


def test_every_field_of_a_given_identity_reaches_the_policies(tmp_path):
    expression = (
        'identity.Authenticated && identity.Method == "gateway" && '
        'identity.Issuer == "https://idp.example.com" && identity.Subject == "alice" && '
        'identity.ClientID == "agent-7" && '
        'identity.Audiences == ["https://mcp.example.com/mcp"] && '
        'identity.Scopes == ["tools:read", "tools:call"] && identity.Claims.n == 2.0 && '
        'identity.Claims.tools == ["get_issue"] && identity.Claims.nested.ok && '
        f'identity.Actor == "bob" && identity.SPIFFEID == "{SPIFFE}" && '
        'identity.CertificateThumbprint == "cert-print" && '
        'identity.KeyThumbprint == "key-print" && identity.Error == ""'
    )
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(
        policy_yaml("fields", [f"{expression} ? envoy.Allowed().Response() : null"])
    )
    cases = [
        {"name": "all", "request": {"tool": "t"}, "identity": EVERY_FIELD, "expect": {
            "decision": "allow"}},
    ]  # fmt: skip
    for name in EVERY_FIELD:
        if name not in ("Authenticated", "Error"):  # both change what may be given
            changed = {**EVERY_FIELD, name: "gateway" if name != "Method" else "dpop"}
            if name in ("Audiences", "Scopes"):
                changed[name] = ["other"]
            if name == "Claims":
                changed[name] = {"n": 3}
            cases.append(
                {"name": name, "request": {"tool": "t"}, "identity": changed, "expect": {
                    "decision": "deny"}}
            )  # fmt: skip
    _test_file(tmp_path / "tests", cases)
    status, out = _run(tmp_path / "tests")
    assert status == 0, out
    assert f"{len(cases)} passed, 0 failed" in out
