"""Prometheus metrics, correct across ``--workers`` processes.

With several workers, prometheus-client's multiprocess mode keeps per-process files in
``PROMETHEUS_MULTIPROC_DIR`` and any worker can render the sum; the supervisor sets the directory
before the workers start. prometheus-client decides on that mode when it is first imported, so a
process must have the variable before it imports this module.

The decision path has a budget of a few tens of microseconds, so :class:`Metrics` resolves label
children once and keeps them in dicts: ``.labels()`` validates and hashes on every call.

Policy evaluations are the exception to counting as they happen: a ``tools/call`` asks every
policy of its method (nine in the example set), and an increment costs ~0.3 us (~1 us in
multiprocess mode, where it writes a shared file). The engine reports each message's results as
one pattern (the bucket's policy names, a tuple of results); patterns are tallied in a plain dict
under one lock per check and added to the counters by a background thread every
:data:`EVALUATIONS_FLUSH_SECONDS` (and by :meth:`Metrics.flush`, e.g. at shutdown), so the
counter lags the decisions by at most that long.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from authz_server import __version__
from authz_server.decision import DecidedBy
from authz_server.identity.model import Identity, Reason
from authz_server.mcp.message import FailureReason
from authz_server.observe.event import DecisionEvent
from authz_server.observe.labels import OTHER, IssuerLabels, ToolLabels, method_label, outcome
from authz_server.observe.redact import mask_text

log = logging.getLogger(__name__)

BUILD_INFO = Gauge(
    "authz_build_info", "Build information; always 1.", ["version"], multiprocess_mode="max"
)
BUILD_INFO.labels(version=__version__).set(1)

OUTCOMES = ("allow", "deny", "error")
POLICY_RESULTS = ("allow", "deny", "approval", "no_match", "error", "skipped")
AUDIT_DROP_REASONS = ("queue_full", "write_error")
# What the approval gate answered: the call recorded or found waiting (pending), a granted approval
# spent on it (used), a person's refusal (rejected), or the store could not be asked
# (unavailable, a 503).
APPROVAL_OUTCOMES = ("pending", "used", "rejected", "unavailable")
VERIFIED = "verified"
# Values of the identity counter's ``outcome``: verified, or why verification failed.
IDENTITY_OUTCOMES = frozenset({VERIFIED, *map(str, Reason)})
# Decisions take tens of microseconds; the top buckets catch a slow policy or a paused process.
DURATION_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
LOAD_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0)
# List filtering (issue 16): the list methods, what became of one result, entries hidden per list.
LIST_METHODS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")
LIST_OUTCOMES = ("unchanged", "filtered", "error")
LIST_VERDICTS = ("shown", "hidden")
EVALUATIONS_FLUSH_SECONDS = 1.0


class Metrics:
    """The metrics observer. Also takes policy evaluations, policy loads and audit drops, and
    through :attr:`jwks` the key stores' fetches.

    One instance per registry: a second one on the same registry fails to register. Tests pass
    their own :class:`CollectorRegistry`; the server uses the default one, which
    :func:`render_metrics` exposes.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        tool_limit: int = 100,
        known_tools: Iterable[str] = (),
    ) -> None:
        self._registry = registry
        self._collectors: list[Any] = []
        self._tool_label = ToolLabels(tool_limit, known_tools)
        self._failed_once = False

        decisions = self._add(
            Counter(
                "authz_decisions",
                "Decisions answered, by outcome and by what decided.",
                ["outcome", "decided_by"],
                registry=registry,
            )
        )
        self._decisions = {
            (out, str(by)): decisions.labels(out, str(by)) for out in OUTCOMES for by in DecidedBy
        }
        self._duration = self._add(
            Histogram(
                "authz_decision_duration_seconds",
                "Time from receiving a check to its decision (decode, policies, response).",
                buckets=DURATION_BUCKETS,
                registry=registry,
            )
        )
        self._dry_run_family = self._add(
            Counter(
                "authz_dry_run_decisions",
                "Would-be decisions of Audit-mode policies (not enforced), by policy and outcome.",
                ["policy", "outcome"],
                registry=registry,
            )
        )
        self._dry_run: dict[tuple[str, bool], Any] = {}
        self._evaluations_family = self._add(
            Counter(
                "authz_policy_evaluations",
                "Policy evaluations by policy and result "
                "(allow, deny, approval, no_match, error, skipped).",
                ["policy", "result"],
                registry=registry,
            )
        )
        self._evaluations: dict[tuple[str, str], Any] = {}
        # (policy names, results) -> messages not yet added to the counter; see the module
        # docstring.
        self._tally: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        self._tally_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._stop_flusher = threading.Event()
        self._messages_family = self._add(
            Counter(
                "authz_mcp_messages",
                "MCP messages decided (each batch element counts), by method, tool and the outcome "
                "of the request; method and tool are folded into 'other' beyond known values.",
                ["method", "tool", "outcome"],
                registry=registry,
            )
        )
        self._messages: dict[tuple[str, str, str], Any] = {}
        failures = self._add(
            Counter(
                "authz_decode_failures",
                "Request bodies meant as MCP that failed to decode, by reason.",
                ["reason"],
                registry=registry,
            )
        )
        self._failures = {str(reason): failures.labels(str(reason)) for reason in FailureReason}
        self._failure_other = failures.labels(OTHER)
        loads = self._add(
            Counter(
                "authz_policy_loads",
                "Policy set loads and reloads, by result (success, failure).",
                ["result"],
                registry=registry,
            )
        )
        self._load_ok, self._load_failed = loads.labels("success"), loads.labels("failure")
        self._load_duration = self._add(
            Histogram(
                "authz_policy_load_duration_seconds",
                "Time to read, validate and compile the policies.",
                buckets=LOAD_BUCKETS,
                registry=registry,
            )
        )
        self._last_success = self._add(
            Gauge(
                "authz_policy_last_load_success_timestamp_seconds",
                "When the policy set was last loaded successfully (Unix time).",
                multiprocess_mode="max",
                registry=registry,
            )
        )
        self._last_ok = self._add(
            Gauge(
                "authz_policy_last_load_ok",
                "1 if the latest policy load succeeded, 0 if it failed (the previous set serves).",
                multiprocess_mode="mostrecent",
                registry=registry,
            )
        )
        self._loaded = self._add(
            Gauge(
                "authz_policies_loaded",
                "Policies in the set being enforced.",
                multiprocess_mode="mostrecent",
                registry=registry,
            )
        )
        drops = self._add(
            Counter(
                "authz_audit_lines_dropped",
                "Audit lines lost: queue_full (writer behind) or write_error (destination failed).",
                ["reason"],
                registry=registry,
            )
        )
        self._drops = {reason: drops.labels(reason) for reason in AUDIT_DROP_REASONS}
        approvals = self._add(
            Counter(
                "authz_approvals",
                "Answers of the approval gate to calls a policy sent to a person, by outcome "
                "(pending, used, rejected, unavailable).",
                ["outcome"],
                registry=registry,
            )
        )
        self._approvals = {name: approvals.labels(name) for name in APPROVAL_OUTCOMES}
        self._identity_family = self._add(
            Counter(
                "authz_identity_verifications",
                "Identity verifications, by verified issuer, method and outcome (verified or the "
                "reason code of the failure).",
                ["issuer", "method", "outcome"],
                registry=registry,
            )
        )
        # (issuer, method, error) -> child; the issuer already folded by _issuer_label.
        self._identities: dict[tuple[str, str, str], Any] = {}
        self._issuer_label = IssuerLabels()
        self.jwks = JwksMetrics(self)
        lists = self._add(
            Counter(
                "authz_list_results",
                "List results (tools/list, prompts/list, resources/list, "
                "resources/templates/list) judged for the caller, by method and outcome: "
                "unchanged (nothing hidden), filtered (entries hidden), error (not judged; "
                "every entry hidden).",
                ["method", "outcome"],
                registry=registry,
            )
        )
        self._lists = {
            (method, out): lists.labels(method, out)
            for method in (*LIST_METHODS, OTHER)
            for out in LIST_OUTCOMES
        }
        entries = self._add(
            Counter(
                "authz_list_entries",
                "Entries of the list results judged, by method and verdict: shown, or hidden "
                "(no call of it could be allowed to the caller). Divided by authz_list_results: "
                "entries hidden per list.",
                ["method", "verdict"],
                registry=registry,
            )
        )
        self._entries = {
            (method, verdict): entries.labels(method, verdict)
            for method in (*LIST_METHODS, OTHER)
            for verdict in LIST_VERDICTS
        }
        self._list_duration = self._add(
            Histogram(
                "authz_list_filter_duration_seconds",
                "Time to judge the entries of one list result for its caller.",
                buckets=DURATION_BUCKETS,
                registry=registry,
            )
        )

    def _add(self, collector: Any) -> Any:
        self._collectors.append(collector)
        return collector

    def observe(self, event: DecisionEvent) -> None:
        try:
            decision = event.decision
            out = outcome(decision)
            self._decisions[out, decision.decided_by].inc()
            if decision.decided_by is DecidedBy.APPROVAL:
                self._approvals[_approval_outcome(decision.dynamic_metadata)].inc()
            self._duration.observe(event.seconds)
            decoded = event.decoded
            if decoded.failure is not None:
                self._failures.get(decoded.failure.reason, self._failure_other).inc()
            for message in decoded.messages:
                self._message_child(message, out).inc()
            for result in decision.dry_run:
                self._dry_run_child(result.policy, result.allowed).inc()
            identity = event.identity
            if identity is not None:
                self._identity_child(identity).inc()
        except Exception:
            self._failed("observe")

    def policies_evaluated(
        self, evaluations: Iterable[tuple[tuple[str, ...], tuple[str, ...]]]
    ) -> None:
        """The engine's listener: per message of one check, the names of the policies asked and
        each one's result (one of :data:`POLICY_RESULTS`; anything else counts as ``error``).
        Tallied here, added to the counter within :data:`EVALUATIONS_FLUSH_SECONDS`."""
        try:
            with self._tally_lock:
                tally = self._tally
                for key in evaluations:
                    tally[key] = tally.get(key, 0) + 1
            if self._flusher is None:
                self._start_flusher()
        except Exception:
            self._failed("policies_evaluated")

    def flush(self) -> None:
        """Add the tallied policy evaluations to the counter now."""
        try:
            with self._tally_lock:
                tally, self._tally = self._tally, {}
            counts: dict[tuple[str, str], int] = {}
            for (names, results), messages in tally.items():
                for key in zip(names, results, strict=True):
                    counts[key] = counts.get(key, 0) + messages
            for (policy, result), count in counts.items():
                self._evaluation_child(policy, result).inc(count)
        except Exception:
            self._failed("flush")

    def _evaluation_child(self, policy: str, result: str) -> Any:
        child = self._evaluations.get((policy, result))
        if child is None:
            label = result if result in POLICY_RESULTS else "error"
            child = self._evaluations[policy, result] = self._evaluations_family.labels(
                policy, label
            )
        return child

    def _start_flusher(self) -> None:
        with self._tally_lock:
            if self._flusher is not None:
                return
            # The thread holds the instance weakly: an instance nobody uses ends its thread.
            self._flusher = threading.Thread(
                target=_flush_periodically,
                args=(weakref.ref(self), self._stop_flusher),
                name="metrics-flush",
                daemon=True,
            )
        self._flusher.start()

    def list_filtered(
        self, method: str, shown: int, hidden: int, seconds: float, error: bool = False
    ) -> None:
        """A list result judged for its caller (``PolicyAuthorizer.filter_list``): ``shown``
        entries kept and ``hidden`` removed, in ``seconds``; ``error``: it could not be judged
        and every entry was removed. Methods other than the four lists fold into ``other``."""
        try:
            method = method if method in LIST_METHODS else OTHER
            out = "error" if error else ("filtered" if hidden else "unchanged")
            self._lists[method, out].inc()
            if shown:
                self._entries[method, "shown"].inc(shown)
            if hidden:
                self._entries[method, "hidden"].inc(hidden)
            self._list_duration.observe(seconds)
        except Exception:
            self._failed("list_filtered")

    def policy_loaded(self, ok: bool, error: str | None, count: int, seconds: float) -> None:
        """The policy store's load callback. ``error`` is not a label: it is unbounded text."""
        del error
        try:
            self._load_duration.observe(seconds)
            if ok:
                self._load_ok.inc()
                self._last_success.set(time.time())
                self._last_ok.set(1)
                self._loaded.set(count)
            else:
                self._load_failed.inc()
                self._last_ok.set(0)
        except Exception:
            self._failed("policy_loaded")

    def audit_dropped(self, reason: str = "queue_full", count: int = 1) -> None:
        """The audit log's drop callback."""
        try:
            self._drops.get(reason, self._drops["write_error"]).inc(count)
        except Exception:
            self._failed("audit_dropped")

    def close(self) -> None:
        """Flush, stop the flushing thread and unregister from the registry, so that another
        instance can take its place."""
        self.flush()
        self._stop_flusher.set()
        if self._registry is not None:
            for collector in self._collectors:
                self._registry.unregister(collector)
            self._registry = None

    def _message_child(self, message: Any, out: str) -> Any:
        method = method_label(message)
        tool = self._tool_label(message.tool_name) if method == "tools/call" else ""
        key = (method, tool, out)
        child = self._messages.get(key)
        if child is None:
            child = self._messages[key] = self._messages_family.labels(method, tool, out)
        return child

    def _dry_run_child(self, policy: str, allowed: bool) -> Any:
        child = self._dry_run.get((policy, allowed))
        if child is None:
            child = self._dry_run[policy, allowed] = self._dry_run_family.labels(
                policy, "allow" if allowed else "deny"
            )
        return child

    def _identity_child(self, identity: Identity) -> Any:
        key = (self._issuer_label(identity.issuer), identity.method, identity.error)
        child = self._identities.get(key)
        if child is None:
            issuer, method, error = key
            if error:
                # A failure carries no issuer (design.md: every other field is empty).
                result, issuer = (error if error in IDENTITY_OUTCOMES else OTHER), ""
            else:
                result = VERIFIED if identity.authenticated else OTHER
            child = self._identities[key] = self._identity_family.labels(
                issuer, str(method), result
            )
        return child

    def _failed(self, where: str) -> None:
        # Observers must never break a decision; say so once rather than once per request.
        if not self._failed_once:
            self._failed_once = True
            log.exception("metrics %s failed; further failures are not logged", where)


