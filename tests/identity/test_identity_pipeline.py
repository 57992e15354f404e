"""The identity stage inside the decision path: an Authentication document loaded with the
policies, ``identity`` in CEL, the 401 challenge before the policies, DPoP replay through the state
store, keys that never arrived, and reloads that keep what did not change.

Real parts: keys and signatures from ``cryptography``, a JWK set served on loopback, the SQLite
store on a temporary file, the policy directory watched like the server's.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import DecidedBy, Decision
from authz_server.envoy.adapter import request_from_check
from authz_server.observe.event import DecisionEvent
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.errors import PolicyLoadError
from authz_server.policy.loader import load_directory
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.state import open_store
from tests.identity.helpers import (
    AUDIENCE,
    ISSUER,
    ORIGIN,
    JwksServer,
    SigningKey,
    ec_key,
    proof,
    token,
)

METADATA = "https://mcp.example.com/.well-known/oauth-protected-resource"

# Allows a tools/call when the caller is verified and its "tools" claim names the tool; the
# denial says what the policy saw, so a test can tell which identity reached it.
POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: who
spec:
  evaluation:
    mode: Envoy
  validations:
  - expression: >
      identity.Authenticated && mcp.ToolCall.Name in identity.Claims.tools
        ? envoy.Allowed().WithHeader("x-agent", identity.Method + ":" + identity.Subject).Response()
        : envoy.Denied(403).WithBody("seen: error=" + identity.Error + " method="
            + identity.Method).Response()
"""


def _authentication(keys: list[SigningKey] | None, *, uri: str = "", **spec: Any) -> str:
    inline = {"inline": {"keys": [k.jwk() for k in keys or []]}}
    jwks: dict[str, Any] = {"uri": uri, "refresh": "1s"} if uri else inline
    document = {
        "apiVersion": "authz-server/v1alpha1",
        "kind": "Authentication",
        "metadata": {"name": "agents"},
        "spec": {
            "resourceMetadata": METADATA,
            "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}],
            "dpop": {"mode": "optional", "origin": ORIGIN},
            **spec,
        },
    }
    return json.dumps(document)


class Recorder:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def observe(self, event: DecisionEvent) -> None:
        self.events.append(event)


class Server:
    """A PolicyAuthorizer over a policy directory, as `serve` builds it (without gRPC)."""

    def __init__(self, directory: Path, state: str | None) -> None:
        self.recorder = Recorder()
        self.authorizer = PolicyAuthorizer(
            PolicyStore(directory),
            observers=(self.recorder,),
            reload_interval=0.1,
            state=open_store(state) if state else None,
        )
        self.authorizer.start()

    def call(
        self, authorization: str | None = None, dpop: str | None = None, tool: str = "get_issue"
    ) -> Decision:
        headers = {":authority": "mcp.example.com"}
        if authorization is not None:
            headers["authorization"] = authorization
        if dpop is not None:
            headers["dpop"] = dpop
        check = check_request_from_shorthand(
            {"host": "mcp.example.com", "headers": headers, "tool": tool, "arguments": {}}
        )
        return self.authorizer.check(request_from_check(check))


@pytest.fixture
def key() -> SigningKey:
    return ec_key()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def make(authentication: str, *, state: str | None = "default") -> Server:
        directory = tmp_path / f"policies-{len(servers)}"
        directory.mkdir()
        (directory / "who.yaml").write_text(POLICY)
        (directory / "authentication.yaml").write_text(authentication)
        url = f"sqlite:///{tmp_path}/state.db" if state == "default" else state
        server = Server(directory, url)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.authorizer.stop()


def _challenge(decision: Decision) -> str:
    return next(h.value for h in decision.headers if h.key == "www-authenticate")


def _body(decision: Decision) -> dict[str, Any]:
    return json.loads(decision.body)


def _bound(key: SigningKey, **claims: Any) -> str:
    return token(key, time.time(), cnf={"jkt": key.thumbprint()}, tools=["get_issue"], **claims)


