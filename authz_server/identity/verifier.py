"""Request -> :class:`Identity`, in identity.md §8's order, never raising.

0. Request shape: one ``Authorization`` with scheme ``Bearer`` or ``DPoP`` (case-insensitive)
   (a comma means Envoy joined two headers); at most one ``DPoP`` header.
1. The peer: certificate thumbprint, SPIFFE ID and trust domain.
2-4. The access token (:mod:`.jwt`), cached per token.
   The scheme against the binding: a DPoP-bound token sent as ``Bearer`` is refused, and so is
   any ``Bearer`` token under ``dpop.mode: required``; the ``DPoP`` scheme needs a bound token.
5-6. The DPoP proof (:mod:`.dpop`), every request.
7. The certificate binding (``cnf["x5t#S256"]``).
8. Single use of the proof (the only step that changes state).

Without a token: claims a gateway verified (only when no issuer is configured), else the peer's
SPIFFE ID under ``mtls``, else ``missing``. Any unexpected exception becomes a ``malformed``
failure: a bug must deny, never allow, and its message (which could quote input) is not logged.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from authz_server.identity.config import AuthenticationConfig, DpopMode
from authz_server.identity.dpop import Claim, ProofVerifier
from authz_server.identity.errors import VerificationFailed
from authz_server.identity.gateway import gateway_claims, gateway_identity
from authz_server.identity.jwks import KeyStore
from authz_server.identity.jwt import DEFAULT_CACHE_SIZE, AccessTokenVerifier
from authz_server.identity.model import Identity, Method, Reason
from authz_server.identity.mtls import NO_PEER, PeerIdentity, PeerVerifier, check_binding
from authz_server.request import Request

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Credential:
    dpop: bool
    token: str


def _authorization(request: Request) -> _Credential | None:
    value = request.headers.get("authorization", "").strip()
    if not value:
        return None
    if "," in value:
        raise VerificationFailed(Reason.MALFORMED, "more than one Authorization header")
    scheme, _, token = value.partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "dpop"):
        return None
    # The token's format (J1) is checked by the token verifier, after its cache.
    token = token.strip(" ")
    if not token:
        raise VerificationFailed(Reason.MALFORMED, "the token is empty")
    return _Credential(scheme == "dpop", token)


class Verifier:
    """Verifies the credentials of requests under one :class:`AuthenticationConfig`.

    ``keys`` serves the issuers' JWK sets (started by the caller); ``claim(key, ttl_seconds)``
    claims a DPoP proof's replay key once in the shared state store (True when it was free).
    ``clock`` gives Unix seconds. One instance per policy set: the token cache lives in it.
    """

    def __init__(
        self,
        config: AuthenticationConfig,
        keys: KeyStore,
        claim: Claim | None,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.config = config
        self._tokens = AccessTokenVerifier(config.issuers, keys, clock=clock, cache_size=cache_size)
        self._proofs = ProofVerifier(config.dpop, claim, clock=clock)
        self._peers = PeerVerifier(config.mtls)

    def verify(self, request: Request, *, claim: bool = True) -> Identity:
        """The caller's identity; a failure is an Identity with ``error`` set, never an
        exception. ``claim=False`` skips the single use of a DPoP proof (step 8): for a second
        look at a request whose proof was already claimed when it was authorized (the response
        phase of the same exchange, which filters a list), never to authorize one."""
        try:
            return self._verify(request, claim)
        except VerificationFailed as failed:
            return Identity.failure(failed.reason, failed.detail, unavailable=failed.unavailable)
        except Exception as exc:
            log.error(
                "identity verification failed unexpectedly (%s); denying\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            return Identity.failure(Reason.MALFORMED, "internal error")

    def _verify(self, request: Request, claim: bool = True) -> Identity:
        credential = _authorization(request)
        peer = self._peers.peer(request.source)
        if credential is None or (not self.config.issuers and gateway_claims(request)):
            return self._without_token(request, peer)
        if not self.config.issuers:
            raise VerificationFailed(Reason.WRONG_ISSUER, "no issuer is configured")
        token = self._tokens.verify(credential.token)
        mode = self.config.dpop.mode
        proof = None
        seen: bytes | None = None
        if not credential.dpop:
            if token.jkt:
                raise VerificationFailed(
                    Reason.DPOP_REQUIRED, "a DPoP-bound token was sent as a Bearer token"
                )
            if mode is DpopMode.REQUIRED:
                raise VerificationFailed(Reason.DPOP_REQUIRED, "tokens must be DPoP-bound")
        else:
            if mode is DpopMode.DISABLED:
                raise VerificationFailed(Reason.DPOP_INVALID, "DPoP is disabled")
            if not token.jkt:
                raise VerificationFailed(Reason.DPOP_INVALID, "the token is not DPoP-bound")
            text = request.headers.get("dpop", "").strip()
            if not text:
                raise VerificationFailed(Reason.DPOP_REQUIRED, "no DPoP proof")
            if claim:
                seen = self._proofs.seen_key(text, credential.token, request)
            if seen is not None and self._proofs.replayed(seen):
                # The proof's checks passed before; only the binding can answer otherwise.
                if token.x5t:
                    check_binding(token.x5t, peer)
                raise VerificationFailed(Reason.DPOP_REPLAYED, "the DPoP proof was already used")
            proof = self._proofs.check(text, request, token)
        if token.x5t:
            check_binding(token.x5t, peer)
        if proof is not None:
            if claim:
                self._proofs.claim(proof, seen)
        elif peer is NO_PEER:
            return token.identity
        return Identity(
            authenticated=True,
            method=Method.DPOP if proof is not None else Method.BEARER,
            issuer=token.issuer,
            subject=token.subject,
            client_id=token.client_id,
            audiences=token.audiences,
            scopes=token.scopes,
            claims=token.claims,
            actor=token.actor,
            spiffe_id=peer.spiffe_id,
            certificate_thumbprint=peer.thumbprint,
            key_thumbprint=proof.thumbprint if proof is not None else "",
        )

    def _without_token(self, request: Request, peer: PeerIdentity) -> Identity:
        if not self.config.issuers:
            claims = gateway_claims(request)
            if claims is not None:
                return gateway_identity(
                    claims, spiffe_id=peer.spiffe_id, thumbprint=peer.thumbprint
                )
        if peer.spiffe_id:
            return Identity(
                authenticated=True,
                method=Method.MTLS,
                spiffe_id=peer.spiffe_id,
                certificate_thumbprint=peer.thumbprint,
            )
        return Identity.failure(Reason.MISSING, "no credential")
