"""The ``Authentication`` document's ``spec`` -> a frozen :class:`AuthenticationConfig`.

Every problem is collected with the path of its field (``spec.issuers[1].jwks.uri``) so the
policy loader can report them all at once; an unknown field is an error, never ignored (a
misspelt ``audiences`` must not widen what is accepted). Durations are Go-style strings
(``90s``, ``5m``, ``1h30m``, ``500ms``), as in Kubernetes documents.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authz_server.identity.errors import AuthenticationConfigError, ConfigIssue, InvalidKey
from authz_server.identity.keys import ASYMMETRIC_ALGORITHMS, parse_key_set
from authz_server.identity.spiffe import valid_trust_domain
from authz_server.identity.urls import normalize_url

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_REFRESH = 300.0
MIN_REFRESH = 1.0
DEFAULT_CLOCK_SKEW = 60.0
# RFC 7519/9068: a small leeway, "at most a few minutes".
MAX_CLOCK_SKEW = 300.0
DEFAULT_DPOP_MAX_AGE = 60.0
MAX_DPOP_MAX_AGE = 3600.0
DEFAULT_DPOP_CLOCK_SKEW = 30.0

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class DpopMode(enum.StrEnum):
    DISABLED = "disabled"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class JwksSource:
    """Where an issuer's keys come from: exactly one of ``uri``, ``file`` or ``inline``."""

    uri: str = ""
    file: str = ""
    inline: Mapping[str, Any] | None = None
    refresh: float = DEFAULT_REFRESH


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks: JwksSource
    algorithms: frozenset[str] = frozenset(DEFAULT_ALGORITHMS)
    clock_skew: float = DEFAULT_CLOCK_SKEW
    # RFC 9068 tokens carry typ at+jwt; some providers still issue plain JWT access tokens.
    allow_plain_jwt: bool = False


@dataclass(frozen=True, slots=True)
class DpopConfig:
    mode: DpopMode = DpopMode.OPTIONAL
    max_age: float = DEFAULT_DPOP_MAX_AGE
    # How far in the future a proof's iat may lie (clocks of agents drift).
    clock_skew: float = DEFAULT_DPOP_CLOCK_SKEW
    # Normalised public origin (scheme://host[:port]) the clients address, "" to use the
    # request's own :scheme and :authority.
    origin: str = ""


@dataclass(frozen=True, slots=True)
class MtlsConfig:
    trust_domains: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    """A validated ``Authentication`` spec. The default value (no document) configures no
    issuer, optional DPoP and no mTLS."""

    issuers: Mapping[str, IssuerConfig] = field(default_factory=dict)
    dpop: DpopConfig = field(default_factory=DpopConfig)
    mtls: MtlsConfig | None = None
    required: bool = False
    resource_metadata: str = ""


def parse_duration(value: Any) -> float:
    """Seconds in a Go-style duration string; ValueError otherwise."""
    if not isinstance(value, str) or _DURATION.fullmatch(value) is None:
        raise ValueError("must be a duration such as 30s, 5m or 1h30m")
    return sum(float(n) * _UNIT[unit] for n, unit in _DURATION_PART.findall(value))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(value: Any, *, loopback_http: bool) -> str:
    """Why ``value`` is not a URL keys may be fetched from ("" when it is one): https, or with
    ``loopback_http`` plain http to a loopback host, with a host and without credentials. The
    rule for ``jwks.uri`` and for the policies' ``jwks.Fetch(url)``."""
    if not isinstance(value, str) or not value:
        return "must be a URL"
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if not host:
        return "must name a host"
    if not (
        parts.scheme == "https" or (loopback_http and parts.scheme == "http" and is_loopback(host))
    ):
        allowed = "https (http only for a loopback host)" if loopback_http else "https"
        return f"scheme must be {allowed}"
    if normalize_url(value) is None:  # a path with spaces, a bad percent-escape ...
        return "is not a valid URL"
    return ""


