"""The WWW-Authenticate challenge for each DPoP mode (RFC 6750 §3, RFC 9449 §7.1)."""

from __future__ import annotations

import pytest

from authz_server.identity import Identity, Reason, parse_authentication
from authz_server.identity.challenge import PROOF_ALGORITHMS, refusal, refused_before_policies

MISSING = Identity.failure(Reason.MISSING, "no credential")
EXPIRED = Identity.failure(Reason.EXPIRED, "the token has expired")


def _config(mode: str, *, required: bool = True):
    return parse_authentication({"required": required, "dpop": {"mode": mode}})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("disabled", "Bearer"),
        ("optional", f'Bearer, DPoP algs="{PROOF_ALGORITHMS}"'),
        ("required", f'DPoP algs="{PROOF_ALGORITHMS}"'),
    ],
)
def test_a_missing_credential_is_offered_each_accepted_scheme(mode: str, expected: str) -> None:
    answer = refusal(MISSING, _config(mode), dpop_scheme=False)
    assert (answer.status, answer.challenge) == (401, expected)


def test_a_bearer_token_under_required_dpop_is_told_to_use_dpop() -> None:
    dpop_required = Identity.failure(Reason.DPOP_REQUIRED, "tokens must be DPoP-bound")
    answer = refusal(dpop_required, _config("required"), dpop_scheme=False)
    assert answer.challenge.startswith('DPoP error="invalid_token"')
    assert refusal(EXPIRED, _config("disabled"), dpop_scheme=True).challenge.startswith(
        'Bearer error="invalid_token"'
    )


def test_only_required_or_a_failed_dependency_refuses_before_the_policies() -> None:
    optional = _config("optional", required=False)
    assert not refused_before_policies(EXPIRED, optional)
    assert refused_before_policies(EXPIRED, _config("optional"))
    store_down = Identity.failure(Reason.DPOP_INVALID, "store", unavailable=True)
    assert refused_before_policies(store_down, optional)
    keys = Identity.failure(Reason.KEYS_UNAVAILABLE, "no keys", unavailable=True)
    assert not refused_before_policies(keys, optional)
    assert refusal(keys, _config("optional"), dpop_scheme=False).status == 503
