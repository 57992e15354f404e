"""The identity stage as Envoy sees it: a real ``serve`` process with an Authentication document
(credentials required, DPoP optional) and a policy that lets only DPoP callers call tools,
driven by the client built from the official Envoy protos.

Tokens and proofs are minted here, with keys from ``cryptography``, and handed to the official
client on stdin; its answers are the CheckResponses decoded with the official types.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import IdentityPolicies, official, state_environment

from tests.identity.helpers import ec_key, token
from tests.serving import ServerProcess, start_server, stop_server

METADATA = "https://mcp.example.com/.well-known/oauth-protected-resource"


@pytest.fixture(scope="module")
def server(
    identity_policies: IdentityPolicies, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    state = tmp_path_factory.mktemp("state")
    running = start_server(identity_policies.directory, env=state_environment(state))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def answers(identity_policies: IdentityPolicies, server: ServerProcess) -> dict[str, dict]:
    """Every request of this module in one run of the official client, in this order (the
    replay must come after the proof's first use)."""
    bound = identity_policies.bound_token()
    dpop = identity_policies.dpop(bound)
    stranger = ec_key("issuer-1")
    headers = {
        "dpop": dpop,
        "replay": dpop,
        "fresh_proof": identity_policies.dpop(bound),
        "none": {},
        "wrong_issuer": {
            "authorization": f"Bearer {token(stranger, iss='https://elsewhere.example.com')}"
        },
        "bearer": {"authorization": f"Bearer {identity_policies.bearer_token()}"},
    }
    replies = official(server.target, *(f"call:{label}" for label in headers), headers=headers)
    replies["credentials"] = headers  # for the tests that look for leaks
    return replies


def _headers(options: list[dict]) -> dict[str, str]:
    return {o["header"]["key"]: o["header"]["value"] for o in options}


def _denied(reply: dict, status: str) -> tuple[dict[str, str], dict]:
    """The denial's headers and JSON-RPC error, as Envoy would pass them to the MCP client."""
    assert reply["status"]["code"] != 0 and "ok_response" not in reply, reply
    denied = reply["denied_response"]
    assert denied["status"]["code"] == status
    headers = _headers(denied["headers"])
    assert headers["content-type"] == "application/json"
    body = json.loads(denied["body"])
    assert body["jsonrpc"] == "2.0" and body["id"] == 7
    return headers, body["error"]


def test_a_bound_token_with_a_valid_proof_is_allowed_as_dpop(answers: dict) -> None:
    reply = answers["call:dpop"]
    assert reply.get("status", {}).get("code", 0) == 0, reply
    # The policy allows only identity.Method == "dpop": the proof was verified.
    assert _headers(reply["ok_response"]["headers"]) == {"x-caller": "dpop:user-1"}


def test_the_same_proof_again_is_refused_with_invalid_dpop_proof(answers: dict) -> None:
    headers, error = _denied(answers["call:replay"], "Unauthorized")
    challenge = headers["www-authenticate"]
    assert challenge.startswith('DPoP error="invalid_dpop_proof", error_description="dpop_replayed')
    assert ' algs="' in challenge and f'resource_metadata="{METADATA}"' in challenge
    assert error["code"] == -31401 and "dpop_replayed" in error["message"]
    # A new proof for the same token is accepted: the refusal was the replay, not the token.
    assert answers["call:fresh_proof"].get("status", {}).get("code", 0) == 0


def test_no_credentials_get_a_challenge_for_each_scheme_without_error(answers: dict) -> None:
    headers, error = _denied(answers["call:none"], "Unauthorized")
    challenge = headers["www-authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{METADATA}", DPoP algs="')
    assert "error=" not in challenge
    assert error["code"] == -31401 and "missing" in error["message"]


def test_a_token_from_another_issuer_is_refused_with_invalid_token(answers: dict) -> None:
    headers, error = _denied(answers["call:wrong_issuer"], "Unauthorized")
    challenge = headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="wrong_issuer')
    assert error["code"] == -31401 and "wrong_issuer" in error["message"]


def test_a_valid_bearer_token_reaches_the_policy_which_wants_a_proof(answers: dict) -> None:
    reply = answers["call:bearer"]
    denied = reply["denied_response"]
    assert denied["status"]["code"] == "Forbidden"
    assert "www-authenticate" not in _headers(denied["headers"])
    message = json.loads(denied["body"])["error"]["message"]
    assert message == "proof of possession required, got: bearer"


def test_no_credential_reaches_an_answer(answers: dict) -> None:
    seen = json.dumps({label: reply for label, reply in answers.items() if label != "credentials"})
    for headers in answers["credentials"].values():
        for value in headers.values():
            for part in value.split(" ")[-1].split("."):
                assert part not in seen
