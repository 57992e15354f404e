"""The gRPC server and HTTP side server, driven over loopback with a scripted authorizer.

The authorizer here is a test double on purpose: these tests are about transport behaviour
(health, reflection, error containment, probes). Real policies are exercised in tests/wire.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz_server.authorizer import Status
from authz_server.config import Address, ServeConfig
from authz_server.decision import Decision, HeaderMutation, allow, deny
from authz_server.envoy.adapter import CheckRequest
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.request import Request
from authz_server.serve.server import Server


class ScriptedAuthorizer:
    """Allows when `x-allow: yes`, raises on `x-boom`, denies otherwise."""

    def __init__(self) -> None:
        self.serving = False
        self.ready = False
        self.started = self.stopped = False
        self.threads: list[str] = []

    def check(self, request: Request) -> Decision:
        self.threads.append(threading.current_thread().name)
        if "x-boom" in request.headers:
            raise RuntimeError("policy engine exploded")
        if request.header("x-allow") == "yes":
            return allow(headers=(HeaderMutation("x-checked", str(len(request.body))),))
        return deny(403, reason="scripted", body="scripted denial")

    def internal_error(self, error: Exception, request: Request | None = None) -> Decision:
        return deny(500, reason="internal error", body="scripted internal error")

    def status(self) -> Status:
        return Status(self.serving, self.ready, "scripted")

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Running:
    server: Server
    authorizer: ScriptedAuthorizer
    channel: grpc.Channel
    loop: asyncio.AbstractEventLoop
    dispatch: str

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.server.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


@pytest.fixture(params=["thread", "inline"])
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    config = ServeConfig(
        dispatch=request.param,
        policies=tmp_path,
        grpc_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        http_authz_address=Address("127.0.0.1", 0),
        grace_period=2,
    )
    authorizer = ScriptedAuthorizer()
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
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.grpc_port}",
        options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
    )
    yield Running(server, authorizer, channel, loop, config.dispatch)
    channel.close()
    loop.call_soon_threadsafe(server.request_stop)
    thread.join(10)
    assert authorizer.stopped


def _check(channel: grpc.Channel, headers: dict[str, str], body: bytes = b"") -> object:
    request = CheckRequest()
    request.attributes.request.http.headers.update(headers)
    request.attributes.request.http.raw_body = body
    return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)


def _health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _eventually(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_health_follows_policy_load(running: Running) -> None:
    assert running.authorizer.started
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health(running.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    running.authorizer.serving = True
    assert _eventually(lambda: _health(running.channel) == serving)
    assert _health(running.channel, "envoy.service.auth.v3.Authorization") == serving


def test_allow_and_deny_travel_as_check_responses(running: Running) -> None:
    allowed = _check(running.channel, {"x-allow": "yes"}, b"12345")
    assert allowed.status.code == 0
    assert allowed.ok_response.headers[0].header.value == "5"
    denied = _check(running.channel, {})
    assert denied.status.code == 7
    assert denied.denied_response.status.code == 403
    assert denied.denied_response.body == "scripted denial"


def test_checks_are_decided_where_dispatch_says(running: Running) -> None:
    for _ in range(3):
        assert _check(running.channel, {"x-allow": "yes"}).status.code == 0
    if running.dispatch == "thread":
        assert running.authorizer.threads == ["check"] * 3
    else:  # on gRPC's pool threads, which received the calls
        assert all(name.startswith("grpc") for name in running.authorizer.threads)


def test_a_failing_authorizer_denies_and_the_next_check_is_served(running: Running) -> None:
    failed = _check(running.channel, {"x-boom": "1"})
    assert failed.status.code != 0
    assert failed.denied_response.status.code == 500
    assert _check(running.channel, {"x-allow": "yes"}).status.code == 0


def test_garbage_bytes_get_an_rpc_error_and_the_server_keeps_serving(running: Running) -> None:
    raw = running.channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert err.value.code() != grpc.StatusCode.OK
    assert _check(running.channel, {"x-allow": "yes"}).status.code == 0


def test_four_mib_body_is_accepted(running: Running) -> None:
    body = b"x" * (4 * 1024 * 1024)
    allowed = _check(running.channel, {"x-allow": "yes"}, body)
    assert allowed.ok_response.headers[0].header.value == str(len(body))


def test_reflection_lists_the_services(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"envoy.service.auth.v3.Authorization", "grpc.health.v1.Health"} <= names


def test_probes_and_metrics(running: Running) -> None:
    assert running.http("/healthz") == (200, "ok\n")
    status, body = running.http("/readyz")
    assert status == 503 and "not ready" in body
    running.authorizer.serving = running.authorizer.ready = True
    assert running.http("/readyz")[0] == 200
    status, body = running.http("/metrics")
    assert status == 200 and 'authz_build_info{version="' in body
    assert running.http("/nope")[0] == 404
