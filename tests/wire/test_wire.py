"""Wire compatibility: a client built only from the official Envoy protos talks to the server.

Responses are decoded with the official xds-protos types in a separate interpreter, so a field
number or type that differs from upstream shows up here as a missing or garbled field.
"""

from __future__ import annotations

import json

from conftest import ServerProcess, official

REASON = "merging is reserved for humans"


def _jsonrpc_error(body: str) -> dict:
    """The policy's reason reaches an MCP client as a JSON-RPC error carrying the request id."""
    payload = json.loads(body)
    assert payload["jsonrpc"] == "2.0" and payload["id"] == 7
    return payload["error"]


def _headers(options: list[dict]) -> dict[str, tuple[str, str]]:
    return {o["header"]["key"]: (o["header"]["value"], o.get("append_action", "")) for o in options}


def test_allow_with_header_mutations(server: ServerProcess) -> None:
    reply = official(server.target, "allow")["allow"]
    assert reply.get("status", {}).get("code", 0) == 0
    ok = reply["ok_response"]
    assert _headers(ok["headers"])["x-authz-policy"] == (
        "github-no-merge",
        "OVERWRITE_IF_EXISTS_OR_ADD",
    )
    assert ok["headers_to_remove"] == ["authorization"]
    assert _headers(ok["response_headers_to_add"])["x-authz"][0] == "allowed"
    assert "denied_response" not in reply


def test_deny_with_status_headers_and_body(server: ServerProcess) -> None:
    reply = official(server.target, "deny")["deny"]
    assert reply["status"]["code"] == 7
    denied = reply["denied_response"]
    assert denied["status"]["code"] == "Forbidden"
    assert _jsonrpc_error(denied["body"])["message"] == REASON
    assert _headers(denied["headers"])["content-type"][0] == "application/json"
    assert _headers(denied["headers"])["x-denied-by"][0] == "github-no-merge"


def test_raw_body_is_read(server: ServerProcess) -> None:
    reply = official(server.target, "raw_body_deny")["raw_body_deny"]
    assert _jsonrpc_error(reply["denied_response"]["body"])["message"] == REASON


def test_one_mib_body(server: ServerProcess) -> None:
    reply = official(server.target, "one_mib_allow")["one_mib_allow"]
    assert reply.get("status", {}).get("code", 0) == 0
    assert "ok_response" in reply


def test_unknown_fields_from_a_newer_envoy_are_ignored(server: ServerProcess) -> None:
    reply = official(server.target, "unknown_fields")["unknown_fields"]
    assert reply.get("status", {}).get("code", 0) == 0
    assert _headers(reply["ok_response"]["headers"])["x-authz-policy"][0] == "github-no-merge"


def test_garbage_bytes_fail_without_harm(server: ServerProcess) -> None:
    replies = official(server.target, "garbage", "allow", "health")
    garbage = replies["garbage"]
    assert garbage.get("rpc_error") or garbage["status"]["code"] != 0
    assert replies["allow"].get("status", {}).get("code", 0) == 0
    assert server.proc.poll() is None


def test_health_is_serving_after_load(server: ServerProcess) -> None:
    assert official(server.target, "health")["health"] == {
        "": "SERVING",
        "envoy.service.auth.v3.Authorization": "SERVING",
    }
