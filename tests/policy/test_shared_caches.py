"""Caches hand out values no caller can change for the next request.

Each cache below serves many requests from one stored object. A caller (a policy library
function, an observer, a test, the CLI) that mutates what it was handed must fail, or change
only its own copy; the next request sees what the cache was filled with.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jwt
import pytest

from authz_server.cel import env as cel_env
from authz_server.cel import hoist
from authz_server.cel import jwt as jwt_lib
from authz_server.envoy import response_from_decision
from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.observe.audit import AuditLog
from authz_server.observe.event import DecisionEvent
from authz_server.policy import Engine, load_directory
from authz_server.policy import response as response_module
from authz_server.policy.testing import check_request_from_shorthand, decide

SECRET = "a-shared-secret-of-decent-length-32b"
METADATA_POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: tag}
spec:
  evaluation: {mode: Envoy}
  validations:
  - expression: >
      envoy.Allowed().Response().WithMetadata({"tenant": {"tier": "gold"}, "tags": ["a", "b"]})
"""


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    response_module._decision_from_bytes.cache_clear()
    jwt_lib.clear_cache()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    (tmp_path / "p.yaml").write_text(METADATA_POLICY)
    return Engine(load_directory(tmp_path))


def _mutate(mapping: Any) -> list[str]:
    """Try every way of changing a mapping and the containers in it; return what succeeded."""
    changed = []
    attempts = [
        ("set", lambda m: m.__setitem__("tenant", "evil")),
        ("update", lambda m: m.update(tenant="evil")),
        ("pop", lambda m: m.pop("tenant")),
        ("clear", lambda m: m.clear()),
        ("setdefault", lambda m: m.setdefault("new", 1)),
        ("nested set", lambda m: m["tenant"].__setitem__("tier", "free")),
        ("nested append", lambda m: m["tags"].append("evil")),
    ]
    for name, attempt in attempts:
        try:
            attempt(mapping)
        except (TypeError, AttributeError, KeyError):
            continue
        changed.append(name)
    return changed


EXPECTED_METADATA = {"tenant": {"tier": "gold"}, "tags": ["a", "b"]}


def test_cached_decisions_cannot_be_changed_by_a_caller(engine: Engine) -> None:
    first = decide(engine, check_request_from_shorthand({"tool": "t"}))
    assert _mutate(first.dynamic_metadata) == []
    second = decide(engine, check_request_from_shorthand({"tool": "t"}))
    assert json.loads(json.dumps(second.dynamic_metadata)) == EXPECTED_METADATA


def test_frozen_metadata_still_reaches_envoy_and_the_audit_log(
    engine: Engine, tmp_path: Path
) -> None:
    decision = decide(engine, check_request_from_shorthand({"tool": "t"}))
    response = response_from_decision(decision)
    from google.protobuf import json_format

    assert json_format.MessageToDict(response.dynamic_metadata) == EXPECTED_METADATA
    request = request_from_check(check_request_from_shorthand({"tool": "t"}))
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    audit.start()
    audit.observe(DecisionEvent("d-1", 0.0, 0.0, request, decode(request.body, {}), decision))
    assert audit.close()
    line = json.loads((tmp_path / "audit.jsonl").read_text())
    assert line["decision_id"] == "d-1" and "audit_error" not in line


def test_the_pipelines_decision_is_not_the_cached_one(engine: Engine) -> None:
    """The pipeline adds the decision id to a fresh top-level mapping; the nested values it
    shares with the cache are frozen."""
    from authz_server.pipeline import PolicyAuthorizer  # noqa: F401  (the path under test)

    decision = decide(engine, check_request_from_shorthand({"tool": "t"}))
    merged = {**decision.dynamic_metadata, "decision_id": "x"}
    with pytest.raises(TypeError):
        merged["tenant"]["tier"] = "free"
    with pytest.raises(AttributeError):
        merged["tags"].append("evil")


def _token(**claims: Any) -> str:
    return jwt.encode({"sub": "agent", "exp": 9_999_999_999, **claims}, SECRET, algorithm="HS256")


