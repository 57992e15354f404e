"""deploy/envoy/envoy-http-service.yaml parses as an Envoy v3 Bootstrap (official protos, strictly)
and wires Envoy's HTTP authorization service to authz-server's HTTP authorizer as intended: the
agent's path unchanged, the body and the headers the pipeline reads forwarded, failing closed,
and a request Envoy builds from it judged as documented by a served HTTP authorizer."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server.mcp.limits import Limits
from tests.deploy.test_deploy_envoy import parse_with_official_protos
from tests.httpauthz.client import send
from tests.serving import ServerProcess, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "deploy" / "envoy" / "envoy-http-service.yaml"

# What the pipeline reads from a request's headers: credentials (identity stage), the body's
# framing and MCP's own headers (decoder), and Envoy's partial-body marker.
READ_BY_THE_PIPELINE = (
    "authorization",
    "dpop",
    "content-type",
    "content-encoding",
    "mcp-protocol-version",
    "mcp-session-id",
    "mcp-method",
    "mcp-name",
    "x-envoy-auth-partial-body",
    "x-request-id",
    "x-gateway",  # any header an HTTP-mode policy reads
)


def load_yaml() -> dict[str, Any]:
    return yaml.safe_load(BOOTSTRAP.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    done = parse_with_official_protos(load_yaml())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ext_authz(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    filters = hcm["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    return filters[0]["typed_config"]


def _cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    return cluster


def test_ext_authz_calls_the_http_authorizer_with_the_agents_path(parsed: dict[str, Any]) -> None:
    config = _ext_authz(parsed)
    assert "grpc_service" not in config
    service = config["http_service"]
    assert service["server_uri"]["cluster"] == "authz-server-http"
    assert service["server_uri"]["uri"].endswith(":9003")
    assert service["server_uri"]["timeout"] == "0.500s"
    # A prefix would change the path the HTTP-mode policies judge.
    assert service["path_prefix"] == ""


def test_the_whole_body_reaches_the_authorizer(parsed: dict[str, Any]) -> None:
    body = _ext_authz(parsed)["with_request_body"]
    assert body["max_request_bytes"] == Limits().max_body_bytes
    assert body["allow_partial_message"] is False


def test_fails_closed_with_503(parsed: dict[str, Any]) -> None:
    config = _ext_authz(parsed)
    assert config["failure_mode_allow"] is False
    assert config["status_on_error"]["code"] == 503


def _forwarded(patterns: list[dict[str, Any]], name: str) -> bool:
    """Envoy's StringMatcher on a header name (lower case, as Envoy compares them)."""
    for pattern in patterns:
        if pattern.get("exact") and pattern["exact"] == name:
            return True
        if pattern.get("prefix") and name.startswith(pattern["prefix"]):
            return True
        regex = pattern.get("safe_regex", {}).get("regex")
        if regex and re.fullmatch(regex, name):
            return True
    return False


def test_the_headers_the_pipeline_reads_are_forwarded(parsed: dict[str, Any]) -> None:
    patterns = _ext_authz(parsed)["allowed_headers"]["patterns"]
    missing = [h for h in READ_BY_THE_PIPELINE if not _forwarded(patterns, h)]
    assert missing == []


def test_the_authorizer_cluster_is_health_checked_on_readyz(parsed: dict[str, Any]) -> None:
    cluster = _cluster(parsed, "authz-server-http")
    assert not cluster.get("typed_extension_protocol_options")  # HTTP/1.1, not HTTP/2
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 9003
    assert endpoint["endpoint"]["health_check_config"]["port_value"] == 9001
    (check,) = cluster["health_checks"]
    assert check["http_health_check"]["path"] == "/readyz"


def test_a_misspelt_field_is_rejected() -> None:
    document = copy.deepcopy(load_yaml())
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    authz = hcm["typed_config"]["http_filters"][0]["typed_config"]
    authz["http_service"]["server_url"] = authz["http_service"].pop("server_uri")
    done = parse_with_official_protos(document)
    assert done.returncode == 1 and "server_url" in done.stderr


# -- What the authorizer does with the request Envoy builds from this file ----------------------

POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: tools
spec:
  evaluation:
    mode: HTTP
  validations:
  - expression: >
      mcp.ToolCall.Name == "delete_repo"
        ? http.Denied("deleting repositories is not allowed").Response()
        : http.Allowed().Response()
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("http-service")
    (directory / "tools.yaml").write_text(POLICY)
    server = start_server(directory)
    yield server
    stop_server(server)


def _as_envoy_sends_it(body: bytes, partial: bool = False) -> tuple[tuple[str, str], ...]:
    """The agent's headers after the allow-list, plus what Envoy adds."""
    agent = {
        "host": "mcp.example.com",
        "authorization": "Bearer not-verified-here",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-06-18",
        "mcp-session-id": "s-1",
        "user-agent": "agent/1.0",
    }
    patterns = _ext_authz(json.loads(parse_with_official_protos(load_yaml()).stdout))[
        "allowed_headers"
    ]["patterns"]
    kept = {
        k: v for k, v in agent.items() if k in ("host", "authorization") or _forwarded(patterns, k)
    }
    kept["x-envoy-auth-partial-body"] = "true" if partial else "false"
    kept["content-length"] = str(len(body))
    return tuple(kept.items())


def _call(tool: str) -> bytes:
    message = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": tool}}
    return json.dumps(message).encode()


def test_a_tool_call_through_this_envoy_is_judged_by_the_http_mode_policy(
    served: ServerProcess,
) -> None:
    body = _call("get_issue")
    assert (
        send(served.http_authz_port, "POST", "/mcp", _as_envoy_sends_it(body), body).status == 200
    )
    body = _call("delete_repo")
    refused = send(served.http_authz_port, "POST", "/mcp", _as_envoy_sends_it(body), body)
    assert refused.status == 403 and refused.headers["content-type"] == "application/json"
    assert json.loads(refused.body)["error"] == {
        "code": -31403,
        "message": "deleting repositories is not allowed",
    }
    cut = body[:20]
    truncated = send(served.http_authz_port, "POST", "/mcp", _as_envoy_sends_it(cut, True), cut)
    assert truncated.status == 413
