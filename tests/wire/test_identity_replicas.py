"""A DPoP proof is good once across every process that serves the same resource: replicas
sharing a Redis or a SQLite file, and the workers of one ``serve --workers 2``. A store that cannot
be reached refuses DPoP with 503 (never allows) and makes ``/readyz`` say so.

Real ``serve`` processes on loopback, a real ``redis-server``; checks go through the project's
own gRPC stub. Each replica gets its own AUTHZ_STATE_DIR, so only the configured ``--state`` can
make them share anything.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import IdentityPolicies, state_environment
from prometheus_client.mmap_dict import MmapedDict

from authz_server.envoy.adapter import CheckRequest, CheckResponse
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.policy.testing import check_request_from_shorthand
from tests.serving import ServerProcess, free_port, start_server, stop_server
from tests.state.redis_server import start_redis


def _request(headers: dict[str, str]) -> CheckRequest:
    return check_request_from_shorthand(
        {
            "host": "mcp.example.com",
            "headers": {":authority": "mcp.example.com", **headers},
            "tool": "get_issue",
            "arguments": {},
        }
    )


def check(target: str, headers: dict[str, str]) -> CheckResponse:
    """One check on a connection of its own (a local subchannel pool: channels to the same
    address would otherwise share one connection), so that with several workers the kernel
    picks a worker for each."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            _request(headers), timeout=10
        )


def allowed_as_dpop(reply: CheckResponse) -> bool:
    headers = {o.header.key: o.header.value for o in reply.ok_response.headers}
    return reply.status.code == 0 and headers.get("x-caller") == "dpop:user-1"


def error_message(reply: CheckResponse) -> str:
    assert reply.status.code != 0
    return str(json.loads(reply.denied_response.body)["error"]["message"])


def replayed(reply: CheckResponse) -> bool:
    return reply.denied_response.status.code == 401 and "dpop_replayed" in error_message(reply)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        stop_server(server)


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_a_proof_accepted_by_one_replica_is_refused_by_another(
    backend: str, identity_policies: IdentityPolicies, tmp_path: Path
) -> None:
    if backend == "redis":
        redis = start_redis()
        url = redis.url("replicas:")
    else:
        url = f"sqlite://{tmp_path / 'shared' / 'state.db'}"
    servers: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            env = state_environment(tmp_path / f"state-{name}")
            servers.append(start_server(identity_policies.directory, "--state", url, env=env))
        first, second = servers
        bound = identity_policies.bound_token()
        dpop = identity_policies.dpop(bound)
        assert allowed_as_dpop(check(first.target, dpop))
        assert replayed(check(second.target, dpop))
        # The other replica serves DPoP: a fresh proof passes there, and is refused back.
        fresh = identity_policies.dpop(bound)
        assert allowed_as_dpop(check(second.target, fresh))
        assert replayed(check(first.target, fresh))
    finally:
        for server in servers:
            stop_server(server)
        if backend == "redis":
            redis.stop()
            shutil.rmtree(redis.directory, ignore_errors=True)


def _decisions_by_worker(metrics_dir: Path) -> dict[str, float]:
    """Decisions answered so far by each worker, from prometheus-client's per-process files
    (the rendered /metrics sums the workers)."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "authz_decisions_total":
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def _answered_by(metrics_dir: Path, before: dict[str, float]) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = _decisions_by_worker(metrics_dir)
        grown = [pid for pid, count in now.items() if count > before.get(pid, 0.0)]
        if grown:
            assert len(grown) == 1
            return grown[0]
        time.sleep(0.02)
    raise AssertionError("no worker counted the decision")


def test_a_proof_accepted_by_one_worker_is_refused_by_the_other(
    identity_policies: IdentityPolicies, servers: list[ServerProcess], tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = state_environment(tmp_path / "state", PROMETHEUS_MULTIPROC_DIR=str(metrics))
    server = start_server(identity_policies.directory, "--workers", "2", env=env)
    servers.append(server)
    bound = identity_policies.bound_token()
    dpop = identity_policies.dpop(bound)
    before = _decisions_by_worker(metrics)
    assert allowed_as_dpop(check(server.target, dpop))
    accepted_by = _answered_by(metrics, before)
    # Each replay goes on a new connection; the kernel spreads connections over the workers,
    # so one soon lands on the other worker (each try misses it with probability 1/2).
    for _ in range(40):
        before = _decisions_by_worker(metrics)
        assert replayed(check(server.target, dpop))
        if _answered_by(metrics, before) != accepted_by:
            return
    pytest.fail("40 connections all reached the worker that accepted the proof")


def test_a_store_out_of_reach_refuses_dpop_with_503_and_is_not_ready(
    identity_policies: IdentityPolicies, servers: list[ServerProcess], tmp_path: Path
) -> None:
    password = "redis-password-never-shown"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0?timeout=0.2"
    env = state_environment(tmp_path / "state")
    server = start_server(identity_policies.directory, "--state", url, env=env, wait_ready=False)
    servers.append(server)
    bound = identity_policies.bound_token()
    reply = check(server.target, identity_policies.dpop(bound))
    assert reply.denied_response.status.code == 503
    assert not any(o.header.key == "www-authenticate" for o in reply.denied_response.headers)
    assert json.loads(reply.denied_response.body)["error"]["code"] == -31503
    # A bearer token needs no store: verified, and judged by the policy (which wants DPoP).
    bearer = check(server.target, {"authorization": f"Bearer {identity_policies.bearer_token()}"})
    assert bearer.denied_response.status.code == 403
    assert error_message(bearer) == "proof of possession required, got: bearer"
    status, body = server.http("/readyz")
    assert status == 503
    assert "state store unavailable" in body and password not in body
