"""The answer to a request refused for its credentials: status and ``WWW-Authenticate``.

RFC 6750 §3 (Bearer) and RFC 9449 §7.1 (DPoP): a request without credentials gets a challenge
*without* ``error`` for each scheme the server takes (``Bearer``, ``DPoP algs="..."``); a
credential that failed gets ``error="invalid_token"`` (the token, its binding) or
``error="invalid_dpop_proof"`` (the proof) on the scheme the client used. MCP's authorization spec
asks for ``resource_metadata`` (RFC 9728) in the challenge, so it is added when configured, to both
schemes. A failure of a dependency (keys that never arrived, the replay store) is not the client's
fault: 503 and no challenge, so a client does not throw away a good token.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz_server.identity.config import AuthenticationConfig, DpopMode
from authz_server.identity.keys import ASYMMETRIC_ALGORITHMS
from authz_server.identity.model import Identity, Reason
from authz_server.request import Request

# Proof algorithms offered in ``algs``: every asymmetric one the proof verifier accepts.
PROOF_ALGORITHMS = " ".join(sorted(ASYMMETRIC_ALGORITHMS))

_PROOF_ERRORS = frozenset({Reason.DPOP_INVALID, Reason.DPOP_REPLAYED})


@dataclass(frozen=True, slots=True)
class Refusal:
    """``status`` 401 or 503; ``challenge`` the ``WWW-Authenticate`` value ("" for none);
    ``description`` fixed text for the client (never a credential)."""

    status: int
    challenge: str
    description: str


def _quoted(value: str) -> str:
    # Fixed texts and configured URLs only; drop what could break the quoted-string anyway.
    return '"' + "".join(c for c in value if c not in '"\\\r\n') + '"'


def _challenge(scheme: str, params: list[tuple[str, str]]) -> str:
    if not params:
        return scheme
    return scheme + " " + ", ".join(f"{name}={_quoted(value)}" for name, value in params)


def refused_before_policies(identity: Identity, config: AuthenticationConfig) -> bool:
    """Whether a failed verification is answered before the policies: always under
    ``required``; otherwise only when a dependency failed for a credential that needs it (a
    DPoP proof whose replay check could not run): policies may serve anonymous callers, but an
    unchecked proof must not reach them as merely "invalid"."""
    if not identity.error:
        return False
    if config.required:
        return True
    return identity.unavailable and identity.error != Reason.KEYS_UNAVAILABLE


def refusal(identity: Identity, config: AuthenticationConfig, dpop_scheme: bool) -> Refusal:
    """How to refuse ``identity`` (a failed verification). ``dpop_scheme``: the request's
    ``Authorization`` used the ``DPoP`` scheme."""
    description = f"{identity.error}: {identity.detail}" if identity.detail else identity.error
    if identity.unavailable:
        return Refusal(503, "", description)
    metadata = [("resource_metadata", config.resource_metadata)] if config.resource_metadata else []
    bearer = config.dpop.mode is not DpopMode.REQUIRED
    dpop = config.dpop.mode is not DpopMode.DISABLED
    algs = [("algs", PROOF_ALGORITHMS)]
    if identity.error == Reason.MISSING:
        challenges = []
        if bearer:
            challenges.append(_challenge("Bearer", metadata))
        if dpop:
            challenges.append(_challenge("DPoP", algs + metadata))
        return Refusal(401, ", ".join(challenges), description)
    error = "invalid_dpop_proof" if identity.error in _PROOF_ERRORS else "invalid_token"
    params = [("error", error), ("error_description", description)]
    use_dpop = dpop and (dpop_scheme or not bearer or identity.error == Reason.DPOP_REQUIRED)
    if use_dpop:
        return Refusal(401, _challenge("DPoP", params + algs + metadata), description)
    return Refusal(401, _challenge("Bearer", params + metadata), description)


def refusal_for(
    identity: Identity, config: AuthenticationConfig | None, request: Request
) -> Refusal | None:
    """The refusal to send instead of asking the policies, or None to ask them."""
    if config is None or not refused_before_policies(identity, config):
        return None
    dpop_scheme = request.headers.get("authorization", "")[:5].lower() == "dpop "
    return refusal(identity, config, dpop_scheme)
