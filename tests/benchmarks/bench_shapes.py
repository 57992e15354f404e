"""Cost of one check per request shape, error paths included, measured in process.

Issue 18: no request shape may cost more than 1.5x the typical one, and the error paths (a
missing, malformed, expired, badly signed or revoked credential, a policy's runtime error, a body
that does not decode) must be decided as cheaply as a valid request and keep no memory.

Each shape goes through what the gRPC servicer does with a Check: parse the CheckRequest, adapt
it (``request_from_check``), :meth:`PolicyAuthorizer.check` (decode, identity, revocations,
engine, observers: metrics and the audit queue), build and serialize the CheckResponse. The
authorizer serves the example library (policies/) plus one policy that fails at runtime (reads
a header the request lacks) when the request carries ``x-tenant-check``: the other shapes do not,
so for them it adds one false match condition. A revocation of the subject ``revoked-bot`` is in
the state store.

Per shape: the best of several rounds (us per check) and its ratio to the valid request's;
``ref`` is how many times per timed check the engine's reference path ran (0: the fast path,
or no policy at all, decided); ``kept`` is the Python memory (tracemalloc) kept per 1000
checks at the allocation sites that grew by a block or more per check (tests/leaks.py). The
"distinct" rows send a new credential each check, as an attacker would.

Usage: python -m tests.benchmarks.bench_shapes [--rounds N] [--checks N] [--no-memory]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from authz_server.config import ServeConfig
from authz_server.envoy import request_from_check, response_from_decision
from authz_server.oversight import Revocations
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy import engine as engine_module
from authz_server.state import open_store
from tests.benchmarks import workload
from tests.benchmarks.stages import per_call_us
from tests.leaks import kept_bytes, steady_growth

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"
REVOKED_SUBJECT = "revoked-bot"
TRIGGER = "x-tenant-check"
# Fails at runtime for the requests that carry the trigger header: the "x-tenant" header they
# lack is read as a map key ("no such key"); failurePolicy Fail makes that a denial.
ERRING_POLICY = f"""\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: zz-tenant-header
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: tenant-check
    expression: '"{TRIGGER}" in object.attributes.request.http.headers'
  validations:
  - expression: >
      object.attributes.request.http.headers["x-tenant"] == "acme"
        ? null
        : envoy.Denied(403).WithBody("wrong tenant").Response()
"""


def signed(**claims: Any) -> str:
    """A token from the example issuer (policies/authentication.yaml) with ``claims`` over
    the workload token's."""
    key = serialization.load_pem_private_key(workload.DEMO_KEY.read_bytes(), password=None)
    now = int(time.time())
    payload = {
        "iss": "https://idp.example.com",
        "aud": "https://mcp.example.com/mcp",
        "sub": "release-bot",
        "client_id": "release-bot",
        "iat": now,
        "exp": now + 30 * 24 * 3600,
        "jti": str(uuid.uuid4()),
        "tools": ["create_pull_request", "get_pull_request", "list_pull_requests"],
        **claims,
    }
    headers = {"typ": "at+jwt", "kid": workload.DEMO_KID}
    return jwt.encode(payload, key, algorithm="ES256", headers=headers)


def _with(headers: dict[str, str | None] | None = None, body: bytes | None = None) -> bytes:
    """The workload CheckRequest with some headers changed (None: removed) or another body,
    serialized."""
    return workload.changed(workload.check_request(), headers, body).SerializeToString()


def _bearer(token: str) -> dict[str, str | None]:
    return {"authorization": f"Bearer {token}"}


def shapes() -> dict[str, bytes]:
    """Per shape, the serialized CheckRequest."""
    valid = signed()
    header, payload, signature = valid.split(".")
    # The last character of an ES256 signature carries spare bits: change a middle one.
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    bad_signature = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    past = int(time.time()) - 7200
    denied = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "delete_repository", "arguments": {}},
    }  # fmt: skip
    bad_path = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"path": 42}},
    }  # fmt: skip
    return {
        "valid": _with(_bearer(valid)),
        "denied by a policy": _with(body=json.dumps(denied).encode()),
        "missing credential": _with({"authorization": None}),
        'malformed ("Bearer x")': _with(_bearer("x")),
        "garbage payload": _with(_bearer(f"{header}.eyJmb28iOjF9.{signature}")),
        "expired": _with(_bearer(signed(iat=past - 3600, exp=past))),
        "bad signature": _with(_bearer(bad_signature)),
        "revoked": _with(_bearer(signed(sub=REVOKED_SUBJECT, client_id=REVOKED_SUBJECT))),
        "policy runtime error": _with({TRIGGER: "1"}),
        # The example library's own: filesystem-paths fails on a path that is not a string.
        # (Without the agent header and token, whose allow-lists would refuse read_file first.)
        "policy error (examples)": _with(
            {"x-agent-id": None, "authorization": None}, json.dumps(bad_path).encode()
        ),
        "decode: invalid JSON": _with(body=b'{"jsonrpc": "2.0", "method": '),
        "decode: partial body": _with({"x-envoy-auth-partial-body": "true"}),
        "decode: wrong charset": _with({"content-type": "text/plain; charset=latin1"}),
    }