def test_a_verified_token_handed_out_is_the_callers_own_copy() -> None:
    jwt_lib.clear_cache()
    token = _token(role="reader")
    first = jwt_lib.decode_with_secret(token, SECRET)
    first.Claims["role"] = "admin"
    first.Valid = False
    second = jwt_lib.decode_with_secret(token, SECRET)
    assert second.Claims["role"] == "reader" and second.Valid is True


def test_a_verified_token_from_a_key_set_is_the_callers_own_copy() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    jwt_lib.clear_cache()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    keys = {"keys": [jwk]}
    token = jwt.encode({"sub": "agent", "role": "reader"}, key, algorithm="ES256")
    jwt_lib.decode_with_keys(token, keys).Claims["role"] = "admin"
    assert jwt_lib.decode_with_keys(token, keys).Claims["role"] == "reader"


def test_policies_see_the_cached_token_unchanged(tmp_path: Path) -> None:
    """The CEL runtime gets the cached message itself (it copies it); a Python caller that
    changed its own copy between two checks changes nothing the policy reads."""
    jwt_lib.clear_cache()
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: policies.kyverno.io/v1
            kind: ValidatingPolicy
            metadata: {{name: role}}
            spec:
              evaluation: {{mode: Envoy}}
              validations:
              - expression: >
                  jwt.Decode(object.attributes.request.http.headers["authorization"].substring(7),
                    "{SECRET}").Claims.role == "reader"
                    ? envoy.Allowed().Response() : envoy.Denied(403).Response()
            """
        )
    )
    engine = Engine(load_directory(tmp_path))
    token = _token(role="reader")
    shorthand = {"tool": "t", "headers": {"authorization": f"Bearer {token}"}}
    assert decide(engine, check_request_from_shorthand(shorthand)).allowed
    jwt_lib.decode_with_secret(token, SECRET).Claims["role"] = "admin"
    assert decide(engine, check_request_from_shorthand(shorthand)).allowed


@pytest.mark.parametrize(
    "cached",
    [cel_env.constants, cel_env.base_variables, hoist.implementations],
    ids=["constants", "base_variables", "hoist.implementations"],
)
def test_memoized_tables_are_read_only(cached: Any) -> None:
    table = cached()
    key = next(iter(table))
    before = dict(table)
    with pytest.raises(TypeError):
        table[key] = "changed"  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError)):
        table.pop(key)  # type: ignore[union-attr]
    assert dict(cached()) == before


def test_the_empty_view_shared_by_requests_without_a_message(engine: Engine) -> None:
    view = engine._empty_view
    with pytest.raises(TypeError):
        view["Method"] = "tools/call"  # type: ignore[index]
    assert decide(engine, check_request_from_shorthand({"method": "GET"})).allowed


def test_memoized_hoisted_arguments_are_read_only(tmp_path: Path) -> None:
    """The fast path memoizes the arguments of hoisted calls per request strings; what it
    hands to the calls cannot be changed for the next request."""
    jwt_lib.clear_cache()
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: policies.kyverno.io/v1
            kind: ValidatingPolicy
            metadata: {{name: role}}
            spec:
              evaluation: {{mode: Envoy}}
              validations:
              - expression: >
                  jwt.Decode(object.attributes.request.http.headers["authorization"].substring(7),
                    "{SECRET}").Claims.role == "reader"
                    ? envoy.Allowed().Response() : envoy.Denied(403).Response()
            """
        )
    )
    policies = load_directory(tmp_path)
    fast = policies.fast_path("tools/call")
    assert fast is not None and fast._hoisted is not None
    prelude = fast._hoisted._prelude
    assert isinstance(prelude, hoist._Paths)
    token = _token(role="reader")
    check = check_request_from_shorthand(
        {"tool": "t", "headers": {"authorization": f"Bearer {token}"}}
    )
    data = {"object": request_from_check(check).check_request}
    handed = prelude.arguments(data)
    with pytest.raises((TypeError, AttributeError)):
        handed[0][0] = "forged"  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError)):
        handed.append(None)  # type: ignore[union-attr]
    assert prelude.arguments(data) == handed
    assert list(prelude.arguments(data)[0]) == [token, SECRET]
