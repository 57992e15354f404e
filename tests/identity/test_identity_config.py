"""The Authentication spec -> AuthenticationConfig, and the errors an operator sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server.identity import (
    AuthenticationConfigError,
    DpopMode,
    parse_authentication,
    parse_duration,
)
from tests.identity.helpers import ec_key, rsa_key

DESIGN_EXAMPLE = """
required: false
resourceMetadata: https://mcp.example.com/.well-known/oauth-protected-resource
issuers:
- issuer: https://idp.example.com
  audiences: ["https://mcp.example.com/mcp"]
  jwks: {uri: "https://idp.example.com/jwks.json", refresh: 5m}
  algorithms: [RS256, ES256, EdDSA]
  clockSkew: 60s
dpop: {mode: optional, maxAge: 300s, origin: "https://mcp.example.com"}
mtls: {trustDomains: ["example.org"]}
"""


def issues(spec: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(AuthenticationConfigError) as caught:
        parse_authentication(spec, **kwargs)
    return {issue.field: issue.message for issue in caught.value.issues}


def issuer(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "issuer": "https://idp.example.com",
        "audiences": ["https://mcp.example.com/mcp"],
        "jwks": {"uri": "https://idp.example.com/jwks.json"},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def test_the_design_example_parses() -> None:
    config = parse_authentication(yaml.safe_load(DESIGN_EXAMPLE))
    entry = config.issuers["https://idp.example.com"]
    assert entry.audiences == ("https://mcp.example.com/mcp",)
    assert entry.jwks.uri == "https://idp.example.com/jwks.json"
    assert entry.jwks.refresh == 300
    assert entry.algorithms == {"RS256", "ES256", "EdDSA"}
    assert entry.clock_skew == 60
    assert not entry.allow_plain_jwt
    assert config.dpop.mode is DpopMode.OPTIONAL
    assert config.dpop.max_age == 300
    assert config.dpop.origin == "https://mcp.example.com"
    assert config.mtls is not None and config.mtls.trust_domains == {"example.org"}
    assert config.required is False
    assert config.resource_metadata.endswith("/oauth-protected-resource")


def test_an_empty_spec_configures_nothing() -> None:
    config = parse_authentication({})
    assert config.issuers == {}
    assert config.mtls is None
    assert config.dpop.mode is DpopMode.OPTIONAL


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["60", 60, "5 m", "m", "1d", "-5s", ""])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_an_unknown_field_is_named_with_its_path() -> None:
    found = issues({"issuers": [issuer(audience=["x"])], "dpopp": {}})
    assert "spec.issuers[0].audience" in found
    assert "spec.dpopp" in found


def test_every_problem_is_reported_at_once() -> None:
    found = issues(
        {
            "required": "yes",
            "issuers": [issuer(audiences=[], clockSkew="10m", algorithms=["HS256", "none"])],
            "dpop": {"mode": "sometimes"},
        }
    )
    assert set(found) == {
        "spec.required",
        "spec.issuers[0].audiences",
        "spec.issuers[0].clockSkew",
        "spec.issuers[0].algorithms[0]",
        "spec.issuers[0].algorithms[1]",
        "spec.dpop.mode",
    }
    assert "not an allowed asymmetric algorithm" in found["spec.issuers[0].algorithms[0]"]


@pytest.mark.parametrize(
    ("jwks", "message"),
    [
        ({"uri": "http://idp.example.com/jwks.json"}, "https (http only for a loopback host)"),
        ({"uri": "ftp://idp.example.com/jwks.json"}, "scheme must be"),
        ({"uri": "https://user:pw@idp.example.com/jwks"}, "must not carry credentials"),
        ({"uri": "https:///jwks"}, "must name a host"),
        ({"uri": "https://a", "file": "keys.json"}, "exactly one of uri, file or inline"),
        ({}, "exactly one of uri, file or inline"),
        ({"uri": "https://a", "refresh": "0s"}, "between"),
    ],
)
def test_jwks_source_errors(jwks: dict[str, Any], message: str) -> None:
    found = issues({"issuers": [issuer(jwks=jwks)]})
    assert any(message in text for text in found.values()), found


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.8.9.10"])
def test_plain_http_is_allowed_for_loopback_only(host: str) -> None:
    config = parse_authentication({"issuers": [issuer(jwks={"uri": f"http://{host}:8080/k"})]})
    assert config.issuers["https://idp.example.com"].jwks.uri.startswith("http://")


def test_a_relative_jwks_file_is_read_from_the_policies_directory(tmp_path: Path) -> None:
    config = parse_authentication(
        {"issuers": [issuer(jwks={"file": "keys/jwks.json"})]}, base_dir=tmp_path
    )
    assert config.issuers["https://idp.example.com"].jwks.file == str(tmp_path / "keys/jwks.json")


def test_inline_keys_are_checked_at_load() -> None:
    good = ec_key().jwk()
    private = {**rsa_key().jwk(), "d": "AQAB"}
    symmetric = {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
    found = issues({"issuers": [issuer(jwks={"inline": {"keys": [good, private, symmetric]}})]})
    assert "private" in found["spec.issuers[0].jwks.inline.keys[1]"]
    assert "symmetric" in found["spec.issuers[0].jwks.inline.keys[2]"]
    assert "spec.issuers[0].jwks.inline.keys[0]" not in found
    found = issues({"issuers": [issuer(jwks={"inline": {"keys": []}})]})
    assert found == {"spec.issuers[0].jwks.inline": "holds no usable key"}


def test_a_repeated_issuer_is_an_error() -> None:
    found = issues({"issuers": [issuer(), issuer()]})
    assert found == {"spec.issuers[1].issuer": "names an issuer already listed"}


def test_plain_jwt_flag() -> None:
    config = parse_authentication({"issuers": [issuer(allowPlainJWT=True)]})
    assert config.issuers["https://idp.example.com"].allow_plain_jwt


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("https://MCP.example.com", "https://mcp.example.com"),
        ("https://mcp.example.com:443/", "https://mcp.example.com"),
        ("http://localhost:8080", "http://localhost:8080"),
    ],
)
def test_dpop_origin_is_normalized(origin: str, normalized: str) -> None:
    assert parse_authentication({"dpop": {"origin": origin}}).dpop.origin == normalized


@pytest.mark.parametrize(
    "origin", ["https://mcp.example.com/mcp", "mcp.example.com", "https://h?x=1", "wss://h"]
)
def test_dpop_origin_must_be_an_origin(origin: str) -> None:
    assert "spec.dpop.origin" in issues({"dpop": {"origin": origin}})


def test_dpop_settings() -> None:
    config = parse_authentication(
        {"dpop": {"mode": "required", "maxAge": "30s", "clockSkew": "5s"}}
    )
    assert (config.dpop.mode, config.dpop.max_age, config.dpop.clock_skew) == (
        DpopMode.REQUIRED,
        30,
        5,
    )
    assert "spec.dpop.maxAge" in issues({"dpop": {"maxAge": "2h"}})


@pytest.mark.parametrize("domain", ["Example.org", "example.org:8443", "exa mple.org", ""])
def test_trust_domains_follow_the_spiffe_rules(domain: str) -> None:
    assert "spec.mtls.trustDomains[0]" in issues({"mtls": {"trustDomains": [domain]}})


def test_resource_metadata_must_be_https() -> None:
    assert "spec.resourceMetadata" in issues({"resourceMetadata": "http://mcp.example.com/x"})


def test_the_error_text_lists_fields() -> None:
    with pytest.raises(AuthenticationConfigError) as caught:
        parse_authentication({"issuers": [issuer(audiences="x")]})
    assert str(caught.value) == "spec.issuers[0].audiences: must be a non-empty list of strings"
