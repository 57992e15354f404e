"""Compiled, immutable policies: what the loader produces and the engine reads.

Everything here is built once per load and never changed, so a set can be swapped in with one
attribute assignment while requests are being judged with the previous one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from authz_server.cel import Program
from authz_server.identity import AuthenticationConfig


class FailurePolicy(enum.StrEnum):
    FAIL = "Fail"
    IGNORE = "Ignore"


@dataclass(frozen=True, slots=True)
class Source:
    file: str
    document_index: int = 0


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression of a policy.

    ``field`` is its path in the document (``spec.validations[0].expression``) for messages;
    ``needs`` are the indexes of the policy variables it reads, directly or through other
    variables, in declaration order, so evaluating them in that order satisfies every dependency.
    """

    name: str
    field: str
    program: Program
    needs: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Exception_:
    """A PolicyException as it applies to one policy (compiled in that policy's environment)."""

    name: str
    source: Source
    conditions: tuple[Expression, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    source: Source
    failure_policy: FailurePolicy
    match_conditions: tuple[Expression, ...]
    variables: tuple[Expression, ...]
    validations: tuple[Expression, ...]
    exceptions: tuple[Exception_, ...] = ()
    # validationActions without Deny: evaluate and report, never enforce.
    audit: bool = False
    # MCP methods the match conditions can hold for; None means any.
    methods: frozenset[str] | None = None
    # Variables that do not depend on the request, computed at load: index -> value.
    preset: Mapping[int, object] = field(default_factory=dict)
    # spec.evaluation.mode: "Envoy" (the gRPC transports) or "HTTP" (the HTTP authorizer).
    mode: str = "Envoy"


class FastPath(Protocol):
    """One bucket's policies evaluated at once (:mod:`authz_server.policy.combined` builds it
    at load; the model only stores it)."""

    policies: tuple[Policy, ...]
    # Per policy, its own fast path (None: the reference path); may be empty.
    singles: tuple[FastPath | None, ...]
    # Whether ``evaluate`` can leave policies out (``skip``: their positions).
    guarded: bool

    def evaluate(
        self,
        check_request: Any,
        view: Mapping[str, Any],
        identity: Any = None,
        skip: tuple[int, ...] = (),
    ) -> list[Any] | None: ...


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Policies in evaluation order (by name), with an index by MCP method.

    ``fast_paths`` maps each bucket of the index (key None: the policies no method guards) to
    its :class:`FastPath`, or None where the reference path decides; a set built without them
    (``EMPTY``, or one made by hand) always takes the reference path.

    A loaded set holds the Envoy-mode policies (what the gRPC transports judge) in ``policies``
    and the HTTP-mode ones (the HTTP authorizer's) as a set of their own in ``http``, so each
    transport's engine reads one plain set. ``len()`` counts both.
    """

    policies: tuple[Policy, ...] = ()
    exceptions: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    # The set's Authentication document; None: no identity stage (``identity`` is anonymous).
    authentication: AuthenticationConfig | None = None
    fast_paths: Mapping[str | None, FastPath | None] = field(
        default_factory=dict, repr=False, compare=False
    )
    # The HTTP-mode policies (None: none); a set of its own, with fast paths of its own.
    http: PolicySet | None = None
    _by_method: Mapping[str, tuple[Policy, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _unguarded: tuple[Policy, ...] = field(init=False, repr=False, compare=False, default=())
    # The named CEL constants any expression reads; only these are bound per request.
    constants: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    # The URLs of every ``jwks.Fetch(url)`` (literals, checked at load): the identity stage
    # fetches their keys in the background before the set goes live.
    fetch_urls: frozenset[str] = field(init=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.policies, key=lambda p: p.name))
        methods = set()
        for policy in ordered:
            methods |= policy.methods or set()
        index = {
            method: tuple(p for p in ordered if p.methods is None or method in p.methods)
            for method in methods
        }
        object.__setattr__(self, "policies", ordered)
        object.__setattr__(self, "_by_method", MappingProxyType(index))
        object.__setattr__(self, "_unguarded", tuple(p for p in ordered if p.methods is None))
        used: set[str] = set()
        urls: set[str] = set()
        for policy in ordered:
            for expression in expressions(policy):
                used |= expression.program.constants
                urls |= expression.program.fetch_urls
        if self.http is not None:
            # The identity stage fetches the keys of every jwks.Fetch, whichever mode reads it.
            urls |= self.http.fetch_urls
        object.__setattr__(self, "constants", frozenset(used))
        object.__setattr__(self, "fetch_urls", frozenset(urls))
        object.__setattr__(self, "fast_paths", MappingProxyType(dict(self.fast_paths)))

    def __len__(self) -> int:
        return len(self.policies) + (len(self.http) if self.http is not None else 0)

    @property
    def http_set(self) -> PolicySet:
        """The HTTP-mode policies as a set (empty when there are none)."""
        return self.http if self.http is not None else EMPTY

    def for_method(self, method: str) -> tuple[Policy, ...]:
        """The policies whose match conditions can hold for a message with this method."""
        return self._by_method.get(method, self._unguarded)

    def buckets(self) -> dict[str | None, tuple[Policy, ...]]:
        """Every distinct answer of :meth:`for_method`: per guarded method, and None for the
        rest."""
        return {None: self._unguarded, **self._by_method}

    def fast_path(self, method: str) -> FastPath | None:
        """The fast path of ``for_method(method)``'s policies (None: use the reference path)."""
        return self.fast_paths.get(method if method in self._by_method else None)


def expressions(policy: Policy) -> tuple[Expression, ...]:
    """Every expression of ``policy``: match conditions, variables, validations, exception
    conditions."""
    nested = tuple(c for e in policy.exceptions for c in e.conditions)
    return policy.match_conditions + policy.variables + policy.validations + nested


EMPTY = PolicySet()