def _proof(key: SigningKey, access_token: str) -> str:
    return proof(key, access_token, time.time(), url=f"{ORIGIN}/mcp")


# -- policies see the verified caller -----------------------------------------------------------


def test_a_verified_bearer_token_reaches_the_policies_as_identity(make_server: Any, key: Any):
    server = make_server(_authentication([key]))
    decision = server.call(f"Bearer {token(key, time.time(), tools=['get_issue'])}")
    assert decision.allowed, decision.body
    assert [(h.key, h.value) for h in decision.headers] == [("x-agent", "bearer:user-1")]
    event = server.recorder.events[-1]
    assert event.identity is not None and event.identity.subject == "user-1"


def test_without_required_a_failed_credential_is_left_to_the_policies(
    make_server: Any, key: Any
) -> None:
    server = make_server(_authentication([key]))
    missing = server.call()
    assert missing.http_status == 403
    assert "seen: error=missing method=" in _body(missing)["error"]["message"]
    expired = server.call(f"Bearer {token(key, time.time() - 3600)}")
    assert "seen: error=expired" in _body(expired)["error"]["message"]
    assert expired.decided_by is DecidedBy.POLICY


# -- required: answered before the policies ------------------------------------------------------


def test_required_without_credentials_answers_401_with_a_challenge_without_error(
    make_server: Any,
) -> None:
    server = make_server(_authentication([ec_key()], required=True))
    decision = server.call()
    assert decision.http_status == 401
    assert decision.decided_by is DecidedBy.IDENTITY
    challenge = _challenge(decision)
    assert challenge.startswith(f'Bearer resource_metadata="{METADATA}", DPoP algs="')
    assert "error=" not in challenge
    body = _body(decision)
    assert body["id"] == 1 and body["error"]["code"] == -31401
    assert "missing" in body["error"]["message"]
    assert server.recorder.events[-1].decision.http_status == 401


def test_required_with_a_bad_token_names_invalid_token_on_the_scheme_used(
    make_server: Any, key: Any
) -> None:
    server = make_server(_authentication([key], required=True))
    stranger = ec_key("ec-1")  # same kid, another key: the signature fails
    decision = server.call(f"Bearer {token(stranger, time.time())}")
    assert decision.http_status == 401
    challenge = _challenge(decision)
    assert challenge.startswith('Bearer error="invalid_token", error_description="bad_signature')
    assert f'resource_metadata="{METADATA}"' in challenge
    bound = _bound(key)
    wrong_proof = proof(key, bound, time.time(), url=f"{ORIGIN}/other")
    decision = server.call(f"DPoP {bound}", wrong_proof)
    assert _challenge(decision).startswith('DPoP error="invalid_dpop_proof"')
    assert ' algs="' in _challenge(decision)


def test_no_token_or_proof_text_reaches_the_answer(make_server: Any, key: Any) -> None:
    server = make_server(_authentication([key], required=True))
    stranger = ec_key("ec-1")
    bad = token(stranger, time.time())
    decision = server.call(f"Bearer {bad}")
    for part in bad.split("."):
        assert part not in decision.body and part not in _challenge(decision)
        assert part not in decision.reason


# -- DPoP replay through the state store ---------------------------------------------------------


def test_a_dpop_proof_is_accepted_once_and_its_replay_refused(make_server: Any, key: Any):
    server = make_server(_authentication([key], required=True))
    bound = _bound(key)
    once = _proof(key, bound)
    first = server.call(f"DPoP {bound}", once)
    assert first.allowed, first.body
    assert [(h.key, h.value) for h in first.headers] == [("x-agent", "dpop:user-1")]
    again = server.call(f"DPoP {bound}", once)
    assert again.http_status == 401
    assert _challenge(again).startswith('DPoP error="invalid_dpop_proof"')
    assert "dpop_replayed" in _body(again)["error"]["message"]
    assert server.call(f"DPoP {bound}", _proof(key, bound)).allowed


