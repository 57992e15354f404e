"""Policies see the same headers whether Envoy sent them in ``headers`` or ``header_map``.

With ``encode_raw_headers: true`` Envoy leaves ``attributes.request.http.headers`` empty and sends
one ``header_map`` entry per header line (``raw_value`` bytes). Policies read
``object.attributes.request.http.headers``: each request below is decided twice, once per
encoding, through the adapter, the decoder and the engine, and both decisions must agree.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jwt
import pytest

from authz_server.envoy.adapter import CheckRequest, request_from_check
from authz_server.policy import Engine, load_directory
from authz_server.policy.testing import check_request_from_shorthand, decide

SECRET = "a-shared-secret-of-decent-length-32b"

# Header-keyed policies in the shapes policies use: indexing, optional indexing, `in`, a header
# read in a variable (the reference path), and a hoisted jwt.Decode of the Authorization header.
POLICIES = """
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: a-tenant}
spec:
  evaluation: {mode: Envoy}
  validations:
  - expression: >
      object.attributes.request.http.headers[?"x-tenant"].orValue("") == "red"
        ? envoy.Denied(403).WithBody("red tenant is frozen").Response() : null
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: b-debug}
spec:
  evaluation: {mode: Envoy}
  validations:
  - expression: >
      "x-debug" in object.attributes.request.http.headers
        ? envoy.Denied(403).WithBody("no debugging in production").Response() : null
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: c-token}
spec:
  evaluation: {mode: Envoy}
  matchConditions:
  - name: has-token
    expression: '"authorization" in object.attributes.request.http.headers'
  validations:
  - expression: >
      jwt.Decode(object.attributes.request.http.headers["authorization"].substring(7),
        "SECRET").Claims.sub == "mallory"
        ? envoy.Denied(401).WithBody("revoked agent").Response() : null
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: d-region}
spec:
  evaluation: {mode: Envoy}
  variables:
  - name: region
    expression: object.attributes.request.http.headers[?"x-region"].orValue("none")
  validations:
  - expression: >
      variables.region.startsWith("eu-") || variables.region == "none"
        ? envoy.Allowed().WithHeader("x-region-seen", variables.region).Response()
        : envoy.Denied(403).WithBody("region not served").Response()
""".replace("SECRET", SECRET)


def _token(subject: str) -> str:
    return "Bearer " + jwt.encode({"sub": subject}, SECRET, algorithm="HS256")


CASES: list[dict[str, str]] = [
    {},
    {"x-tenant": "red"},
    {"x-tenant": "blue"},
    {"x-debug": "1"},
    {"authorization": _token("mallory")},
    {"authorization": _token("alice")},
    {"x-region": "us-east-1"},
    {"x-region": "eu-west-1"},
    {"x-region": "eu-west-1", "x-tenant": "red"},
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root: Path = tmp_path_factory.mktemp("policies")
    (root / "headers.yaml").write_text(textwrap.dedent(POLICIES))
    return Engine(load_directory(root))


def _as_header_map(check: CheckRequest) -> CheckRequest:
    """The same request as Envoy sends it with encode_raw_headers: only header_map lines."""
    raw = CheckRequest()
    raw.CopyFrom(check)
    http = raw.attributes.request.http
    for key, value in check.attributes.request.http.headers.items():
        http.header_map.headers.add(key=key, raw_value=value.encode())
    http.ClearField("headers")
    return raw


def _summary(decision) -> tuple:  # type: ignore[no-untyped-def]
    return (
        decision.allowed,
        decision.http_status,
        decision.policy,
        decision.body,
        decision.headers,
    )


@pytest.mark.parametrize("headers", CASES, ids=lambda h: ",".join(h) or "none")
def test_both_encodings_give_the_same_decision(engine: Engine, headers: dict[str, str]) -> None:
    check = check_request_from_shorthand({"tool": "search", "headers": headers})
    raw = _as_header_map(check)
    assert not raw.attributes.request.http.headers
    assert _summary(decide(engine, raw)) == _summary(decide(engine, check))


def test_header_keyed_policies_apply_to_header_map_requests(engine: Engine) -> None:
    def raw(headers: dict[str, str]) -> CheckRequest:
        return _as_header_map(check_request_from_shorthand({"tool": "t", "headers": headers}))

    assert decide(engine, raw({"x-tenant": "red"})).policy == "a-tenant"
    assert decide(engine, raw({"x-debug": "yes"})).policy == "b-debug"
    assert decide(engine, raw({"authorization": _token("mallory")})).http_status == 401
    assert not decide(engine, raw({"x-region": "ap-south-1"})).allowed
    allowed = decide(engine, raw({"x-region": "eu-north-1"}))
    assert allowed.allowed
    assert [(h.key, h.value) for h in allowed.headers] == [("x-region-seen", "eu-north-1")]


def test_repeated_lines_reach_policies_joined_as_envoy_joins_them() -> None:
    check = check_request_from_shorthand({"tool": "t"})
    http = check.attributes.request.http
    http.header_map.headers.add(key="X-Tenant", raw_value=b"blue")
    http.header_map.headers.add(key="x-tenant", raw_value=b"red")
    request = request_from_check(check)
    seen = request.check_request.attributes.request.http.headers
    assert seen["x-tenant"] == "blue,red" == request.headers["x-tenant"]
    assert dict(seen) == dict(request.headers)
    # The message Envoy sent is left as it was; policies get their own copy.
    assert check.attributes.request.http.headers.get("x-tenant") is None


def test_the_common_encoding_is_not_copied() -> None:
    check = check_request_from_shorthand({"body": json.dumps({"jsonrpc": "2.0", "id": 1})})
    assert request_from_check(check).check_request is check
