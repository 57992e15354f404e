"""ext_proc streams in a real ``serve`` process: they live as long as their HTTP exchange, even past
the connection age that rotates Check connections, and a worker holds at most
``--ext-proc-streams`` of them, refusing the next at once while Checks go on."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_server.envoy.adapter import CheckRequest
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from tests.serving import ServerProcess, start_server, stop_server

POLICIES = Path(__file__).resolve().parents[1] / "wire" / "listing_policies"


class Stream:
    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.Queue[Any] = queue.Queue()
        stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
        self._answers = stub.Process(iter(self._outbox.get, None), timeout=30)

    def ask(self, message: Any) -> Any:
        self._outbox.put(message)
        return next(self._answers)

    def close(self) -> None:
        self._outbox.put(None)


def _headers(*pairs: tuple[str, str]) -> Any:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )
    return pb.HttpHeaders(headers=header_map, end_of_stream=True)


GET = pb.ProcessingRequest(request_headers=_headers((":method", "GET"), (":path", "/mcp")))
RESPONSE = pb.ProcessingRequest(
    response_headers=_headers((":status", "200"), ("content-type", "text/event-stream"))
)


@pytest.fixture
def channel_to() -> Iterator[Any]:
    started: list[tuple[ServerProcess, grpc.Channel]] = []

    def start(*args: str) -> grpc.Channel:
        server = start_server(POLICIES, *args)
        started.append((server, grpc.insecure_channel(server.target)))
        return started[-1][1]

    yield start
    for server, channel in started:
        channel.close()
        stop_server(server)


def test_a_stream_outlives_the_connection_age(channel_to: Any) -> None:
    channel = channel_to("--max-connection-age", "1", "--grace-period", "1")
    stream = Stream(channel)
    assert stream.ask(GET).HasField("request_headers")
    time.sleep(3.5)  # age and grace long past: a slow tool, an SSE stream
    answer = stream.ask(RESPONSE)
    assert answer.HasField("response_headers")
    stream.close()


def test_streams_beyond_the_limit_are_refused_and_checks_go_on(channel_to: Any) -> None:
    channel = channel_to("--ext-proc-streams", "1")
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(
        health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor"),
        timeout=5,
    ).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    first = Stream(channel)
    assert first.ask(GET).HasField("request_headers")
    second = Stream(channel)
    with pytest.raises(grpc.RpcError) as refused:
        second.ask(GET)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    check = CheckRequest()
    check.attributes.request.http.method = "GET"
    check.attributes.request.http.path = "/mcp"
    answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, timeout=5)
    assert answer.status.code == 0
    assert first.ask(RESPONSE).HasField("response_headers")
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the slot comes back once the first stream has ended
        third = Stream(channel)
        try:
            assert third.ask(GET).HasField("request_headers")
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    third.close()
