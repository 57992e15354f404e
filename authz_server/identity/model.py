"""The verified caller: :class:`Identity`, and the stable reason codes of a failed verification.

An :class:`Identity` is built once per request, before the policies run, and never changes; a
repeated token yields the same verified claims from the cache, so the values inside are shared
between requests and frozen all the way down (mappings are read-only, lists are tuples).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Reason(enum.StrEnum):
    """Why verification failed: the ``identity.Error`` values of design.md."""

    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
    DPOP_REQUIRED = "dpop_required"
    DPOP_INVALID = "dpop_invalid"
    DPOP_REPLAYED = "dpop_replayed"
    CERTIFICATE_MISMATCH = "certificate_mismatch"
    KEYS_UNAVAILABLE = "keys_unavailable"


class Method(enum.StrEnum):
    """How the caller proved who it is (``identity.Method``)."""

    NONE = ""
    BEARER = "bearer"
    DPOP = "dpop"
    MTLS = "mtls"
    GATEWAY = "gateway"


EMPTY_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def freeze(value: Any) -> Any:
    """A read-only copy of a JSON value: dicts become read-only mappings, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Identity:
    """Who is calling, as verified (design.md's ``identity`` variable).

    ``authenticated`` is true only when a credential was presented and every check passed; then
    ``error`` is empty. On failure every other field is empty: a policy must not act on half a
    verification. ``detail`` and ``unavailable`` are for the server, not for policies: ``detail``
    is fixed text naming the failed check (never a credential), ``unavailable`` marks a failure
    of a dependency (keys never fetched, the replay store down) to be answered with 503.
    """

    authenticated: bool = False
    method: Method = Method.NONE
    issuer: str = ""
    subject: str = ""
    client_id: str = ""
    audiences: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=lambda: EMPTY_CLAIMS)
    actor: str = ""
    spiffe_id: str = ""
    certificate_thumbprint: str = ""
    key_thumbprint: str = ""
    error: str = ""
    detail: str = field(default="", compare=False)
    unavailable: bool = False

    @classmethod
    def failure(cls, reason: Reason, detail: str = "", *, unavailable: bool = False) -> Identity:
        """The identity of a failed verification. Failures carry only fixed texts, so one value
        per kind is shared: whatever the request-path caches keep per value (the CEL message)
        is built once, not on every refused request."""
        return _failure(reason, detail, unavailable)

    @functools.cached_property
    def _cel(self) -> Mapping[str, Any]:
        return MappingProxyType(
            {
                "Authenticated": self.authenticated,
                "Method": str(self.method),
                "Issuer": self.issuer,
                "Subject": self.subject,
                "ClientID": self.client_id,
                "Audiences": self.audiences,
                "Scopes": self.scopes,
                "Claims": self.claims,
                "Actor": self.actor,
                "SPIFFEID": self.spiffe_id,
                "CertificateThumbprint": self.certificate_thumbprint,
                "KeyThumbprint": self.key_thumbprint,
                "Error": self.error,
            }
        )

    def to_cel(self) -> Mapping[str, Any]:
        """The ``identity`` variable with design.md's field names (read-only, built once)."""
        return self._cel


@functools.lru_cache(maxsize=256)
def _failure(reason: Reason, detail: str, unavailable: bool) -> Identity:
    return Identity(error=str(reason), detail=detail, unavailable=unavailable)


ANONYMOUS = Identity.failure(Reason.MISSING, "no credential")
