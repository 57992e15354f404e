"""Whatever raises while a check is served, the check gets an explicit denial with a decision id,
counted in the metrics and written to the audit log with ``decided_by: error``.

A real server (gRPC on loopback) with the real pipeline (policies, decoder, engine, metrics,
audit log); faults are injected into one stage at a time: the envoy adapter, the decoder, the
response builder, an observer. Secrets in the faults' messages must reach no answer or record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from authz_server import pipeline as pipeline_module
from authz_server.config import Address, ServeConfig
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.observe import AuditLog, Metrics
from authz_server.observe.event import DecisionEvent
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.serve import server as server_module
from authz_server.serve.server import Server

SECRET = "fault-S3cret-hunter2"
POLICY = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: allow-search}
spec:
  evaluation: {mode: Envoy}
  validations:
  - expression: >
      mcp.ToolCall.Name == "search" ? envoy.Allowed().Response()
        : envoy.Denied(403).WithBody("only search").Response()
"""


class BrokenObserver:
    """An observer that raises on every event; it must change nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def observe(self, event: DecisionEvent) -> None:
        self.calls += 1
        raise RuntimeError(f"observer broke on {SECRET}")


@dataclass
class Served:
    channel: grpc.Channel
    registry: CollectorRegistry
    audit: AuditLog
    audit_path: Path
    observer: BrokenObserver

    def check(self, tool: str = "search", **headers: str) -> Any:
        check = check_request_from_shorthand(
            {"tool": tool, "arguments": {"password": SECRET}, "headers": headers}
        )
        stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        return stub.Check(check, timeout=10)

    def errors(self) -> float:
        found = self.registry.get_sample_value(
            "authz_decisions_total", {"outcome": "error", "decided_by": "error"}
        )
        return found or 0.0

    def audit_lines(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self.audit_path.exists():
            time.sleep(0.02)
        time.sleep(0.2)  # the writer flushes every 50 ms
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@pytest.fixture(params=["thread", "inline"])
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "allow-search.yaml").write_text(POLICY)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(audit_path))
    observer = BrokenObserver()
    authorizer = PolicyAuthorizer(
        PolicyStore(policies),
        observers=(observer, metrics, audit),
        audit=audit,
        metrics=metrics,
    )
    config = ServeConfig(
        dispatch=request.param,
        policies=policies,
        grpc_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        http_authz_address=Address("127.0.0.1", 0),
        grace_period=2,
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Server] = {}

    async def main() -> None:
        server = Server(config, authorizer)
        holder["server"] = server
        await server.start()
        started.set()
        await server.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "server did not start"
    server = holder["server"]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield Served(channel, registry, audit, audit_path, observer)
    channel.close()
    loop.call_soon_threadsafe(server.request_stop)
    thread.join(10)
    metrics.close()


def _assert_recorded_denial(served: Served, response: Any, errors_before: float) -> str:
    assert response.status.code != 0
    assert response.denied_response.status.code == 500
    decision_id = response.dynamic_metadata["decision_id"]
    assert decision_id
    assert decision_id in response.denied_response.body
    assert SECRET not in str(response)
    assert served.errors() == errors_before + 1
    lines = [line for line in served.audit_lines() if line["decision_id"] == decision_id]
    assert len(lines) == 1
    assert lines[0]["decided_by"] == "error" and lines[0]["outcome"] == "error"
    assert SECRET not in served.audit_path.read_text()
    return decision_id


def test_an_adapter_that_raises(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = server_module.request_from_check

    def adapter(check: Any) -> Any:
        if "x-break" in check.attributes.request.http.headers:
            raise ValueError(f"cannot read {SECRET}")
        return real(check)

    monkeypatch.setattr(server_module, "request_from_check", adapter)
    with caplog.at_level(logging.ERROR):
        _assert_recorded_denial(served, served.check(**{"x-break": "1"}), 0)
    assert "ValueError" in caplog.text and SECRET not in caplog.text
    assert served.check().status.code == 0  # the next check is served as usual


def test_a_decoder_that_raises(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline_module.decode

    def decoder(body: bytes, headers: Any, **options: Any) -> Any:
        if "x-break" in headers:
            raise MemoryError(SECRET)
        return real(body, headers, **options)

    monkeypatch.setattr(pipeline_module, "decode", decoder)
    _assert_recorded_denial(served, served.check(**{"x-break": "1"}), 0)
    assert served.check().status.code == 0


def test_a_response_builder_that_raises(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    real = server_module.response_from_decision
    failures = [RuntimeError(SECRET)]

    def builder(decision: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(decision)

    monkeypatch.setattr(server_module, "response_from_decision", builder)
    _assert_recorded_denial(served, served.check(), 0)


def test_an_observer_that_raises_changes_no_decision(served: Served) -> None:
    allowed = served.check("search")
    denied = served.check("delete")
    assert allowed.status.code == 0
    assert denied.denied_response.status.code == 403
    assert "only search" in denied.denied_response.body
    assert served.observer.calls == 2
    # The observers after it still saw both decisions.
    lines = served.audit_lines()
    assert [line["outcome"] for line in lines] == ["allow", "deny"]
    assert served.errors() == 0
