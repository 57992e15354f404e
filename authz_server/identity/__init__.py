"""The identity stage: a request's credentials -> an immutable :class:`Identity`.

Access tokens (JWT, RFC 9068) verified with issuers' JWK sets fetched in the background, DPoP
proofs (RFC 9449), client certificates (RFC 8705) and SPIFFE IDs, in identity.md §8's order.
It imports nothing from the rest of authz_server but the shared request value and error root.
"""

from authz_server.identity.config import (
    AuthenticationConfig,
    DpopConfig,
    DpopMode,
    IssuerConfig,
    JwksSource,
    MtlsConfig,
    parse_authentication,
    parse_duration,
)
from authz_server.identity.dpop import Claim
from authz_server.identity.errors import (
    AuthenticationConfigError,
    ConfigIssue,
    IdentityError,
    InvalidKey,
    JwksFetchError,
    VerificationFailed,
)
from authz_server.identity.jwks import JwksObserver, KeySet, KeyStore
from authz_server.identity.model import Identity, Method, Reason
from authz_server.identity.verifier import Verifier

__all__ = [
    "AuthenticationConfig",
    "AuthenticationConfigError",
    "Claim",
    "ConfigIssue",
    "DpopConfig",
    "DpopMode",
    "Identity",
    "IdentityError",
    "InvalidKey",
    "IssuerConfig",
    "JwksFetchError",
    "JwksObserver",
    "JwksSource",
    "KeySet",
    "KeyStore",
    "Method",
    "MtlsConfig",
    "Reason",
    "VerificationFailed",
    "Verifier",
    "parse_authentication",
    "parse_duration",
]
