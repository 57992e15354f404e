"""The decision path behind the gRPC server: decode the body, verify the caller, judge the
request, tell the observers.

This is the one place that knows the order of the stages; the stages themselves know nothing
of each other beyond the values they exchange.

Every check gets a decision id, a metric and an audit line, whatever fails: a stage that raises
(the decoder, the engine, or the transport before a :class:`Request` exists, through
:meth:`PolicyAuthorizer.internal_error`) gives an explicit denial (``decided_by: error``) whose
body names only the decision id, and the server log names the exception's class and place,
never its text. An observer that raises is logged and skipped; the decision stands.

The identity stage runs on every check, with the live set's ``Authentication`` document (or none:
then a gateway's verified claims or nothing). Its answer goes to the policies as ``identity``;
only a missing or failed credential under ``required: true``, or a dependency that failed
(503: the replay store, keys that never arrived under ``required``), is answered before them.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from authz_server.authorizer import Status
from authz_server.cel.jwt import key_set_provider, serve_key_sets
from authz_server.config import ServeConfig
from authz_server.decision import Decision
from authz_server.identity import Identity
from authz_server.identity.challenge import refusal_for
from authz_server.identity.config import DpopMode
from authz_server.identity.stage import Authenticator
from authz_server.mcp import DEFAULT_LIMITS, Limits, decode
from authz_server.mcp.message import Decoded, DecodeFailure, FailureReason
from authz_server.observe import AuditLog, Metrics
from authz_server.observe.event import DecisionEvent, Observer
from authz_server.policy import render
from authz_server.policy.engine import Combine, Default, Engine, EngineOptions, describe_exception
from authz_server.policy.model import PolicySet
from authz_server.policy.store import PolicyStore
from authz_server.request import Request
from authz_server.state import Store, open_store

log = logging.getLogger(__name__)


# What observers see of a body when decoding it failed inside the server: the failure's class,
# none of the decoder's text (it may quote the body).
_INTERNAL_DECODED = Decoded(failure=DecodeFailure(FailureReason.INTERNAL_ERROR, "internal error"))
_NOTHING_DECODED = Decoded()


# How long a /readyz answer about the state store is reused: probes must not hammer it.
_HEALTH_INTERVAL = 2.0


class DecisionIds:
    """Unique decision ids without a syscall per request: a random per-process prefix and a
    counter. The id goes to Envoy in dynamic metadata and into the audit line, so the two can be
    joined."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