def test_replay_is_refused_by_another_server_sharing_the_store(make_server: Any, key: Any):
    first, second = make_server(_authentication([key])), make_server(_authentication([key]))
    bound = _bound(key)
    once = _proof(key, bound)
    assert first.call(f"DPoP {bound}", once).allowed
    refused = second.call(f"DPoP {bound}", once)
    assert "seen: error=dpop_replayed" in _body(refused)["error"]["message"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_that_cannot_be_reached_answers_503_never_allows(make_server: Any, key: Any):
    server = make_server(
        _authentication([key]), state=f"redis://127.0.0.1:{_closed_port()}/0?timeout=0.2"
    )
    bound = _bound(key)
    decision = server.call(f"DPoP {bound}", _proof(key, bound))
    assert decision.http_status == 503
    assert decision.decided_by is DecidedBy.IDENTITY
    assert not any(h.key == "www-authenticate" for h in decision.headers)
    assert _body(decision)["error"]["code"] == -31503
    # A bearer token needs no store: served as usual.
    assert server.call(f"Bearer {token(key, time.time(), tools=['get_issue'])}").allowed
    status = server.authorizer.status()
    assert not status.ready and "state store unavailable" in status.detail


# -- keys ----------------------------------------------------------------------------------------


def test_an_issuer_whose_keys_never_arrived_is_unready_and_refused(make_server: Any, key: Any):
    uri = f"http://127.0.0.1:{_closed_port()}/jwks.json"
    optional = make_server(_authentication(None, uri=uri))
    denied = optional.call(f"Bearer {token(key, time.time())}")
    assert "seen: error=keys_unavailable" in _body(denied)["error"]["message"]
    status = optional.authorizer.status()
    assert not status.ready and ISSUER in status.detail
    required = make_server(_authentication(None, uri=uri, required=True))
    assert required.call(f"Bearer {token(key, time.time())}").http_status == 503


def test_a_rotated_key_is_accepted_on_the_unknown_kid_refetch(make_server: Any, key: Any):
    jwks = JwksServer([key])
    try:
        server = make_server(_authentication(None, uri=jwks.url))
        assert server.call(f"Bearer {token(key, time.time(), tools=['get_issue'])}").allowed
        rotated = ec_key("ec-2")
        jwks.publish([key, rotated])
        fresh = token(rotated, time.time(), tools=["get_issue"])
        first = server.call(f"Bearer {fresh}")
        assert "seen: error=unknown_key" in _body(first)["error"]["message"]
        deadline = time.monotonic() + 5
        while not (decision := server.call(f"Bearer {fresh}")).allowed:
            assert time.monotonic() < deadline, decision.body
            time.sleep(0.05)
        jwks.down = True  # the endpoint going down keeps the keys that arrived
        time.sleep(1.5)
        assert server.call(f"Bearer {token(key, time.time(), tools=['get_issue'])}").allowed
    finally:
        jwks.close()


def test_a_reload_with_the_same_document_keeps_the_keys(make_server: Any, key: Any) -> None:
    jwks = JwksServer([key])
    try:
        server = make_server(_authentication(None, uri=jwks.url))
        directory = Path(server.authorizer._store.directory)
        generation = server.authorizer._store.status.generation
        assert server.call(f"Bearer {token(key, time.time(), tools=['get_issue'])}").allowed
        jwks.down = True
        (directory / "who.yaml").write_text(POLICY + "\n# touched\n")
        deadline = time.monotonic() + 5
        while server.authorizer._store.status.generation == generation:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Keys kept: a new key store would have fetched from the endpoint, now down.
        assert server.call(f"Bearer {token(key, time.time(), tools=['get_issue'])}").allowed
        assert server.authorizer.status().ready
    finally:
        jwks.close()


# -- loading -------------------------------------------------------------------------------------


def _load(tmp_path: Path, *documents: str) -> Any:
    (tmp_path / "who.yaml").write_text(POLICY)
    (tmp_path / "authentication.yaml").write_text("\n---\n".join(documents))
    return load_directory(tmp_path)


def test_the_set_carries_its_authentication_document(tmp_path: Path, key: Any) -> None:
    policies = _load(tmp_path, _authentication([key], required=True))
    assert policies.authentication is not None and policies.authentication.required
    assert list(policies.authentication.issuers) == [ISSUER]


def test_a_second_authentication_document_is_a_load_error(tmp_path: Path, key: Any) -> None:
    with pytest.raises(PolicyLoadError) as failed:
        _load(tmp_path, _authentication([key]), _authentication([key]))
    assert "at most one Authentication document" in failed.value.format()


def test_authentication_problems_are_reported_at_their_field(tmp_path: Path) -> None:
    text = """\
apiVersion: authz-server/v1alpha1
kind: Authentication
metadata:
  name: agents
spec:
  issuers:
  - issuer: https://idp.example.com
    audiences: [https://mcp.example.com/mcp]
    jwks:
      uri: http://idp.example.com/jwks.json
  dpop:
    mode: sometimes
"""
    with pytest.raises(PolicyLoadError) as failed:
        _load(tmp_path, text)
    issues = {issue.field: issue.line for issue in failed.value.issues}
    assert issues == {"spec.issuers[0].jwks.uri": 10, "spec.dpop.mode": 12}


def test_a_missing_jwks_file_is_a_load_error(tmp_path: Path) -> None:
    text = _authentication([]).replace('"inline": {"keys": []}', '"file": "jwks.json"')
    with pytest.raises(PolicyLoadError) as failed:
        _load(tmp_path, text)
    assert "jwks.json" in failed.value.format()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ec_key().jwk()]}))
    assert _load(tmp_path, text).authentication is not None


