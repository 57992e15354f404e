"""Errors of the identity stage.

A credential that fails verification is not an error to the verifier's caller: the verifier turns
:class:`VerificationFailed` into an :class:`~authz_server.identity.model.Identity` carrying the
reason code. The other classes report configuration (through the policy loader) and key material
that cannot be used. No message here ever quotes a token, a proof or key material.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from authz_server.errors import AuthzServerError
from authz_server.identity.model import Reason


class IdentityError(AuthzServerError):
    """Base class of every error the identity stage raises."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in an ``Authentication`` document; ``field`` is a path such as
    ``spec.issuers[0].jwks.uri``."""

    field: str
    message: str

    def format(self) -> str:
        return f"{self.field}: {self.message}"


class AuthenticationConfigError(IdentityError):
    """The ``Authentication`` document is invalid. Carries every problem found, so one
    ``validate`` run reports them all."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(issue.format() for issue in self.issues))


class InvalidKey(IdentityError):
    """A JWK that cannot serve as a verification key (wrong type, private members, too short)."""


class JwksFetchError(IdentityError):
    """A JWK set could not be fetched or read; the last good keys stay in use."""


class VerificationFailed(IdentityError):
    """A credential failed a check. ``detail`` is short fixed text naming the check (for logs
    and ``error_description``); ``unavailable`` marks a failure of a dependency (keys that never
    arrived, the replay store) rather than of the credential, which the caller answers with 503."""

    def __init__(self, reason: Reason, detail: str, *, unavailable: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.unavailable = unavailable
