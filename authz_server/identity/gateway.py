"""Claims a gateway already verified: Envoy ``jwt_authn`` with ``payload_in_metadata``, or
agentgateway's ``jwtAuth``, both handed over in ``metadata_context`` under
``envoy.filters.http.jwt_authn``. Used only when no issuer is configured here: with issuers
configured, this server verifies the token itself and ignores what the metadata claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz_server.identity.model import Identity, Method, freeze
from authz_server.request import Request

NAMESPACE = "envoy.filters.http.jwt_authn"
# agentgateway's name; Envoy's is whatever payload_in_metadata says.
PAYLOAD_KEY = "jwt_payload"


def gateway_claims(request: Request) -> Mapping[str, Any] | None:
    """The verified payload in the request's metadata, or None when there is none."""
    namespace = request.metadata.get(NAMESPACE)
    if not isinstance(namespace, Mapping) or not namespace:
        return None
    payload = namespace.get(PAYLOAD_KEY)
    if payload is None and len(namespace) == 1:
        payload = next(iter(namespace.values()))
    return payload if isinstance(payload, Mapping) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def gateway_identity(claims: Mapping[str, Any], *, spiffe_id: str, thumbprint: str) -> Identity:
    act = claims.get("act")
    scope = claims.get("scope")
    return Identity(
        authenticated=True,
        method=Method.GATEWAY,
        issuer=_text(claims.get("iss")),
        subject=_text(claims.get("sub")),
        client_id=_text(claims.get("client_id")) or _text(claims.get("azp")),
        audiences=(claims["aud"],)
        if isinstance(claims.get("aud"), str)
        else _strings(claims.get("aud")),
        scopes=_strings(scope if scope is not None else claims.get("scp")),
        claims=freeze(dict(claims)),
        actor=_text(act.get("sub")) if isinstance(act, Mapping) else "",
        spiffe_id=spiffe_id,
        certificate_thumbprint=thumbprint,
    )
