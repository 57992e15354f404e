"""Demo credentials for the example ``Authentication`` document (policies/authentication.yaml).

DEMO ONLY. The private keys in ``examples/identity/keys/`` are published with this repository,
so anyone can sign tokens with them: they exist to try the identity stage by hand and to record
the tokens in ``policies/tests/``. Never let a real deployment trust ``policies/jwks.json``.

Commands (run with the project's environment, e.g. ``.venv/bin/python examples/identity/mint.py``):

- ``request``: a CheckRequest in proto-JSON, as Envoy would send it, carrying a fresh token (and
  DPoP proof) for ``authz-server check``::

      mint.py request --tool create_pull_request --dpop \\
        | .venv/bin/authz-server check --server localhost:9000 --request -

- ``token``: an access token (RFC 9068, ``typ: at+jwt``) from ``https://idp.example.com`` for
  ``https://mcp.example.com/mcp``; ``--dpop`` binds it (``cnf.jkt``) to the demo agent key.
- ``proof``: a DPoP proof (RFC 9449) signed with the demo agent key, for one request.
- ``certificate``: an X509-SVID (a self-signed leaf whose only URI SAN is a SPIFFE ID), PEM.
- ``keys``: make new demo keys and rewrite ``policies/jwks.json`` (every recorded token in
  ``policies/tests/`` then stops verifying; copy jwks.json to ``deploy/kubernetes/policies/``).

``--now`` (RFC 3339 or Unix seconds) sets the issue time, so a token or proof can be recorded
for a PolicyTest whose ``spec.now`` is that time.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

HERE = Path(__file__).resolve().parent
KEYS = HERE / "keys"
JWKS = HERE.parent.parent / "policies" / "jwks.json"
ISSUER = "https://idp.example.com"
AUDIENCE = "https://mcp.example.com/mcp"
# The origin clients sign in a proof's htu (dpop.origin in authentication.yaml) and the path.
URL = "https://mcp.example.com/mcp"
# Issuer keys: file name -> (kid, JWS algorithm). The agent's DPoP key is its own.
ISSUER_KEYS = {
    "issuer-es256.pem": ("demo-es256", "ES256"),
    "issuer-eddsa.pem": ("demo-eddsa", "EdDSA"),
}
AGENT_KEY = "agent-dpop-es256.pem"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_time(text: str | None) -> int:
    """``--now``: RFC 3339 with a zone or Unix seconds; the current time when not given."""
    if text is None:
        return int(time.time())
    try:
        return int(float(text))
    except ValueError:
        pass
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise SystemExit(f"--now {text!r} needs a time zone (Z or +hh:mm)")
    return int(moment.timestamp())


def load_key(name: str) -> Any:
    return serialization.load_pem_private_key((KEYS / name).read_bytes(), password=None)


def public_jwk(key: Any) -> dict[str, str]:
    """The public JWK of a private key (no private members)."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    return OKPAlgorithm.to_jwk(public, as_dict=True)


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("crv", "kty", "x")
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def mint_token(args: argparse.Namespace) -> str:
    issued = parse_time(args.now)
    file = next(f for f, (_, alg) in ISSUER_KEYS.items() if alg.lower() == args.key)
    kid, alg = ISSUER_KEYS[file]
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": args.audience,
        "sub": args.sub,
        "client_id": args.client_id or args.sub,
        "iat": issued,
        "exp": issued + args.lifetime,
        "jti": str(uuid.uuid4()),
    }
    if args.scope:
        claims["scope"] = args.scope
    if args.tools is not None:
        claims["tools"] = [t for t in args.tools.split(",") if t]
    if args.dpop:
        claims["cnf"] = {"jkt": thumbprint(public_jwk(load_key(AGENT_KEY)))}
    headers = {"typ": "at+jwt", "kid": kid}
    return jwt.encode(claims, load_key(file), algorithm=alg, headers=headers)


def mint_proof(token: str, method: str, url: str, now: str | None) -> str:
    key = load_key(AGENT_KEY)
    claims = {
        "jti": str(uuid.uuid4()),
        "htm": method,
        "htu": url,
        "iat": parse_time(now),
        "ath": b64url(hashlib.sha256(token.encode("ascii")).digest()),
    }
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(key)}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


