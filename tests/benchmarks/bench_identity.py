"""Micro-benchmark of authz_server.identity.Verifier.verify (not collected by pytest).

Run: ``.venv/bin/python -m tests.benchmarks.bench_identity``. Prints the best-of-5 time per
verification, one core, for: a repeated bearer token (the cache hit every request after the
first one takes), the same token with the cache disabled (a full verification: parse, checks,
one signature) for RSA-2048, P-256 and Ed25519 issuer keys, a DPoP request (a cached token and
a fresh ES256 proof each time: one signature check), and the refusals a mixed workload brings.

:func:`stage_calls` gives the few figures ``make bench`` reports with the other stages
(tests/benchmarks/stages.py): a repeated bearer token, a new one, DPoP with an in-memory and with
the SQLite replay claim, and one ES256 signature check alone to compare DPoP with.
"""

from __future__ import annotations

import base64
import itertools
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path

from jwt.algorithms import get_default_algorithms

from authz_server.identity import Verifier
from authz_server.request import Request
from authz_server.state import Store, open_store
from tests.identity.helpers import (
    MemoryClaims,
    certificate,
    ec_key,
    ed_key,
    proof,
    request,
    rsa_key,
    setup,
    token,
)

PROOFS = 20_000
# Fresh proofs for each DPoP figure of stage_calls: stages.py's warm run takes 1,700 calls
# (IDENTITY_CALLS) and its cold one 101. A proof used twice would be refused as replayed, a
# cheaper path: running out raises StopIteration instead.
STAGE_PROOFS = 1_850


def per_call(fn: Callable[[], object], budget: float = 0.4, limit: int | None = None) -> float:
    number = 1
    while timeit.timeit(fn, number=number) < budget / 10 and (limit is None or number < limit):
        number *= 2
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def stage_calls(scratch: Path) -> tuple[dict[str, Callable[[], object]], Store]:
    """The identity stage's cost per check, as callables for stages.py to time: a repeated
    bearer token (the cache answers), a new token (verified in full: one RS256 signature check),
    DPoP with the token cached and a fresh ES256 proof each call (one signature check) claimed in
    memory and in a SQLite store in ``scratch`` (the server's default), and one ES256 signature
    check alone. Returns the store too; the caller closes it."""
    issuer, agent = rsa_key("rsa"), ec_key("agent")
    s = setup([issuer])
    store = open_store(f"sqlite://{scratch / 'state.db'}")
    uncached = Verifier(s.config, s.store, s.claims, clock=s.clock, cache_size=0)
    bearer = request(f"Bearer {token(issuer)}")
    for verifier in (s.verifier.inner, uncached):
        assert verifier.verify(bearer).authenticated
    access = token(issuer, cnf={"jkt": agent.thumbprint()})

    def dpop(claim: Callable[[str, float], bool]) -> Callable[[], object]:
        verifier = Verifier(s.config, s.store, claim, clock=s.clock)
        fresh: Iterator[Request] = iter(
            [request(f"DPoP {access}", proof(agent, access)) for _ in range(STAGE_PROOFS)]
        )
        assert verifier.verify(next(fresh)).method == "dpop"
        return lambda: verifier.verify(next(fresh))

    signed = proof(agent, access).encode()
    signing_input, _, signature = signed.rpartition(b".")
    algorithm = get_default_algorithms()["ES256"]
    public = algorithm.prepare_key(agent.public)
    raw_signature = base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))
    assert algorithm.verify(signing_input, public, raw_signature)
    calls: dict[str, Callable[[], object]] = {
        "identity: bearer, repeated token (cached)": lambda: s.verifier.inner.verify(bearer),
        "identity: bearer, new token (1 RS256 check)": lambda: uncached.verify(bearer),
        "identity: DPoP, proof claimed in memory": dpop(MemoryClaims(s.clock)),
        "identity: DPoP, proof claimed in SQLite": dpop(
            lambda key, ttl: store.claim("dpop", key, ttl)
        ),
        "  (one ES256 signature check alone)": lambda: algorithm.verify(
            signing_input, public, raw_signature
        ),
    }
    return calls, store


def main() -> None:
    keys = {"RS256": rsa_key("rsa"), "ES256": ec_key("ec"), "EdDSA": ed_key("ed")}
    s = setup(list(keys.values()), mtls={"trustDomains": ["example.org"]})
    uncached = Verifier(s.config, s.store, s.claims, clock=s.clock, cache_size=0)
    rows: list[tuple[str, Callable[[], object]]] = []

    def check(verifier: Verifier, req: Request, expected: str) -> Callable[[], object]:
        got = verifier.verify(req)
        assert got.error == expected, (got.error, got.detail)
        return lambda: verifier.verify(req)

    for alg, key in keys.items():
        req = request(f"Bearer {token(key)}")
        rows.append((f"bearer {alg}, cached", check(s.verifier.inner, req, "")))
        rows.append((f"bearer {alg}, uncached", check(uncached, req, "")))

    pem, x5t = certificate("spiffe://example.org/agent")
    bound = request(f"Bearer {token(keys['ES256'], cnf={'x5t#S256': x5t})}", certificate=pem)
    rows.append(("bearer + client certificate", check(s.verifier.inner, bound, "")))

    agent = ec_key("agent")
    access = token(keys["RS256"], cnf={"jkt": agent.thumbprint()})
    verifier = Verifier(s.config, s.store, MemoryClaims(s.clock), clock=s.clock)
    proofs = [request(f"DPoP {access}", proof(agent, access)) for _ in range(PROOFS)]
    assert verifier.verify(proofs[0]).authenticated
    fresh = itertools.cycle(proofs[1:])
    dpop_s = per_call(lambda: verifier.verify(next(fresh)), limit=(PROOFS - 1) // 5)

    key = keys["RS256"]
    refusals = {
        "refused: malformed": ("Bearer abc.def", "malformed"),
        "refused: expired": (f"Bearer {token(key, exp=1)}", "expired"),
        "refused: bad signature (cached)": (f"Bearer {token(key)[:-6]}AAAAAA", "bad_signature"),
        "refused: wrong audience": (f"Bearer {token(key, aud='x')}", "wrong_audience"),
        "refused: no credential": (None, "missing"),
    }
    for label, (value, expected) in refusals.items():
        rows.append((label, check(s.verifier.inner, request(value), expected)))

    print(f"{'verification':<36}{'us/call':>10}")
    for label, fn in rows[:6]:
        print(f"{label:<36}{per_call(fn) * 1e6:>10.1f}")
    print(f"{'DPoP (ES256 proof, cached token)':<36}{dpop_s * 1e6:>10.1f}")
    for label, fn in rows[6:]:
        print(f"{label:<36}{per_call(fn) * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
