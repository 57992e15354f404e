"""The request being authorized, as the rest of the pipeline sees it.

The envoy adapter builds a :class:`Request` from a CheckRequest, the HTTP authorizer's from a
plain HTTP request; nothing past the adapters needs to know a wire format. The message policies
address as ``object`` is kept in :attr:`Request.check_request` (converting it to dicts would cost
more than the evaluation itself): Envoy's CheckRequest from the gRPC transports, Kyverno's
``http.CheckRequest`` from the HTTP authorizer. :attr:`Request.transport` says which, and so
which mode's policies judge the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Request.transport: the wire a request arrived on (a bounded metric label and an audit field).
GRPC = "grpc"
HTTP = "http"


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the downstream connection as Envoy saw it."""

    address: str = ""
    port: int = 0
    principal: str = ""
    service: str = ""
    # URL-decoded PEM of the client certificate (Envoy include_peer_certificate), else empty.
    certificate: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request awaiting a decision.

    ``headers`` has lower-case keys and includes Envoy's pseudo-headers (``:path``,
    ``:authority``, ...). ``body_truncated`` is true when the body seen here is known to be only a
    prefix of what the client sent; a decoder must not trust such a body.
    """

    method: str = ""
    path: str = ""
    query: str = ""
    host: str = ""
    scheme: str = ""
    protocol: str = ""
    request_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_truncated: bool = False
    # Envoy's byte count at check time; agentgateway's body length, -1 when it cut the body.
    size: int = 0
    source: Peer = field(default_factory=Peer)
    destination: Peer = field(default_factory=Peer)
    context_extensions: Mapping[str, str] = field(default_factory=dict)
    # filter_metadata namespaces of metadata_context, as plain JSON-like values.
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # What policies see as ``object`` (opaque outside the adapters and the CEL layer).
    check_request: Any = None
    # GRPC (Check, ext_proc, ExtMcp: Envoy-mode policies) or HTTP (the HTTP authorizer:
    # HTTP-mode policies).
    transport: str = GRPC

    def header(self, name: str, default: str = "") -> str:
        """Return a header by case-insensitive name."""
        return self.headers.get(name.lower(), default)