def mint_certificate(spiffe_id: str, now: str | None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime.fromtimestamp(parse_time(now), datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "authz-server demo")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def check_request(args: argparse.Namespace) -> dict[str, Any]:
    """A CheckRequest as Envoy sends it for a tools/call to https://mcp.example.com/mcp."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": args.tool, "arguments": json.loads(args.arguments)},
        },
        separators=(",", ":"),
    )
    headers = {
        ":authority": "mcp.example.com",
        ":method": "POST",
        ":path": "/mcp",
        ":scheme": "https",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-06-18",
    }
    if not args.anonymous:
        token = mint_token(args)
        if args.dpop:
            headers["authorization"] = f"DPoP {token}"
            headers["dpop"] = mint_proof(token, "POST", URL, args.now)
        else:
            headers["authorization"] = f"Bearer {token}"
    source: dict[str, Any] = {"address": {"socket_address": {"address": "10.0.0.7"}}}
    if args.principal:
        source["principal"] = args.principal
    if args.certificate:
        # Envoy's include_peer_certificate sends the leaf as URL-encoded PEM.
        source["certificate"] = quote(Path(args.certificate).read_text(), safe="")
    http = {
        "method": "POST",
        "path": "/mcp",
        "host": "mcp.example.com",
        "scheme": "https",
        "protocol": "HTTP/1.1",
        "headers": headers,
        "body": body,
        "size": str(len(body.encode())),
    }
    return {"attributes": {"source": source, "request": {"http": http}}}


def make_keys(_: argparse.Namespace) -> None:
    KEYS.mkdir(exist_ok=True)
    made = {
        "issuer-es256.pem": ec.generate_private_key(ec.SECP256R1()),
        "issuer-eddsa.pem": ed25519.Ed25519PrivateKey.generate(),
        AGENT_KEY: ec.generate_private_key(ec.SECP256R1()),
    }
    for name, key in made.items():
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (KEYS / name).write_bytes(pem)
    keys = []
    for name, (kid, alg) in ISSUER_KEYS.items():
        jwk = public_jwk(made[name])
        ordered = {k: jwk[k] for k in ("kty", "crv", "x", "y") if k in jwk}
        keys.append({**ordered, "kid": kid, "alg": alg, "use": "sig"})
    JWKS.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
    print(f"wrote {KEYS}/*.pem and {JWKS}; copy it to deploy/kubernetes/policies/", file=sys.stderr)


def _token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", default="release-bot", help="subject (default release-bot)")
    parser.add_argument("--client-id", help="client_id (default: the subject)")
    parser.add_argument("--tools", help="comma-separated tool names for the 'tools' claim")
    parser.add_argument("--scope", help="space-separated scopes")
    parser.add_argument("--key", choices=("es256", "eddsa"), default="es256")
    parser.add_argument("--dpop", action="store_true", help="bind to the demo agent's DPoP key")
    parser.add_argument("--audience", default=AUDIENCE, help=f"aud (default {AUDIENCE})")
    parser.add_argument("--lifetime", type=int, default=3600, help="seconds (default 3600)")
    parser.add_argument("--now", help="issue time, RFC 3339 or Unix seconds (default: now)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _token_options(commands.add_parser("token", help="an access token"))
    proof = commands.add_parser("proof", help="a DPoP proof for a token")
    proof.add_argument("--token", required=True, help="the access token the proof goes with")
    proof.add_argument("--method", default="POST")
    proof.add_argument("--url", default=URL, help=f"the htu (default {URL})")
    proof.add_argument("--now", help="iat, RFC 3339 or Unix seconds (default: now)")
    cert = commands.add_parser("certificate", help="an X509-SVID for a SPIFFE ID, PEM")
    cert.add_argument("--spiffe-id", default="spiffe://example.org/agents/ci")
    cert.add_argument("--now", help="start of validity (default: now)")
    request = commands.add_parser("request", help="a CheckRequest for authz-server check")
    _token_options(request)
    request.add_argument("--tool", default="get_issue")
    request.add_argument("--arguments", default='{"owner": "acme", "repo": "api"}', help="JSON")
    request.add_argument("--anonymous", action="store_true", help="no token")
    request.add_argument("--principal", help="source.principal, e.g. a SPIFFE ID")
    request.add_argument("--certificate", help="a PEM file sent as source.certificate")
    commands.add_parser("keys", help="new demo keys and policies/jwks.json")
    args = parser.parse_args(argv)
    if args.command == "token":
        print(mint_token(args))
    elif args.command == "proof":
        print(mint_proof(args.token, args.method, args.url, args.now))
    elif args.command == "certificate":
        print(mint_certificate(args.spiffe_id, args.now), end="")
    elif args.command == "request":
        print(json.dumps(check_request(args), indent=2))
    else:
        make_keys(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