class JwksMetrics:
    """The key stores' observer (:class:`authz_server.identity.jwks.JwksObserver`): fetches of
    each issuer's JWK set and the keys it serves. Made by :class:`Metrics`, as ``metrics.jwks``.

    ``source`` is an issuer of the ``Authentication`` document or ``jwks.Fetch <url>`` for a URL
    the policies fetch: operator configuration, so a bounded label, but passed through the
    credential masking in case a URL carries a key in its query. Called from the fetch threads,
    a few times an hour per source.

    The gauge keeps, across ``--workers``, the fewest keys any live worker holds: a worker whose
    fetch never succeeded shows as 0 (its series is created at 0 by the first failed fetch).
    """

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics._registry
        self._failed = metrics._failed
        self._fetches = metrics._add(
            Counter(
                "authz_jwks_fetches",
                "Fetches of an issuer's JWK set, by result (ok, error: the last keys are kept).",
                ["issuer", "result"],
                registry=registry,
            )
        )
        self._keys = metrics._add(
            Gauge(
                "authz_jwks_keys",
                "Keys in the JWK set an issuer is verified with (the fewest of any worker).",
                ["issuer"],
                multiprocess_mode="livemin",
                registry=registry,
            )
        )
        self._labels: dict[str, str] = {}

    def fetched(self, source: str, ok: bool) -> None:
        try:
            issuer = self._label(source)
            self._fetches.labels(issuer, "ok" if ok else "error").inc()
            if not ok:
                self._keys.labels(issuer)  # 0 until keys arrive; unchanged if some did
        except Exception:
            self._failed("jwks.fetched")

    def key_count(self, source: str, count: int) -> None:
        try:
            self._keys.labels(self._label(source)).set(count)
        except Exception:
            self._failed("jwks.key_count")

    def _label(self, source: str) -> str:
        label = self._labels.get(source)
        if label is None:
            label = self._labels[source] = mask_text(source)
        return label


def _flush_periodically(ref: weakref.ref[Metrics], stop: threading.Event) -> None:
    while not stop.wait(EVALUATIONS_FLUSH_SECONDS):
        metrics = ref()
        if metrics is None:
            return
        metrics.flush()
        del metrics


def render_metrics() -> bytes:
    """The exposition text for a scrape: this process alone, or all workers summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def _approval_outcome(metadata: Mapping[str, Any]) -> str:
    """The gate's outcome from the decision's metadata; ``unavailable`` when it named no
    approval (the store could not be asked)."""
    block = metadata.get("approval")
    found = block.get("outcome") if isinstance(block, Mapping) else None
    return found if found in APPROVAL_OUTCOMES else "unavailable"
