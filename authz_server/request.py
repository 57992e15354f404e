"""The request being authorized, as the rest of the pipeline sees it.

The envoy adapter builds a :class:`Request` from a CheckRequest, the HTTP authorizer's from a
plain HTTP request; nothing past the adapters needs to know a wire format. The message policies
address as ``object`` is kept in :attr:`Request.check_request` (converting it to dicts would cost
more than the evaluation itself): Envoy's CheckRequest from the gRPC transports, Kyverno's
``http.CheckRequest`` from the HTTP authorizer. :attr:`Request.transport` says which, and so
which mode's policies judge the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
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


_FIELDS = tuple(f.name for f in fields(Request))


def deferred(name: str, compute: Callable[[Any], Any]) -> property:
    """A property for a :class:`DeferredRequest` subclass: field ``name`` computed by
    ``compute(request)`` on first read and kept in the field's own slot, so later reads cost
    a slot read. The setter serves ``Request.__init__`` (``dataclasses.replace`` builds the
    copy through it); assignment after construction still raises ``FrozenInstanceError``."""
    slot = Request.__dict__[name]

    def read(request: Request) -> Any:
        try:
            return slot.__get__(request, Request)
        except AttributeError:
            value = compute(request)
            slot.__set__(request, value)
            return value

    return property(read, slot.__set__, doc=f"``{name}``, computed on first read")


class DeferredRequest(Request):
    """A :class:`Request` whose costlier fields are computed on first read.

    An adapter subclasses it with :func:`deferred` properties for the fields few checks read
    (the connection's peers, the gateway's metadata), fills the others with :meth:`filled`,
    and a check that never reads the deferred ones never pays for them. To every reader it is
    a Request: the same fields, frozen, and equal to a plain Request with the same values.
    """

    __slots__ = ()
    _deferred: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._deferred = frozenset(
            name for name in _FIELDS if isinstance(getattr(cls, name, None), property)
        )

    @classmethod
    def filled(cls, **values: Any) -> Any:
        """An instance with ``values`` set and every other field left to its property:
        without the frozen ``__init__`` (one ``object.__setattr__`` per field), on the
        decision path. Every field is either given or deferred (TypeError otherwise)."""
        if len(values) + len(cls._deferred) != len(_FIELDS) or not cls._deferred.isdisjoint(values):
            raise TypeError(f"{cls.__name__}.filled needs every field not deferred")
        request = object.__new__(cls)
        for name, value in values.items():
            _SLOT_SETTERS[name](request, value)
        return request

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = Request.__hash__


_SLOT_SETTERS = {name: Request.__dict__[name].__set__ for name in _FIELDS}