def test_a_misspelt_identity_field_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "who.yaml").write_text(POLICY.replace("identity.Subject", "identity.Subjet"))
    with pytest.raises(PolicyLoadError) as failed:
        load_directory(tmp_path)
    assert "Subjet" in failed.value.format()


def test_without_a_document_a_gateways_verified_claims_give_method_gateway(
    tmp_path: Path,
) -> None:
    (tmp_path / "who.yaml").write_text(POLICY)
    server = Server(tmp_path, None)
    try:
        check = check_request_from_shorthand({"tool": "get_issue", "arguments": {}})
        check.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
            {"jwt_payload": {"iss": ISSUER, "sub": "alice", "tools": ["get_issue"]}}
        )
        decision = server.authorizer.check(request_from_check(check))
        assert decision.allowed, decision.body
        assert [(h.key, h.value) for h in decision.headers] == [("x-agent", "gateway:alice")]
        anonymous = server.call()
        assert "seen: error=missing method=" in _body(anonymous)["error"]["message"]
    finally:
        server.authorizer.stop()


def test_the_servers_key_stores_and_verifications_are_counted(tmp_path: Path, key: Any) -> None:
    from prometheus_client import CollectorRegistry

    from authz_server.observe import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    jwks = JwksServer([key])
    (tmp_path / "who.yaml").write_text(POLICY)
    (tmp_path / "authentication.yaml").write_text(_authentication(None, uri=jwks.url))
    authorizer = PolicyAuthorizer(PolicyStore(tmp_path), observers=(metrics,), metrics=metrics)
    authorizer.start()
    try:
        assert registry.get_sample_value("authz_jwks_keys", {"issuer": ISSUER}) == 1
        assert registry.get_sample_value(
            "authz_jwks_fetches_total", {"issuer": ISSUER, "result": "ok"}
        )
        check = check_request_from_shorthand(
            {
                "tool": "get_issue",
                "arguments": {},
                "headers": {"authorization": f"Bearer {token(key, time.time())}"},
            }
        )
        authorizer.check(request_from_check(check))
        verified = {"issuer": ISSUER, "method": "bearer", "outcome": "verified"}
        assert registry.get_sample_value("authz_identity_verifications_total", verified) == 1
    finally:
        authorizer.stop()
        jwks.close()