class PolicyAuthorizer:
    """The :class:`~authz_server.authorizer.Authorizer` the server runs with."""

    def __init__(
        self,
        store: PolicyStore,
        options: EngineOptions | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        decompress: bool = False,
        observers: Sequence[Observer] = (),
        reload_interval: float = 1.0,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        state: Store | None = None,
    ) -> None:
        """``metrics`` also counts policy evaluations (pass it among ``observers`` too for the
        decisions themselves). ``state`` is the shared store (DPoP replay claims); without one
        a DPoP proof is refused as unavailable."""
        self._store = store
        self._state = state
        self._authenticator = Authenticator(
            (lambda key, ttl: state.claim("dpop", key, ttl)) if state is not None else None,
            observer=metrics.jwks if metrics is not None else None,
        )
        store.prepare = self._prepare
        # jwks.Fetch(url) in the policies reads the keys this process's identity stage fetched
        # for the URL (the one process-wide seam of the CEL libraries; see cel/jwt.py).
        serve_key_sets(self._authenticator.fetched_document, self._authenticator.request_refetch)
        self._state_health: tuple[float, str] = (0.0, "")
        self._engine = Engine(
            store.current,
            options,
            on_evaluated=metrics.policies_evaluated if metrics is not None else None,
        )
        self._limits = limits
        self._decompress = decompress
        self._observers = tuple(observers)
        self._reload_interval = reload_interval
        self._ids = DecisionIds()
        self._audit = audit
        self._metrics = metrics
        self._failed_observers: set[int] = set()

    @classmethod
    def from_config(cls, config: ServeConfig) -> PolicyAuthorizer:
        options = EngineOptions(
            combine=Combine(config.combine),
            default_decision=Default(config.default_decision),
            decode_failures_to_policies=config.decode_failures_to_policies,
        )
        # One Metrics per process: it registers its collectors in the default registry.
        metrics = Metrics(tool_limit=config.metrics_tool_limit)
        audit = AuditLog(
            config.audit_log,
            max_value_length=config.audit_max_value_length,
            on_drop=metrics.audit_dropped,
        )
        return cls(
            PolicyStore(config.policies, on_load=metrics.policy_loaded),
            options,
            decompress=config.decode_content_encoding,
            observers=(metrics, audit),
            reload_interval=config.reload_interval,
            audit=audit,
            metrics=metrics,
            state=open_store(config.state),
        )

    def check(self, request: Request) -> Decision:
        """Decide one request; never raises."""
        started = time.time()
        clock = time.perf_counter()
        decision_id = self._ids.next()
        decoded: Decoded | None = None
        decision: Decision | None = None
        identity: Identity | None = None
        try:
            decoded = self._decode(request)
            failure = decoded.failure
            if failure is not None and failure.reason is FailureReason.INTERNAL_ERROR:
                # The decoder caught a defect of its own (the detail is its class).
                log.error("check %s failed in the decoder: %s", decision_id, failure.detail)
                decoded = _INTERNAL_DECODED
            else:
                config = self._store.current().authentication
                identity = self._authenticator.verify(request, config)
                refused = refusal_for(identity, config, request)
                if refused is not None:
                    decision = render.render_refusal(refused, decoded)
                else:
                    decision = self._engine.decide(request, decoded, identity)
        except Exception as exc:
            log.error("check %s failed: %s", decision_id, describe_exception(exc))
            if decoded is None:
                decoded = _INTERNAL_DECODED
        if decision is None:
            decision = render.render_internal_error(decoded, decision_id)
        return self._finish(decision_id, started, clock, request, decoded, decision, identity)

    def internal_error(self, error: Exception, request: Request | None = None) -> Decision:
        """The answer to a check the transport could not read or answer (its adapter raised):
        a denial with a decision id, counted and audited like every other."""
        started = time.time()
        decision_id = self._ids.next()
        log.error("check %s failed: %s", decision_id, describe_exception(error))
        decision = render.render_internal_error(_NOTHING_DECODED, decision_id)
        return self._finish(
            decision_id, started, time.perf_counter(), request or Request(), _NOTHING_DECODED,
            decision,
        )  # fmt: skip

    def _decode(self, request: Request) -> Decoded:
        return decode(
            request.body,
            request.headers,
            method=request.method,
            truncated=request.body_truncated,
            limits=self._limits,
            decompress=self._decompress,
        )

    def _finish(
        self,
        decision_id: str,
        started: float,
        clock: float,
        request: Request,
        decoded: Decoded,
        decision: Decision,
        identity: Identity | None = None,
    ) -> Decision:
        # Envoy keeps dynamic metadata for its access log: the id joins it to the audit line.
        metadata = {**decision.dynamic_metadata, "decision_id": decision_id}
        if decision.policy:
            metadata["policy"] = decision.policy
        decision = replace(decision, dynamic_metadata=metadata)
        if self._observers:
            event = DecisionEvent(
                decision_id,
                started,
                time.perf_counter() - clock,
                request,
                decoded,
                decision,
                identity,
            )
            for observer in self._observers:
                try:
                    observer.observe(event)
                except Exception as exc:  # observers never change a decision
                    self._observer_failed(observer, exc)
        return decision

    def _observer_failed(self, observer: Observer, exc: Exception) -> None:
        # Once per observer: a broken observer would otherwise log on every check.
        if id(observer) not in self._failed_observers:
            self._failed_observers.add(id(observer))
            log.error(
                "observer %s failed (logged once): %s",
                type(observer).__name__,
                describe_exception(exc),
            )

    def _prepare(self, policies: PolicySet) -> None:
        """Before a new set goes live: the keys of its Authentication document and of its
        ``jwks.Fetch`` URLs (reload thread)."""
        self._authenticator.prepare(policies.authentication, policies.fetch_urls)

    def _unready_identity(self) -> str:
        """Why the identity stage cannot serve every request: issuers whose keys never arrived,
        a replay store that DPoP needs and cannot reach. Empty when it can."""
        problems = []
        unready = self._authenticator.unready()
        if unready:
            problems.append(f"no keys yet for {', '.join(unready)}")
        config = self._store.current().authentication
        if (
            self._state is not None
            and config is not None
            and config.issuers
            and config.dpop.mode is not DpopMode.DISABLED
        ):
            checked, problem = self._state_health
            if time.monotonic() - checked > _HEALTH_INTERVAL:
                health = self._state.health()
                problem = "" if health.ok else f"state store unavailable: {health.detail}"
                self._state_health = (time.monotonic(), problem)
            if problem:
                problems.append(problem)
        return "; ".join(problems)

    def status(self) -> Status:
        status = self._store.status
        if not status.ready:
            return Status(False, False, status.last_error or "no policies loaded")
        identity = self._unready_identity()
        if identity:
            return Status(True, False, identity)
        if status.last_error:
            return Status(
                True,
                False,
                f"last reload failed, still enforcing the previous "
                f"{status.policy_count} policies: {status.last_error}",
            )
        return Status(True, True, f"{status.policy_count} policies loaded")

    def start(self) -> None:
        if self._audit is not None:
            self._audit.start()
        if not self._store.reload():
            log.error("policies not loaded: %s", self._store.status.last_error)
        else:
            log.info(
                "loaded %d policies from %s", self._store.status.policy_count, self._store.directory
            )
        self._store.watch(self._reload_interval)

    def stop(self) -> None:
        self._store.stop()
        if key_set_provider() == self._authenticator.fetched_document:
            serve_key_sets(None)
        self._authenticator.close()
        if self._state is not None:
            self._state.close()
        if self._metrics is not None:
            self._metrics.flush()
        if self._audit is not None and not self._audit.close():
            log.error("audit log destination is stuck; some audit lines were not written")
