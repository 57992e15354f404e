"""Real keys, tokens, proofs, certificates and a JWKS endpoint for the identity tests.

Everything is made with ``cryptography`` (keys, certificates) and PyJWT's algorithm objects
(signatures); the JWK set is served over loopback HTTP by :class:`JwksServer`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from authz_server.identity import (
    AuthenticationConfig,
    Identity,
    KeyStore,
    Verifier,
    parse_authentication,
)
from authz_server.identity.keys import ASYMMETRIC_ALGORITHMS
from authz_server.request import Peer, Request

ISSUER = "https://idp.example.com"
AUDIENCE = "https://mcp.example.com/mcp"
ORIGIN = "https://mcp.example.com"
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Clock:
    """A settable clock; ``advance`` moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryClaims:
    """The in-memory stand-in for the state store's atomic claim."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.entries: dict[str, float] = {}
        self.calls: list[tuple[str, float]] = []

    def __call__(self, key: str, ttl: float) -> bool:
        self.calls.append((key, ttl))
        now = self.clock()
        if self.entries.get(key, -1.0) > now:
            return False
        self.entries[key] = now + ttl
        return True


@dataclass
class SigningKey:
    """A private key with its kid and the algorithm it signs with."""

    private: Any
    alg: str
    kid: str

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            data = RSAAlgorithm.to_jwk(self.public, as_dict=True)
        elif isinstance(self.private, ec.EllipticCurvePrivateKey):
            data = ECAlgorithm.to_jwk(self.public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(self.public, as_dict=True)
        data = {**data, "kid": self.kid, "use": "sig"}
        if with_alg:
            data["alg"] = self.alg
        data.update(extra)
        return data

    def public_jwk(self) -> dict[str, Any]:
        """The bare public JWK a DPoP proof carries (no kid, no alg)."""
        return {k: v for k, v in self.jwk(with_alg=False).items() if k not in ("kid", "use")}

    def thumbprint(self) -> str:
        jwk = self.public_jwk()
        required = {
            "RSA": ("e", "kty", "n"),
            "EC": ("crv", "kty", "x", "y"),
            "OKP": ("crv", "kty", "x"),
        }
        members = {k: jwk[k] for k in required[jwk["kty"]]}
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
        return b64(hashlib.sha256(canonical.encode()).digest())

    def sign(self, signing_input: bytes, alg: str | None = None) -> bytes:
        return get_default_algorithms()[alg or self.alg].sign(signing_input, self.private)


def rsa_key(kid: str = "rsa-1", alg: str = "RS256", bits: int = 2048) -> SigningKey:
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=bits), alg, kid)


def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), "ES256", kid)


def ed_key(kid: str = "ed-1") -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid)


def compact(
    header: Mapping[str, Any] | str,
    payload: Mapping[str, Any] | str,
    key: SigningKey | None,
    *,
    alg: str | None = None,
) -> str:
    """A compact JWS of exactly this header and payload (a str is used as raw JSON)."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(h.encode())}.{b64(p.encode())}"
    signature = key.sign(signing_input.encode(), alg) if key is not None else b"\0" * 64
    return f"{signing_input}.{b64(signature)}"


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    """RFC 9068 access token claims, valid at ``now``; an override of None removes a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "client_id": "agent-7",
        "iat": int(now) - 10,
        "exp": int(now) + 300,
        "jti": uuid.uuid4().hex,
        "scope": "tools:read tools:call",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(
    key: SigningKey, now: float = NOW, *, header: Mapping[str, Any] | None = None, **overrides: Any
) -> str:
    """An access token signed by ``key``; ``header`` entries override (None removes). The
    signature uses the header's ``alg`` when it is an asymmetric one, else the key's own."""
    h: dict[str, Any] = {"typ": "at+jwt", "alg": key.alg, "kid": key.kid}
    h.update(header or {})
    h = {k: v for k, v in h.items() if v is not None}
    alg = h.get("alg")
    sign_alg = alg if alg in ASYMMETRIC_ALGORITHMS else key.alg
    return compact(h, claims(now, **overrides), key, alg=sign_alg)


def ath(access_token: str) -> str:
    return b64(hashlib.sha256(access_token.encode()).digest())


def proof(
    key: SigningKey,
    access_token: str | None,
    now: float = NOW,
    *,
    method: str = "POST",
    url: str = f"{ORIGIN}/mcp",
    header: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> str:
    """A DPoP proof for ``access_token`` (None: no ath) signed by ``key``."""
    h: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.public_jwk()}
    h.update(header or {})
    h = {k: v for k, v in h.items() if v is not None}
    body: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(now)}
    if access_token is not None:
        body["ath"] = ath(access_token)
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not None}
    return compact(h, body, key)


def request(
    authorization: str | None = None,
    dpop: str | None = None,
    *,
    method: str = "POST",
    path: str = "/mcp",
    host: str = "mcp.example.com",
    scheme: str = "https",
    certificate: str = "",
    principal: str = "",
    metadata: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Request:
    h = {":method": method, ":path": path, ":authority": host, **(headers or {})}
    if authorization is not None:
        h["authorization"] = authorization
    if dpop is not None:
        h["dpop"] = dpop
    return Request(
        method=method,
        path=path.partition("?")[0],
        query=path.partition("?")[2],
        host=host,
        scheme=scheme,
        headers=h,
        source=Peer(address="10.0.0.7", certificate=certificate, principal=principal),
        metadata=dict(metadata or {}),
    )


def certificate(*uris: str, ca: bool = False, dns: tuple[str, ...] = ()) -> tuple[str, str]:
    """A self-signed leaf certificate with these URI SANs: (PEM, x5t#S256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(Encoding.PEM).decode()
    return pem, b64(hashlib.sha256(cert.public_bytes(Encoding.DER)).digest())


def spec(keys: list[SigningKey] | None = None, **top: Any) -> dict[str, Any]:
    """An Authentication spec with one issuer whose keys are inline."""
    issuer: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": {"inline": {"keys": [k.jwk() for k in (keys or [])]}},
        "algorithms": ["RS256", "PS256", "ES256", "EdDSA"],
        "clockSkew": "60s",
    }
    issuer.update(top.pop("issuer", {}))
    return {
        "issuers": [issuer],
        "dpop": {"mode": "optional", "maxAge": "60s", "origin": ORIGIN},
        **top,
    }