class _Parser:
    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def fail(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))

    def mapping(self, value: Any, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(path, "must be a mapping")
            return {}
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return value

    def duration(self, value: Any, path: str, default: float, low: float, high: float) -> float:
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return default
        if not low <= seconds <= high:
            self.fail(path, f"must lie between {low:g}s and {high:g}s")
            return default
        return seconds

    def boolean(self, value: Any, path: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(path, "must be true or false")
            return False
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            self.fail(path, "must be a non-empty list of strings")
            return ()
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.fail(f"{path}[{i}]", "must be a non-empty string")
        return tuple(item for item in value if isinstance(item, str) and item)

    def url(self, value: Any, path: str, *, loopback_http: bool) -> str:
        problem = url_problem(value, loopback_http=loopback_http)
        if problem:
            self.fail(path, problem)
            return ""
        return str(value)

    def spec(self, spec: Any) -> AuthenticationConfig:
        spec = self.mapping(
            spec, "spec", frozenset({"required", "resourceMetadata", "issuers", "dpop", "mtls"})
        )
        required = self.boolean(spec.get("required"), "spec.required")
        metadata = ""
        if spec.get("resourceMetadata") is not None:
            metadata = self.url(
                spec["resourceMetadata"], "spec.resourceMetadata", loopback_http=False
            )
        issuers: dict[str, IssuerConfig] = {}
        raw_issuers = spec.get("issuers")
        if raw_issuers is not None:
            if not isinstance(raw_issuers, list):
                self.fail("spec.issuers", "must be a list")
            else:
                for i, raw in enumerate(raw_issuers):
                    issuer = self.issuer(raw, f"spec.issuers[{i}]")
                    if issuer is None:
                        continue
                    if issuer.issuer in issuers:
                        self.fail(f"spec.issuers[{i}].issuer", "names an issuer already listed")
                    issuers[issuer.issuer] = issuer
        dpop = self.dpop(spec.get("dpop"), "spec.dpop")
        mtls = None if spec.get("mtls") is None else self.mtls(spec["mtls"], "spec.mtls")
        return AuthenticationConfig(issuers, dpop, mtls, required, metadata)

    def issuer(self, raw: Any, path: str) -> IssuerConfig | None:
        raw = self.mapping(
            raw,
            path,
            frozenset({"issuer", "audiences", "jwks", "algorithms", "clockSkew", "allowPlainJWT"}),
        )
        name = raw.get("issuer")
        if not isinstance(name, str) or not name:
            self.fail(f"{path}.issuer", "must be a non-empty string")
            name = ""
        audiences = self.strings(raw.get("audiences"), f"{path}.audiences")
        jwks = self.jwks(raw.get("jwks"), f"{path}.jwks")
        algorithms = frozenset(DEFAULT_ALGORITHMS)
        if raw.get("algorithms") is not None:
            listed = self.strings(raw["algorithms"], f"{path}.algorithms")
            for i, alg in enumerate(listed):
                if alg not in ASYMMETRIC_ALGORITHMS:
                    self.fail(
                        f"{path}.algorithms[{i}]",
                        f"{alg!r} is not an allowed asymmetric algorithm "
                        f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})",
                    )
            algorithms = frozenset(a for a in listed if a in ASYMMETRIC_ALGORITHMS) or algorithms
        skew = self.duration(
            raw.get("clockSkew"), f"{path}.clockSkew", DEFAULT_CLOCK_SKEW, 0.0, MAX_CLOCK_SKEW
        )
        plain = self.boolean(raw.get("allowPlainJWT"), f"{path}.allowPlainJWT")
        if not name or jwks is None:
            return None
        return IssuerConfig(name, audiences, jwks, algorithms, skew, plain)

    def jwks(self, raw: Any, path: str) -> JwksSource | None:
        raw = self.mapping(raw, path, frozenset({"uri", "file", "inline", "refresh"}))
        given = [k for k in ("uri", "file", "inline") if raw.get(k) is not None]
        if len(given) != 1:
            self.fail(path, "must have exactly one of uri, file or inline")
            return None
        refresh = self.duration(
            raw.get("refresh"), f"{path}.refresh", DEFAULT_REFRESH, MIN_REFRESH, 86400.0
        )
        if "uri" in given:
            uri = self.url(raw["uri"], f"{path}.uri", loopback_http=True)
            return JwksSource(uri=uri, refresh=refresh) if uri else None
        if "file" in given:
            name = raw["file"]
            if not isinstance(name, str) or not name:
                self.fail(f"{path}.file", "must be a file path")
                return None
            file = Path(name)
            if not file.is_absolute() and self.base_dir is not None:
                file = self.base_dir / file
            return JwksSource(file=str(file), refresh=refresh)
        return self.inline(raw["inline"], f"{path}.inline", refresh)

    def inline(self, raw: Any, path: str, refresh: float) -> JwksSource | None:
        try:
            keys, rejected = parse_key_set(raw)
        except InvalidKey as exc:
            self.fail(path, str(exc))
            return None
        for index, reason in rejected:
            self.fail(f"{path}.keys[{index}]", reason)
        if not keys:
            self.fail(path, "holds no usable key")
            return None
        return JwksSource(inline=raw, refresh=refresh)

    def dpop(self, raw: Any, path: str) -> DpopConfig:
        if raw is None:
            return DpopConfig()
        raw = self.mapping(raw, path, frozenset({"mode", "maxAge", "clockSkew", "origin"}))
        mode = DpopMode.OPTIONAL
        if raw.get("mode") is not None:
            try:
                mode = DpopMode(raw["mode"])
            except ValueError:
                self.fail(f"{path}.mode", "must be disabled, optional or required")
        max_age = self.duration(
            raw.get("maxAge"), f"{path}.maxAge", DEFAULT_DPOP_MAX_AGE, 1.0, MAX_DPOP_MAX_AGE
        )
        skew = self.duration(
            raw.get("clockSkew"), f"{path}.clockSkew", DEFAULT_DPOP_CLOCK_SKEW, 0.0, MAX_CLOCK_SKEW
        )
        origin = ""
        if raw.get("origin") is not None:
            origin = self.origin(raw["origin"], f"{path}.origin")
        return DpopConfig(mode, max_age, skew, origin)

    def origin(self, value: Any, path: str) -> str:
        normalized = normalize_url(value) if isinstance(value, str) else None
        if normalized is None:
            self.fail(path, "must be an http or https origin such as https://mcp.example.com")
            return ""
        parts = urlsplit(value)
        if parts.query or parts.fragment or parts.path not in ("", "/"):
            self.fail(path, "must be an origin only (no path, query or fragment)")
            return ""
        return normalized.rstrip("/")

    def mtls(self, raw: Any, path: str) -> MtlsConfig | None:
        raw = self.mapping(raw, path, frozenset({"trustDomains"}))
        domains = self.strings(raw.get("trustDomains"), f"{path}.trustDomains")
        for i, domain in enumerate(domains):
            if not valid_trust_domain(domain):
                self.fail(
                    f"{path}.trustDomains[{i}]",
                    "is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')",
                )
        return MtlsConfig(frozenset(domains))


def parse_authentication(spec: Any, *, base_dir: Path | None = None) -> AuthenticationConfig:
    """Validate an ``Authentication`` document's ``spec``. Relative ``jwks.file`` paths are
    resolved against ``base_dir`` (the policies directory). Raises
    :class:`AuthenticationConfigError` listing every problem."""
    parser = _Parser(base_dir)
    config = parser.spec(spec)
    if parser.issues:
        raise AuthenticationConfigError(parser.issues)
    return config
