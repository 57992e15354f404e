"""deploy/envoy/envoy.yaml parses as an Envoy v3 Bootstrap and wires authz-server as intended.

The bootstrap is parsed by the official Envoy protos (xds-protos) in the wire interpreter, strictly:
an unknown field, a wrong type or an unresolvable "@type" fails. The assertions then read the parsed
message, so they see what Envoy would see, not what the YAML merely looks like.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "deploy" / "envoy" / "envoy.yaml"
CHECKER = Path(__file__).resolve().parent / "envoy_bootstrap_check.py"

# Enum values in the parsed message (the checker prints enums as numbers).
API_VERSION_V3 = 2  # envoy.config.core.v3.ApiVersion: AUTO=0, V2=1, V3=2
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


def wire_python() -> str:
    python = os.environ.get("AUTHZ_WIRE_PYTHON") or str(ROOT / ".venv-wire" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(
            f"{python} not found: this test needs the official Envoy protos in their own "
            "environment; run `make wire-env` (make test does it)"
        )
    return python


def parse_with_official_protos(document: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [wire_python(), str(CHECKER)],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_yaml() -> dict[str, Any]:
    return yaml.safe_load(BOOTSTRAP.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    done = parse_with_official_protos(load_yaml())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    return hcm["typed_config"]


def _ext_authz(bootstrap: dict[str, Any]) -> dict[str, Any]:
    filters = _hcm(bootstrap)["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",  # the router must be last; ext_authz runs before it
    ]
    return filters[0]["typed_config"]


def _cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    return cluster


def test_ext_authz_calls_authz_server_over_grpc_v3(parsed: dict[str, Any]) -> None:
    config = _ext_authz(parsed)
    assert config["@type"].endswith("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    assert config["transport_api_version"] == API_VERSION_V3
    assert config["grpc_service"]["envoy_grpc"]["cluster_name"] == "authz-server"
    assert config["grpc_service"]["timeout"] == "0.500s"


def test_body_is_forwarded_whole_as_bytes_up_to_the_server_decode_limit(
    parsed: dict[str, Any],
) -> None:
    body = _ext_authz(parsed)["with_request_body"]
    assert body["max_request_bytes"] == 4 * 1024 * 1024
    assert body["allow_partial_message"] is False
    assert body["pack_as_bytes"] is True


def test_body_limit_matches_what_the_server_decodes() -> None:
    from authz_server.mcp.limits import Limits

    body = load_yaml()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    authz = body["typed_config"]["http_filters"][0]["typed_config"]
    assert authz["with_request_body"]["max_request_bytes"] == Limits().max_body_bytes


def test_fails_closed_with_503_on_authorizer_errors(parsed: dict[str, Any]) -> None:
    config = _ext_authz(parsed)
    assert config["failure_mode_allow"] is False
    assert config["status_on_error"]["code"] == 503


def test_authz_cluster_speaks_http2_and_is_health_checked_for_the_authorization_service(
    parsed: dict[str, Any],
) -> None:
    cluster = _cluster(parsed, "authz-server")
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == AUTHZ_SERVICE
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 9000


def test_the_health_checked_service_name_is_the_one_authz_server_reports() -> None:
    # Envoy counts a host healthy only when Health/Check answers SERVING for this exact name; an
    # unknown name is NOT_FOUND and the host would never receive a check.
    from authz_server.serve.server import SERVICE_NAME

    assert SERVICE_NAME == AUTHZ_SERVICE


def test_mcp_route_allows_long_lived_sse_streams(parsed: dict[str, Any]) -> None:
    (vhost,) = _hcm(parsed)["route_config"]["virtual_hosts"]
    (route,) = vhost["routes"]
    assert route["route"]["cluster"] == "mcp-server"
    assert route["route"]["timeout"] == "0s"  # no overall deadline on a stream
    assert route["route"]["idle_timeout"] == "600s"
    per_route = vhost["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_route["check_settings"]["context_extensions"] == {"mcp_server": "example"}


def test_the_credentials_the_identity_stage_reads_reach_authz_server(
    parsed: dict[str, Any],
) -> None:
    config = _ext_authz(parsed)
    # The client certificate (x5t#S256, SPIFFE ID) ...
    assert config["include_peer_certificate"] is True
    # ... and every header, `authorization` and `dpop` among them: gRPC ext_authz forwards all
    # headers unless a list narrows them (message fields are absent from the parse when unset).
    assert "allowed_headers" not in config
    assert "disallowed_headers" not in config


def _readme_tls_socket() -> dict[str, Any]:
    """The README's TLS transport socket for agents with client certificates (Agent identity)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (block,) = [b for b in blocks if "DownstreamTlsContext" in b]
    return yaml.safe_load(block)["transport_socket"]


def test_the_readme_mtls_transport_socket_is_a_valid_listener_setting() -> None:
    document = copy.deepcopy(load_yaml())
    socket = _readme_tls_socket()
    document["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = socket
    done = parse_with_official_protos(document)
    assert done.returncode == 0, done.stderr
    (chain,) = json.loads(done.stdout)["static_resources"]["listeners"][0]["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        # a misspelt field of the ext_authz filter (inside a typed Any)
        (
            lambda authz, doc: authz.__setitem__(
                "with_request_bdy", authz.pop("with_request_body")
            ),
            "with_request_bdy",
        ),
        # a field placed one level too high
        (
            lambda authz, doc: authz.__setitem__(
                "pack_as_bytes", authz["with_request_body"].pop("pack_as_bytes")
            ),
            "pack_as_bytes",
        ),
        # a misspelt enum value
        (
            lambda authz, doc: authz["status_on_error"].__setitem__("code", "ServiceUnavailabe"),
            "ServiceUnavailabe",
        ),
        # a message type that does not exist
        (
            lambda authz, doc: authz.__setitem__(
                "@type", "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuth"
            ),
            "ExtAuth",
        ),
        # a misspelt field in the health check of the authz cluster
        (
            lambda authz, doc: doc["static_resources"]["clusters"][0]["health_checks"][0][
                "grpc_health_check"
            ].__setitem__("service", AUTHZ_SERVICE),
            "service",
        ),
    ],
    ids=["misspelt-field", "misplaced-field", "bad-enum", "unknown-type", "health-check-field"],
)
def test_a_broken_copy_of_the_bootstrap_is_rejected(mutate: Any, complaint: str) -> None:
    document = copy.deepcopy(load_yaml())
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    authz = hcm["typed_config"]["http_filters"][0]["typed_config"]
    mutate(authz, document)
    done = parse_with_official_protos(document)
    assert done.returncode == 1
    assert complaint in done.stderr