@dataclass
class Setup:
    """A verifier over one issuer with inline keys, a fake clock and an in-memory claim."""

    keys: list[SigningKey]
    config: AuthenticationConfig
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.claims = MemoryClaims(self.clock)
        self.store = KeyStore.from_config(self.config, clock=time.monotonic)
        self.verifier = Checked(Verifier(self.config, self.store, self.claims, clock=self.clock))


class Checked:
    """A verifier that also asserts no verification ended in its last-resort handler: a check
    that refuses by crashing would deny too, and would hide the check's absence."""

    def __init__(self, inner: Verifier) -> None:
        self.inner = inner

    def verify(self, request: Request) -> Identity:
        identity = self.inner.verify(request)
        assert identity.detail != "internal error", "verification crashed"
        return identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def setup_from(raw: Mapping[str, Any]) -> Setup:
    """A verifier for a spec written out in full."""
    return Setup([], parse_authentication(raw))


def setup(keys: list[SigningKey] | None = None, **top: Any) -> Setup:
    keys = keys if keys is not None else [rsa_key()]
    return Setup(keys, parse_authentication(spec(keys, **top)))


class JwksServer:
    """A JWK set served over loopback HTTP from a thread; the document can be replaced, the
    endpoint taken down (503), made to redirect or held (an answer waits until ``held`` is
    cleared, at most 10 s), and requests are counted."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.document: bytes = b""
        self.publish(keys)
        self.down = False
        self.redirect_to = ""
        self.hits = 0
        self.hit = threading.Event()
        self.held = False
        self._release = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                outer.hit.set()
                with outer._release:
                    outer._release.wait_for(lambda: not outer.held, timeout=10)
                if outer.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", outer.redirect_to)
                    self.end_headers()
                    return
                if outer.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.document)))
                self.end_headers()
                self.wfile.write(outer.document)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def hold(self, held: bool = True) -> None:
        with self._release:
            self.held = held
            self._release.notify_all()

    def publish(self, keys: list[SigningKey]) -> None:
        self.document = json.dumps({"keys": [k.jwk() for k in keys]}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def count_signatures(monkeypatch: Any) -> list[str]:
    """Record the algorithm of every signature check from now on (``monkeypatch`` undoes it)."""
    from authz_server.identity.keys import VerificationKey

    calls: list[str] = []
    original = VerificationKey.verify

    def counting(self: VerificationKey, alg: str, data: bytes, sig: bytes) -> bool:
        calls.append(alg)
        return original(self, alg, data, sig)

    monkeypatch.setattr(VerificationKey, "verify", counting)
    return calls
