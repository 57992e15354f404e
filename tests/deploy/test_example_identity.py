"""The identity example works as the README tells a user to try it.

policies/jwks.json must hold only public keys, the halves of the demo keys in
examples/identity/keys/, and examples/identity/mint.py must mint credentials that the shipped
Authentication document accepts and the identity examples judge as documented: through the
offline decision path and through `authz-server check --policies`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from authz_server.decision import Decision
from authz_server.policy.loader import load_directory
from authz_server.policy.offline import DecisionPath
from authz_server.policy.testing import check_request_from_json

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
MINT = ROOT / "examples" / "identity" / "mint.py"
KEYS = ROOT / "examples" / "identity" / "keys"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def mint(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(MINT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_jwk_set_in_policies_holds_only_the_public_halves_of_the_demo_issuer_keys() -> None:
    keys = json.loads((POLICIES / "jwks.json").read_text(encoding="utf-8"))["keys"]
    assert all(not (PRIVATE_MEMBERS & set(key)) for key in keys)
    by_kid = {key["kid"]: key for key in keys}
    for file, kid, to_jwk in (
        ("issuer-es256.pem", "demo-es256", ECAlgorithm.to_jwk),
        ("issuer-eddsa.pem", "demo-eddsa", OKPAlgorithm.to_jwk),
    ):
        private = serialization.load_pem_private_key((KEYS / file).read_bytes(), password=None)
        public = to_jwk(private.public_key(), as_dict=True)
        assert {k: by_kid[kid][k] for k in public} == public, kid
    # No private key anywhere under policies/ (the ConfigMap ships that directory).
    for path in POLICIES.rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(encoding="utf-8"), path


@pytest.fixture(scope="module")
def path() -> Any:
    with DecisionPath(load_directory(POLICIES)) as decision_path:
        yield decision_path


def decide(path: DecisionPath, *args: str) -> Decision:
    return path.decide(check_request_from_json(mint("request", *args)))


def test_a_minted_dpop_request_may_write_and_a_bearer_one_may_not(path: DecisionPath) -> None:
    dpop = decide(path, "--tool", "create_pull_request", "--dpop")
    assert dpop.allowed and dpop.policy == "github-contribute", dpop
    bearer = decide(path, "--tool", "create_pull_request")
    assert (bearer.allowed, bearer.http_status, bearer.policy) == (
        False,
        401,
        "identity-dpop-for-writes",
    )
    challenge = {h.key: h.value for h in bearer.headers}["www-authenticate"]
    assert challenge.startswith('DPoP error="invalid_token"')
    assert decide(path, "--tool", "get_issue").allowed
    assert decide(path, "--tool", "create_pull_request", "--anonymous").allowed


def test_a_minted_tools_claim_and_an_expired_token_are_judged(path: DecisionPath) -> None:
    narrowed = decide(path, "--tool", "search_code", "--tools", "get_issue")
    assert (narrowed.http_status, narrowed.policy) == (403, "identity-tools-claim")
    expired = decide(path, "--tool", "get_issue", "--now", "2026-01-01T00:00:00Z")
    assert (expired.http_status, expired.policy) == (401, "identity-refused-credentials")
    assert "expired" in expired.body


def test_a_minted_x509_svid_names_the_ci_agent(path: DecisionPath, tmp_path: Path) -> None:
    certificate = tmp_path / "ci.pem"
    certificate.write_text(mint("certificate"), encoding="utf-8")
    args = ("--anonymous", "--certificate", str(certificate))
    denied = decide(path, "--tool", "create_pull_request", *args)
    assert (denied.http_status, denied.policy) == (403, "identity-spiffe-agents")
    assert "spiffe://example.org/agents/ci" in denied.body
    assert decide(path, "--tool", "get_pull_request", *args).allowed


def test_the_readme_recipe_check_with_a_minted_request() -> None:
    # README, "Agent identity": mint.py request ... | authz-server check --request -
    for extra, status in (("--dpop",), 0), ((), 1):
        request = mint("request", "--tool", "create_pull_request", *extra)
        command = ["check", "--policies", str(POLICIES), "--request", "-"]
        done = subprocess.run(
            [sys.executable, "-m", "authz_server", *command],
            input=request,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == status, done.stdout + done.stderr


def test_the_benchmark_workload_is_allowed_through_the_identity_stage(path: DecisionPath) -> None:
    # tests/benchmarks/verify.py counts any other answer as wrong: the workload's token must
    # verify under the example Authentication document and its call pass every example policy.
    from tests.benchmarks import workload

    decision = path.decide(workload.check_request())
    assert decision.allowed, decision
    assert {h.key for h in decision.headers} & {"x-authz-policy"}
