"""The decision path behind the gRPC server: decode the body, verify the caller, judge the
request, tell the observers.

This is the one place that knows the order of the stages; the stages themselves know nothing
of each other beyond the values they exchange.

Every check gets a decision id, a metric and an audit line, whatever fails: a stage that raises
(the decoder, the engine, or the transport before a :class:`Request` exists, through
:meth:`PolicyAuthorizer.internal_error`) gives an explicit denial (``decided_by: error``) whose
body names only the decision id, and the server log names the exception's class and place,
never its text. An observer that raises is logged and skipped; the decision stands.

Requests of both transports take this path: a gRPC one (``Request.transport`` ``grpc``) is judged
by the set's Envoy-mode policies, one from the HTTP authorizer (``http``) by its HTTP-mode
policies, each by an engine of its own; every other stage is the same.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from authz_server.authorizer import Status
from authz_server.cel.jwt import key_set_provider, serve_key_sets
from authz_server.config import ServeConfig
from authz_server.decision import DecidedBy, Decision, allow
from authz_server.identity import Identity
from authz_server.identity.challenge import refusal_for
from authz_server.identity.stage import Authenticator
from authz_server.listing import ListFilter, ListingCaller, ListKind, MalformedList, filter_result
from authz_server.mcp import DEFAULT_LIMITS, Limits, decode
from authz_server.mcp.message import Decoded, DecodeFailure, FailureReason
from authz_server.observe import AuditLog, Metrics
from authz_server.observe.event import DecisionEvent, Observer
from authz_server.observe.redact import Redactor
from authz_server.oversight.approvals import Approvals
from authz_server.oversight.errors import ApprovalError
from authz_server.oversight.gate import ApprovalGate, Verdict
from authz_server.oversight.revocations import RevocationWatch
from authz_server.policy import render
from authz_server.policy.engine import Combine, Default, Engine, EngineOptions, describe_exception
from authz_server.policy.model import PolicySet
from authz_server.policy.schema import HTTP_MODE
from authz_server.policy.store import PolicyStore
from authz_server.request import HTTP, Request
from authz_server.state import Store, StoreUnavailable, open_store

log = logging.getLogger(__name__)


# What observers see of a body when decoding it failed inside the server: the failure's class,
# none of the decoder's text (it may quote the body).
_INTERNAL_DECODED = Decoded(failure=DecodeFailure(FailureReason.INTERNAL_ERROR, "internal error"))
_NOTHING_DECODED = Decoded()


# How long a /readyz answer about the state store is reused: probes must not hammer it.
_HEALTH_INTERVAL = 2.0


def _emptied(result: Any, kind: ListKind) -> tuple[dict[str, Any], int]:
    """A list result with every entry removed, and how many there were."""
    if not isinstance(result, Mapping):
        return {kind.entries: []}, 0
    entries = result.get(kind.entries)
    emptied = dict(result)
    emptied[kind.entries] = []
    return emptied, len(entries) if isinstance(entries, list) else 0


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
        approval_ttl: float = 600.0,
        approval_url: str = "http://127.0.0.1:9002",
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
        # The kill switch: a local mirror of the store's revocations, refreshed in the background.
        self._revocations = RevocationWatch(state) if state is not None else None
        # Human approval of the calls policies mark with approval.Require.
        self._gate = (
            ApprovalGate(Approvals(state, ttl=approval_ttl), Redactor().value)
            if state is not None
            else None
        )
        self._approval_url = approval_url.rstrip("/")
        # jwks.Fetch(url) in the policies reads the keys this process's identity stage fetched
        # for the URL (the one process-wide seam of the CEL libraries; see cel/jwt.py).
        serve_key_sets(self._authenticator.fetched_document, self._authenticator.request_refetch)
        self._state_health: tuple[float, str] = (0.0, "")
        self._engine = Engine(
            store.current,
            options,
            on_evaluated=metrics.policies_evaluated if metrics is not None else None,
        )
        # The HTTP authorizer's requests: the set's HTTP-mode policies.
        self._http_engine = Engine(
            lambda: store.current().http_set,
            options,
            on_evaluated=metrics.policies_evaluated if metrics is not None else None,
            mode=HTTP_MODE,
        )
        self._limits = limits
        self._decompress = decompress
        self._observers = tuple(observers)
        self._reload_interval = reload_interval
        self._ids = DecisionIds()
        self._audit = audit
        self._metrics = metrics
        self._failed_observers: set[int] = set()
        # List filtering: the filters of the live set and of the one being prepared (at most
        # two), and whether lists are filtered at all (then a reload prepares the new set's).
        self._list_filters: tuple[ListFilter, ...] = ()
        self._listing_used = False

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
            approval_ttl=config.approval_ttl,
            approval_url=config.approval_url,
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
                    engine = self._http_engine if request.transport == HTTP else self._engine
                    decision = self._revoked(identity, decoded) or engine.decide(
                        request, decoded, identity
                    )
                    if decision.approval:
                        decision = self._approval(decision, identity, decoded)
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

    def filter_list(self, request: Request, message_result: Any, method: str) -> tuple[Any, int]:
        """The JSON-RPC ``result`` of a list response without the entries its caller could not
        use, and how many were removed.

        ``request`` is the list request (the request phase of the same exchange): its headers,
        connection and identity make the caller. The identity is verified again with the live
        set's ``Authentication`` document, without claiming a DPoP proof a second time (the
        request phase claimed it). ``method`` is the request's JSON-RPC method: for
        ``tools/list``, ``prompts/list``, ``resources/list`` and ``resources/templates/list``
        an entry is removed when every call using it (``tools/call`` of the tool,
        ``prompts/get``, ``resources/read``) would be denied, whatever it carried
        (:mod:`authz_server.listing`); a caller refused before the policies (``required``
        authentication) or revoked is shown nothing it cannot call. Any other method: the
        result unchanged and 0.

        Never raises. A result that cannot be judged (not an object, entries not a list, an
        internal error) comes back with every entry removed: fail closed. Counted in the list
        metrics. Call it where :meth:`check` is called (the identity stage's caches are the
        decision path's)."""
        kind = ListKind.for_method(method)
        if kind is None:
            return message_result, 0
        self._listing_used = True
        clock = time.perf_counter()
        error = False
        try:
            result, hidden = filter_result(message_result, kind, self._list_judge(request, kind))
        except MalformedList as exc:
            log.warning("%s result not filtered, every entry removed: %s", method, exc)
            result, hidden, error = *_emptied(message_result, kind), True
        except Exception as exc:
            log.error(
                "%s result not filtered, every entry removed: %s", method, describe_exception(exc)
            )
            result, hidden, error = *_emptied(message_result, kind), True
        if self._metrics is not None:
            entries = result.get(kind.entries)
            shown = len(entries) if isinstance(entries, list) else 0
            self._metrics.list_filtered(method, shown, hidden, time.perf_counter() - clock, error)
        return result, hidden

    def _list_judge(
        self, request: Request, kind: ListKind
    ) -> Callable[[Sequence[str]], tuple[bool, ...]]:
        """Per entry name, whether the caller of ``request`` may see it."""
        policies = self._store.current()
        config = policies.authentication
        identity = self._authenticator.verify(request, config, claim=False)
        if refusal_for(identity, config, request) is not None:
            return lambda names: (False,) * len(names)  # refused before any policy
        list_filter = self._list_filter(policies)
        caller = ListingCaller(request, identity)
        revoked = self._revoked_entries(identity, kind)

        def keep(names: Sequence[str]) -> tuple[bool, ...]:
            verdicts = list_filter.visible(caller, kind, names)
            if revoked is None:
                return verdicts
            return tuple(v and not revoked(n) for v, n in zip(verdicts, names, strict=True))

        return keep

    def _list_filter(self, policies: PolicySet) -> ListFilter:
        for list_filter in self._list_filters:
            if list_filter.policies is policies:
                return list_filter
        list_filter = ListFilter(policies, self._engine.options)
        self._list_filters = (list_filter, *self._list_filters[:1])
        return list_filter

    def _revoked_entries(self, identity: Identity, kind: ListKind) -> Callable[[str], bool] | None:
        """Which entries the kill switch refuses the caller (None: none). A tool's revocation
        names tools; prompts and resources are refused only by one without tools. Revocations
        that cannot be known hide nothing (the call itself is answered 503)."""
        if self._revocations is None:
            return None
        try:
            index = self._revocations.index()
        except StoreUnavailable:
            return None
        if not index.revocations:
            return None
        if kind is ListKind.TOOLS:
            return lambda name: index.match(identity, name) is not None
        everything = index.match(identity, "") is not None
        return lambda name: everything

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
        decision = decision.with_metadata(metadata)
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

    def _revoked(self, identity: Identity, decoded: Decoded) -> Decision | None:
        """The kill switch, after identity and before the policies: a denial when a revocation
        matches the caller (for any tool the request calls), 503 when the revocations cannot be
        known; None to ask the policies. Reads the local mirror only, never the store."""
        if self._revocations is None:
            return None
        try:
            index = self._revocations.index()
        except StoreUnavailable:
            return render.render_revocations_unavailable(decoded)
        if not index.revocations:
            return None
        for message in decoded.messages or (None,):
            tool = message.tool_name if message is not None else ""
            revocation = index.match(identity, tool)
            if revocation is not None:
                return render.render_revoked(revocation.reason, decoded)
        return None

    def _approval(self, decision: Decision, identity: Identity, decoded: Decoded) -> Decision:
        """A policy asked for a person's approval: let the call through once if one was granted,
        else record it and tell the client where it can be approved (or that it was refused).
        A batch is not approvable (one approval per call): its denial stands."""
        if self._gate is None or decoded.batch or len(decoded.messages) != 1:
            return decision
        message = decoded.messages[0]
        target = message.tool_name or message.uri or message.prompt_name
        try:
            result = self._gate.judge(
                identity, message.method, target, message.arguments or {}, decision.approval
            )
        except StoreUnavailable:
            return render.render_approvals_unavailable(decision, decoded)
        except ApprovalError as exc:
            log.warning("approval not recorded: %s", exc)
            return decision
        approval = result.approval
        # Envoy's metadata and the audit line name the approval: who decided it and when.
        metadata = {
            "approval": {
                "id": approval.id,
                "outcome": str(result.verdict),
                "decided_by": approval.decided_by,
                "decided": approval.decided,
            }
        }
        if result.verdict is Verdict.USED:
            return allow(
                decided_by=DecidedBy.APPROVAL,
                policy=decision.policy,
                reason=f"approved by {approval.decided_by or 'an operator'} "
                f"(approval {approval.id}), used once",
                dynamic_metadata=metadata,
            )
        if result.verdict is Verdict.REJECTED:
            answer = render.render_approval_rejected(
                decision, decoded, approval.decided_by, approval.decision_reason
            )
        else:
            url = f"{self._approval_url}/?approval={approval.id}"
            answer = render.render_approval_pending(decision, decoded, url, approval.id)
        return replace(answer, dynamic_metadata={**answer.dynamic_metadata, **metadata})

    def _prepare(self, policies: PolicySet) -> None:
        """Before a new set goes live: the keys of its Authentication document and of its
        ``jwks.Fetch`` URLs (reload thread)."""
        self._authenticator.prepare(policies.authentication, policies.fetch_urls)
        if self._listing_used:
            # Lists are filtered: compile the new set's list filter here, not on a request.
            list_filter = ListFilter(policies, self._engine.options)
            list_filter.prepare()
            self._list_filters = (list_filter, *self._list_filters[:1])

    def _unready_stages(self) -> str:
        """Why the identity and revocation stages cannot serve every request: issuers whose
        keys never arrived, a state store that cannot be reached (revocations and DPoP replay
        checks need it). Empty when they can."""
        problems = []
        unready = self._authenticator.unready()
        if unready:
            problems.append(f"no keys yet for {', '.join(unready)}")
        if self._state is not None:
            checked, problem = self._state_health
            if time.monotonic() - checked > _HEALTH_INTERVAL:
                health = self._state.health()
                problem = "" if health.ok else f"state store unavailable: {health.detail}"
                self._state_health = (time.monotonic(), problem)
            if problem:
                problems.append(problem)
            elif self._revocations is not None and (
                self._revocations.staleness > self._revocations.max_staleness
            ):
                problems.append("revocations not refreshed from the state store")
        return "; ".join(problems)

    def status(self) -> Status:
        status = self._store.status
        if not status.ready:
            return Status(False, False, status.last_error or "no policies loaded")
        stages = self._unready_stages()
        if stages:
            return Status(True, False, stages)
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
        if self._revocations is not None:
            try:
                self._revocations.refresh()  # before serving, so the first checks are not stale
            except StoreUnavailable as exc:
                log.error("revocations not loaded, checks answer 503 until they are: %s", exc)
            self._revocations.start()

    def stop(self) -> None:
        self._store.stop()
        if self._revocations is not None:
            self._revocations.stop()
        if key_set_provider() == self._authenticator.fetched_document:
            serve_key_sets(None)
        self._authenticator.close()
        if self._state is not None:
            self._state.close()
        if self._metrics is not None:
            self._metrics.flush()
        if self._audit is not None and not self._audit.close():
            log.error("audit log destination is stuck; some audit lines were not written")
