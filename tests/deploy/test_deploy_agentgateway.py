"""deploy/agentgateway: the configurations point at authz-server and forward the MCP body.

agentgateway's own schema is not vendored here; these tests pin the fields that decide whether
authz-server sees the tool call at all, and check that a request shaped the way agentgateway sends
it (no x-envoy-auth-partial-body header, size -1 for a cut body) is decided as documented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from authz_server.decision import DecidedBy
from authz_server.envoy.adapter import CheckRequest, request_from_check
from authz_server.mcp.limits import Limits
from authz_server.policy.engine import Engine, EngineOptions
from authz_server.policy.loader import load_directory
from authz_server.policy.offline import DecisionPath
from authz_server.policy.testing import decide

ROOT = Path(__file__).resolve().parents[2]
STANDALONE = ROOT / "deploy" / "agentgateway" / "config.yaml"
EXT_PROC = ROOT / "deploy" / "agentgateway" / "config-ext-proc.yaml"
KUBERNETES = ROOT / "deploy" / "agentgateway" / "kubernetes" / "agentgateway-policy.yaml"


def _ext_authz_routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    routes = [
        route
        for bind in config["binds"]
        for listener in bind["listeners"]
        for route in listener["routes"]
    ]
    assert routes
    return routes


def test_every_route_is_checked_by_authz_server_over_grpc_with_the_body() -> None:
    config = yaml.safe_load(STANDALONE.read_text(encoding="utf-8"))
    for route in _ext_authz_routes(config):
        authz = route["policies"]["extAuthz"]
        assert authz["host"].rsplit(":", 1)[1] == "9000"
        assert "grpc" in authz["protocol"]  # the Envoy Authorization/Check protocol
        assert authz["failureMode"] == "deny"
        body = authz["includeRequestBody"]
        assert body["maxRequestBytes"] == Limits().max_body_bytes
        assert body["allowPartialMessage"] is False
        assert body["packAsBytes"] is True
        assert authz["policies"]["http"]["requestTimeout"] == "500ms"
        # The identity stage's headers: gRPC extAuthz sends all of them unless a list narrows it.
        listed = authz.get("includeRequestHeaders")
        assert listed is None or {"authorization", "dpop"} <= {h.lower() for h in listed}
        assert [list(b) for b in route["backends"]] == [["mcp"]]


def test_kubernetes_policy_targets_the_authz_server_service_and_forwards_the_body() -> None:
    policy, _lists, grant = yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8"))
    assert (policy["apiVersion"], policy["kind"]) == (
        "agentgateway.dev/v1alpha1",
        "AgentgatewayPolicy",
    )
    ext = policy["spec"]["traffic"]["extAuth"]
    assert ext["backendRef"] == {"name": "authz-server", "namespace": "authz-server", "port": 9000}
    assert ext["failureMode"] == "FailClosed"
    assert ext["forwardBody"]["maxSize"] == "4Mi"
    assert Limits().max_body_bytes == 4 * 1024 * 1024
    services = yaml.safe_load_all((ROOT / "deploy/kubernetes/service.yaml").read_text("utf-8"))
    (service,) = [s for s in services if s["metadata"]["name"] == ext["backendRef"]["name"]]
    assert {p["port"]: p.get("appProtocol") for p in service["spec"]["ports"]}[9000] == "grpc"
    namespace = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())[
        "namespace"
    ]
    assert namespace == ext["backendRef"]["namespace"] == grant["metadata"]["namespace"]
    assert grant["spec"]["from"] == [
        {
            "group": "agentgateway.dev",
            "kind": "AgentgatewayPolicy",
            "namespace": policy["metadata"]["namespace"],
        }
    ]


def _routes(path: Path) -> list[dict[str, Any]]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [r for b in config["binds"] for listener in b["listeners"] for r in listener["routes"]]


def test_list_results_are_filtered_through_ext_mcp_for_the_caller() -> None:
    """mcpGuardrails: the response side of every list method, failing closed, with the caller's
    headers and path in the metadata (the response hook has no headers of its own)."""
    for route in _routes(STANDALONE):
        (processor,) = route["policies"]["mcpGuardrails"]["processors"]
        assert processor["kind"] == "remote"
        assert processor["host"] == route["policies"]["extAuthz"]["host"]  # the same port
        assert processor["failureMode"] == "failClosed"
        # Calls stay with extAuthz: judging them twice would spend a DPoP proof twice.
        assert processor["methods"] == {"*/list": "response"}
        assert processor["metadata"] == {"headers": "request.headers", "path": "request.path"}
    documents = list(yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8")))
    (lists,) = [d for d in documents if d["metadata"]["name"] == "authz-server-lists"]
    (remote,) = lists["spec"]["backend"]["mcp"]["guardrails"]["processors"]
    assert remote["methods"] == {"*/list": "Response"}
    assert remote["remote"]["backendRef"]["name"] == "authz-server"
    assert remote["remote"]["failureMode"] == "FailClosed"
    assert remote["remote"]["metadata"] == processor["metadata"]


def test_the_metadata_the_recipe_sends_makes_the_caller() -> None:
    """What mcpGuardrails sends (headers and path as metadata) is what the ExtMcp adapter reads
    the caller from."""
    from authz_server.agentgateway.ext_mcp import response_caller

    (route,) = _routes(STANDALONE)
    (processor,) = route["policies"]["mcpGuardrails"]["processors"]
    # agentgateway evaluates each CEL expression over the request; here, their results.
    request_values = {
        "request.headers": {"authorization": "Bearer t", "dpop": "proof"},
        "request.path": "/mcp",
    }
    metadata = {key: request_values[cel] for key, cel in processor["metadata"].items()}
    request = response_caller("tools/list", metadata)
    assert request.path == "/mcp"
    assert (request.headers["authorization"], request.headers["dpop"]) == ("Bearer t", "proof")
    # The credentials are headers, never metadata that policies or the audit log would show.
    assert "headers" not in json.dumps(request.metadata)


def test_the_ext_proc_recipe_judges_whole_requests_and_streams_responses() -> None:
    (route,) = _routes(EXT_PROC)
    assert "extAuthz" not in route["policies"]  # one judgement per request
    ext = route["policies"]["extProc"]
    assert ext["host"].rsplit(":", 1)[1] == "9000"
    assert ext["failureMode"] == "failClosed"
    options = ext["processingOptions"]
    assert options["requestBodyMode"] == "buffered"
    # agentgateway has no STREAMED mode: responses go full duplex, with trailers sent.
    assert options["responseBodyMode"] == "fullDuplexStreamed"
    assert options["responseTrailerMode"] == "send"
    assert ext["requestAttributes"]["source.address"] == "source.address"


def _agentgateway_check(body: str, *, size: int, content_length: bool) -> CheckRequest:
    """A CheckRequest as agentgateway's gRPC client builds it: pseudo-headers, no partial header."""
    message = CheckRequest()
    http = message.attributes.request.http
    http.method, http.path, http.host, http.scheme = "POST", "/mcp", "mcp.example", "http"
    headers = {
        ":authority": "mcp.example",
        ":method": "POST",
        ":path": "/mcp",
        ":scheme": "http",
        "content-type": "application/json",
    }
    if content_length:
        headers["content-length"] = str(len(body.encode()) + 100)
    http.headers.update(headers)
    http.raw_body = body.encode()
    http.size = size
    return message


CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_issue", "arguments": {"owner": "acme", "issue_number": 7}},
    }
)


def test_size_minus_one_alone_marks_the_body_truncated() -> None:
    # agentgateway >= 1.2 sends -1 if and only if it cut the body, whatever the prefix holds.
    request = request_from_check(_agentgateway_check(CALL, size=-1, content_length=False))
    assert request.body_truncated is True
    whole = request_from_check(_agentgateway_check(CALL, size=len(CALL), content_length=False))
    assert whole.body_truncated is False


def test_a_cut_body_from_agentgateway_is_denied() -> None:
    engine = Engine(load_directory(ROOT / "policies"), EngineOptions())
    # allowPartialMessage: true (the Kubernetes controller's forwardBody) sends a prefix with
    # size -1 and no header: denied before policies run, with or without a content-length.
    cut = CALL[: len(CALL) // 2]
    for content_length in (True, False):
        decision = decide(engine, _agentgateway_check(cut, size=-1, content_length=content_length))
        assert not decision.allowed, (content_length, decision)
        assert decision.decided_by == DecidedBy.DECODE  # before any policy ran
    whole = decide(engine, _agentgateway_check(CALL, size=len(CALL), content_length=False))
    assert whole.allowed, whole


def test_the_spiffe_id_agentgateway_sends_as_principal_identifies_the_agent() -> None:
    # agentgateway sends no certificate, only the verified peer's SPIFFE ID in source.principal;
    # the example Authentication document (mtls.trustDomains) takes it, and the CI agent's
    # allow-list applies.
    def call(tool: str) -> str:
        params = {"name": tool, "arguments": {"owner": "acme", "pullNumber": 7}}
        return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})

    with DecisionPath(load_directory(ROOT / "policies")) as path:
        for body, allowed in ((call("get_pull_request"), True), (call("get_issue"), False)):
            message = _agentgateway_check(body, size=len(body), content_length=False)
            anonymous = path.decide(message)
            assert anonymous.allowed, anonymous  # without a principal: the other policies
            message.attributes.source.principal = "spiffe://example.org/agents/ci"
            decision = path.decide(message)
            assert decision.allowed is allowed, decision
            if not allowed:
                assert (decision.http_status, decision.policy) == (403, "identity-spiffe-agents")


# -- The plain-HTTP variant (config-http.yaml) --------------------------------------------------

HTTP_VARIANT = ROOT / "deploy" / "agentgateway" / "config-http.yaml"
# What the pipeline reads from headers: agentgateway's HTTP protocol sends only `authorization`
# unless the list names more.
READ_BY_THE_PIPELINE = {
    "authorization",
    "dpop",
    "content-type",
    "content-encoding",
    "mcp-protocol-version",
    "mcp-session-id",
    "mcp-method",
    "mcp-name",
}


def test_the_http_variant_calls_the_http_authorizer_with_the_body_and_the_headers_read() -> None:
    config = yaml.safe_load(HTTP_VARIANT.read_text(encoding="utf-8"))
    for route in _ext_authz_routes(config):
        authz = route["policies"]["extAuthz"]
        assert authz["host"].rsplit(":", 1)[1] == "9003"
        http = authz["protocol"]["http"]
        # No `path` expression: the authorizer judges the agent's own path.
        assert "path" not in http and "body" not in http
        assert authz["failureMode"] == "deny"
        body = authz["includeRequestBody"]
        assert body["maxRequestBytes"] == Limits().max_body_bytes
        assert body["allowPartialMessage"] is False
        assert {h.lower() for h in authz["includeRequestHeaders"]} >= READ_BY_THE_PIPELINE
        assert authz["policies"]["http"]["requestTimeout"] == "500ms"
        assert [list(b) for b in route["backends"]] == [["mcp"]]


def test_the_gateway_ports_match_the_server_defaults() -> None:
    from authz_server.config import ServeConfig

    config = ServeConfig(policies=ROOT / "policies")
    assert config.grpc_address.port == 9000
    assert config.http_authz_address is not None and config.http_authz_address.port == 9003
