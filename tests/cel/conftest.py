from __future__ import annotations

import json
from typing import Any

import pytest

from authz_server.cel import activation, compile_expression, evaluate
from authz_server.cel.env import constants
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2
from authz_server.mcp import decode


def mcp_view(payload: dict[str, Any] | None) -> dict[str, Any]:
    if payload is None:
        from authz_server.cel.mcp import empty_view

        return empty_view()
    decoded = decode(json.dumps(payload).encode(), {"content-type": "application/json"})
    assert decoded.failure is None, decoded.failure
    return dict(decoded.messages[0].kyverno)


class Cel:
    """Compile and evaluate one expression against a request, as the engine does."""

    def __init__(self) -> None:
        self.env = None  # the shared environment
        self.check_request = external_auth_pb2.CheckRequest()
        self.mcp: dict[str, Any] = mcp_view(None)

    def headers(self, **headers: str) -> Cel:
        self.check_request.attributes.request.http.headers.update(headers)
        return self

    def message(self, payload: dict[str, Any]) -> Cel:
        self.mcp = mcp_view(payload)
        self.check_request.attributes.request.http.body = json.dumps(payload)
        return self

    def __call__(self, source: str) -> Any:
        program = compile_expression(self.env, source)
        data = {**constants(), "object": self.check_request, "mcp": self.mcp}
        return evaluate(program, activation(data, program.env))


@pytest.fixture
def cel_eval() -> Cel:
    return Cel()
