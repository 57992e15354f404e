"""A real server, real gRPC checks: /metrics moves by exactly the number of checks, with one
worker and with two, and every decision has exactly one audit line, free of credentials."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from tests.serving import ServerProcess, http_get, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
CHECKS = 24
POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: github-no-merge
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: tool-call
    expression: mcp.Method == "tools/call"
  validations:
  - expression: >
      mcp.ToolCall.Name == "merge_pull_request"
        ? envoy.Denied(403).WithBody("no").Response()
        : envoy.Allowed().Response()
"""
SECRET_HEADERS = {
    "authorization": "Bearer e2eS3CR3Tauthorization0123456789",
    "proxy-authorization": "Basic ZTJlUzNDUjNUcHJveHk6cGFzcw==",
    "cookie": "sid=e2eS3CR3Tcookie; theme=dark",
    "dpop": "eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJqdGkiOiJlMmVTM0NSM1QifQ.e2eS3CR3Tdpopsignature",
    "x-api-key": "e2eS3CR3Tapikey",
    "mcp-session-id": "e2eS3CR3Tsession",
}
SECRET_MARKERS = ("e2eS3CR3T", "ZTJlUzNDUjNU", "ZTJlUzNDUjNUcHJveHk")


@dataclass
class Served:
    server: ServerProcess
    audit: Path

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.server.proc

    @property
    def grpc_port(self) -> int:
        return self.server.grpc_port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def stderr(self) -> Path:
        return self.server.log

    def metrics(self) -> str:
        status, body = http_get(self.http_port, "/metrics")
        assert status == 200
        return body


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "github.yaml").write_text(POLICY)
    audit = tmp_path / "audit.jsonl"
    server = start_server(
        policies,
        "--workers", str(request.param), "--audit-log", str(audit),
        log=tmp_path / "stderr.log",
    )  # fmt: skip
    served = Served(server, audit)
    try:
        wait_ready(served, workers=request.param)
        yield served
    finally:
        stop_server(server)


def wait_ready(served: Served, workers: int) -> None:
    """Every worker listens on the HTTP port (it opens it after loading the policies and starting
    gRPC), and ready answers come from many fresh connections."""
    deadline = time.monotonic() + 60
    streak = 0
    while streak < 5 * workers or listeners(served.http_port) < workers:
        if served.proc.poll() is not None:
            raise RuntimeError(f"server exited: {served.stderr.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready: {served.stderr.read_text()}")
        try:
            streak = streak + 1 if http_get(served.http_port, "/readyz")[0] == 200 else 0
        except OSError:
            streak = 0
        if streak == 0:
            time.sleep(0.1)


def listeners(port: int) -> int:
    """Listening TCP sockets on ``port``: one per worker, as they share it with SO_REUSEPORT."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            count += 1
    return count


def check_request(tool: str, index: int) -> external_auth_pb2.CheckRequest:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": index,
            "method": "tools/call",
            "params": {
                "name": tool,
                "arguments": {"owner": "o", "repo": "r", "password": "e2eS3CR3Targ"},
            },
        }
    )
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = "POST"
    http.path = "/mcp"
    http.host = "mcp.example"
    http.headers.update(
        {
            "content-type": "application/json",
            "accept": "application/json",
            "mcp-protocol-version": "2025-06-18",
            **SECRET_HEADERS,
        }
    )
    http.body = body
    http.size = len(body)
    check.attributes.source.address.socket_address.address = "127.0.0.1"
    return check


def decision_counts(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["outcome"], sample.labels["decided_by"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "authz_decisions_total"
    }


def evaluation_counts(text: str) -> dict[str, float]:
    """authz_policy_evaluations_total of the policy, by result (fresh server: totals)."""
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "authz_policy_evaluations_total"
        and sample.labels["policy"] == "github-no-merge"
    }


def test_metrics_and_audit_follow_every_check(served: Served) -> None:
    before = decision_counts(served.metrics())
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{served.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(6)
    ]
    ids: list[str] = []
    allowed = denied = 0
    try:
        for index in range(CHECKS):
            stub = external_auth_pb2_grpc.AuthorizationStub(channels[index % len(channels)])
            tool = "merge_pull_request" if index % 3 == 0 else "create_issue"
            response = stub.Check(check_request(tool, index), timeout=10)
            if response.status.code == 0:
                allowed += 1
            else:
                denied += 1
            ids.append(response.dynamic_metadata["decision_id"])
    finally:
        for channel in channels:
            channel.close()
    assert (allowed, denied) == (CHECKS - CHECKS // 3, CHECKS // 3)
    assert len(set(ids)) == CHECKS

    metrics_text = served.metrics()
    after = decision_counts(metrics_text)

    def moved(outcome: str, decided_by: str) -> float:
        key = (outcome, decided_by)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("allow", "policy") == allowed
    assert moved("deny", "policy") == denied
    assert sum(after.values()) - sum(before.values()) == CHECKS
    # Every check asked the one policy: the counter follows within the flush interval.
    wanted = {"allow": float(allowed), "deny": float(denied)}
    deadline = time.monotonic() + 10
    while (got := evaluation_counts(served.metrics())) != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == wanted

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0
    lines = [json.loads(line) for line in served.audit.read_text().splitlines()]
    assert len(lines) == CHECKS
    assert sorted(line["decision_id"] for line in lines) == sorted(ids)
    assert sum(line["outcome"] == "deny" for line in lines) == denied

    outputs = {
        "audit": served.audit.read_text(),
        "stderr": served.stderr.read_text(),
        "metrics": metrics_text,
    }
    for where, text in outputs.items():
        for marker in SECRET_MARKERS:
            assert marker not in text, (where, marker)
