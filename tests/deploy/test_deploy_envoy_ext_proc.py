"""deploy/envoy/envoy-ext-proc.yaml parses as an Envoy v3 Bootstrap and wires authz-server as its
external processor the way authz-server expects: parsed strictly by the official Envoy protos
(xds-protos) in the wire interpreter, then read as Envoy would read it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy_envoy import parse_with_official_protos

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "deploy" / "envoy" / "envoy-ext-proc.yaml"

# envoy.extensions.filters.http.ext_proc.v3.ProcessingMode enums, as the checker prints them.
SEND, SKIP = 1, 2
NONE, STREAMED, BUFFERED = 0, 1, 2


def load_yaml() -> dict[str, Any]:
    return yaml.safe_load(BOOTSTRAP.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    done = parse_with_official_protos(load_yaml())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _listener(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    return listener


def _ext_proc(bootstrap: dict[str, Any]) -> dict[str, Any]:
    ((hcm,),) = [chain["filters"] for chain in _listener(bootstrap)["filter_chains"]]
    filters = hcm["typed_config"]["http_filters"]
    # ext_proc alone judges the request (no ext_authz: a DPoP proof is good for one judgement),
    # and the router comes last.
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    return filters[0]["typed_config"]


def test_authz_server_is_the_external_processor_over_grpc(parsed: dict[str, Any]) -> None:
    config = _ext_proc(parsed)
    assert config["@type"].endswith("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor")
    service = config["grpc_service"]
    assert service["envoy_grpc"]["cluster_name"] == "authz-server"
    # A stream lasts as long as its HTTP exchange: no deadline on the whole stream.
    assert "timeout" not in service
    assert config["message_timeout"] == "1s"


def test_the_request_is_judged_whole_before_it_goes_upstream(parsed: dict[str, Any]) -> None:
    mode = _ext_proc(parsed)["processing_mode"]
    assert (mode["request_header_mode"], mode["request_body_mode"]) == (SEND, BUFFERED)
    assert mode["request_trailer_mode"] == SKIP


def test_responses_stream_and_authz_server_may_choose_per_response(
    parsed: dict[str, Any],
) -> None:
    from authz_server.envoy.ext_proc import OVERRIDES

    config = _ext_proc(parsed)
    mode = config["processing_mode"]
    assert (mode["response_header_mode"], mode["response_body_mode"]) == (SEND, STREAMED)
    assert mode["response_trailer_mode"] == SKIP
    assert config["allow_mode_override"] is True
    # Envoy takes an override only if it equals an allowed mode (request_header_mode aside):
    # the list must be exactly what the server sends.
    allowed = [
        {k: v for k, v in m.items() if k != "request_header_mode"}
        for m in config["allowed_override_modes"]
    ]
    sent = [
        {
            "response_header_mode": o.response_header_mode,
            "request_body_mode": o.request_body_mode,
            "response_body_mode": o.response_body_mode,
            "request_trailer_mode": o.request_trailer_mode,
            "response_trailer_mode": o.response_trailer_mode,
        }
        for o in OVERRIDES
    ]
    assert allowed == sent
    assert sorted(m["response_body_mode"] for m in allowed) == [NONE, STREAMED, BUFFERED]


def test_fails_closed_with_503(parsed: dict[str, Any]) -> None:
    config = _ext_proc(parsed)
    assert config["failure_mode_allow"] is False
    assert config["status_on_error"]["code"] == 503
    assert config["observability_mode"] is False


def test_buffers_hold_what_the_server_decodes_and_filters(parsed: dict[str, Any]) -> None:
    from authz_server.config import ServeConfig
    from authz_server.mcp.limits import Limits

    limit = _listener(parsed)["per_connection_buffer_limit_bytes"]
    assert limit == Limits().max_body_bytes == ServeConfig(Path(".")).ext_proc_max_body_bytes


def test_the_identity_stage_gets_the_peer_and_the_gateways_claims(
    parsed: dict[str, Any],
) -> None:
    from authz_server.envoy.ext_proc import METADATA_NAMESPACE

    config = _ext_proc(parsed)
    assert {"source.address", "request.id", "connection.uri_san_peer_certificate"} <= set(
        config["request_attributes"]
    )
    options = config["metadata_options"]
    assert options["forwarding_namespaces"]["untyped"] == ["envoy.filters.http.jwt_authn"]
    assert options["receiving_namespaces"]["untyped"] == [METADATA_NAMESPACE]


def test_the_health_check_names_the_service_envoy_calls(parsed: dict[str, Any]) -> None:
    from authz_server.serve.server import EXT_PROC_SERVICE

    (cluster,) = [c for c in parsed["static_resources"]["clusters"] if c["name"] == "authz-server"]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == EXT_PROC_SERVICE


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda c: c["processing_mode"].__setitem__("response_body_mode", "STREAM"), "STREAM"),
        (lambda c: c.__setitem__("allow_mode_overrides", True), "allow_mode_overrides"),
        (
            lambda c: c["allowed_override_modes"][0].__setitem__("response_body", "NONE"),
            "response_body",
        ),
    ],
    ids=["bad-enum", "misspelt-field", "misspelt-override-field"],
)
def test_a_broken_copy_is_rejected(mutate: Any, complaint: str) -> None:
    document = copy.deepcopy(load_yaml())
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    mutate(hcm["typed_config"]["http_filters"][0]["typed_config"])
    done = parse_with_official_protos(document)
    assert done.returncode == 1
    assert complaint in done.stderr