def distinct_shapes() -> dict[str, Callable[[], bytes]]:
    """Shapes whose credential an attacker varies: a new one per check."""
    valid = signed()
    header, payload, _ = valid.split(".")
    counter = itertools.count()
    template = workload.check_request()

    def varied(make: Callable[[int], str]) -> Callable[[], bytes]:
        def one() -> bytes:
            check = type(template)()
            check.CopyFrom(template)
            check.attributes.request.http.headers["authorization"] = f"Bearer {make(next(counter))}"
            return check.SerializeToString()

        return one

    def bad_signature(n: int) -> str:
        # A new signature of the right length each time (never a valid one).
        text = f"{n:012d}".encode()
        forged = jwt.utils.base64url_encode(text * 5 + bytes(4)).decode()
        return f"{header}.{payload}.{forged}"

    return {
        "distinct valid": varied(lambda n: signed()),
        "distinct malformed": varied(lambda n: f"x{n}"),
        "distinct bad signature": varied(bad_signature),
    }


class _ReferenceCounter:
    """Counts the engine's reference-path evaluations (one per message judged there)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = engine_module._ReferenceOutcomes
        counter = self

        class Counted(self._original):  # type: ignore[misc, valid-type]
            __slots__ = ()

            def __init__(self, *args: Any) -> None:
                counter.count += 1
                super().__init__(*args)

        engine_module._ReferenceOutcomes = Counted  # type: ignore[misc]

    def restore(self) -> None:
        engine_module._ReferenceOutcomes = self._original  # type: ignore[misc]


def _servicer(auth: PolicyAuthorizer, message_type: type) -> Callable[[bytes], Any]:
    def one(wire: bytes) -> Any:
        check = message_type.FromString(wire)
        decision = auth.check(request_from_check(check))
        return response_from_decision(decision).SerializeToString()

    return one


def _best_us(run: Callable[[], Any], checks: int, rounds: int) -> float:
    return per_call_us(run, checks, rounds=rounds, warm_up=min(300, checks))


def _kept_per_1000(run: Callable[[], Any], checks: int = 1000) -> float:
    """Bytes kept per 1000 checks at the sites that grew by at least one block per check
    (tests/leaks.py): caches, pools and objects freed later are left out."""
    leaks = steady_growth(run, checks, warm_up=1000)
    return kept_bytes(leaks) * 2 * 1000 / checks


def _settle(auth: PolicyAuthorizer) -> None:
    """Wait for the audit writer to catch up: a backlog left by the previous shape (the memory
    runs are slow) would take the GIL from the next one's timing."""
    audit = auth._audit
    deadline = time.monotonic() + 60
    while audit is not None and audit.pending_bytes > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def _status(response: bytes, message_type: Any) -> str:
    from authz_server.envoy.adapter import CheckResponse

    parsed = CheckResponse.FromString(response)
    if parsed.HasField("denied_response"):
        return str(parsed.denied_response.status.code)
    return "ok"


def _authorizer(scratch: Path) -> PolicyAuthorizer:
    policies = scratch / "policies"
    shutil.copytree(EXAMPLES, policies, ignore=shutil.ignore_patterns("tests"))
    (policies / "zz-tenant-header.yaml").write_text(ERRING_POLICY)
    state = f"sqlite:///{scratch}/state.db"
    store = open_store(state)
    try:
        Revocations(store).add(subject=REVOKED_SUBJECT, reason="benchmark")
    finally:
        store.close()
    config = ServeConfig(policies=policies, audit_log=str(scratch / "audit.log"), state=state)
    return PolicyAuthorizer.from_config(config)


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc column")
    parser.add_argument("--only", default="", help="the shapes whose name contains this")
    args = parser.parse_args()
    message_type = type(workload.check_request())
    with tempfile.TemporaryDirectory() as scratch:
        auth = _authorizer(Path(scratch))
        auth.start()
        counter = _ReferenceCounter()
        try:
            one = _servicer(auth, message_type)
            rows = []
            for name, wire in shapes().items():
                if args.only not in name and name != "valid":
                    continue
                counter.count = 0
                status = _status(one(wire), message_type)
                counter.count = 0
                _settle(auth)
                us = _best_us(lambda wire=wire: one(wire), args.checks, args.rounds)
                refs = counter.count / (min(300, args.checks) + args.rounds * args.checks)
                kept = None if args.no_memory else _kept_per_1000(lambda wire=wire: one(wire))
                rows.append((name, status, refs, us, kept))
            # Made before timing: the cost of building a request is not the server's.
            needed = min(300, args.checks) + args.rounds * args.checks + 1 + 2000
            for name, make in distinct_shapes().items():
                if args.only not in name:
                    continue
                wires = iter([make() for _ in range(needed)])
                counter.count = 0
                status = _status(one(next(wires)), message_type)
                counter.count = 0
                _settle(auth)
                us = _best_us(lambda wires=wires: one(next(wires)), args.checks, args.rounds)
                refs = counter.count / (min(300, args.checks) + args.rounds * args.checks)
                kept = None
                if not args.no_memory:
                    kept = _kept_per_1000(lambda wires=wires: one(next(wires)))
                rows.append((name, status, refs, us, kept))
        finally:
            counter.restore()
            auth.stop()
    print(_render(rows))


def _render(rows: list[tuple[str, str, float, float, float | None]]) -> str:
    typical = rows[0][3]
    lines = [
        "per-shape cost of a check (parse, adapt, PolicyAuthorizer.check, respond), in process",
        f"  {'shape':<26} {'status':>6} {'ref':>4} {'us':>8} {'ratio':>6} {'kept B/1000':>12}",
    ]
    for name, status, refs, us, kept in rows:
        shown = "-" if kept is None else f"{kept:12.0f}"
        ratio = us / typical
        flag = "  > 1.5x" if ratio > 1.5 else ""
        lines.append(
            f"  {name:<26} {status:>6} {refs:4.1f} {us:8.1f} {ratio:6.2f} {shown:>12}{flag}"
        )
    lines.append(
        "  (ref: reference-path evaluations per check; distinct: a new credential each check)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
