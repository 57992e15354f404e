"""Approvals as the server and the approver use them: one record per call however many replicas
ask, decisions only from pending, exactly one use of a grant under concurrency (threads, and
processes with their own store instances), and expiry."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import pytest

from authz_server.identity.model import Identity, Method
from authz_server.oversight import (
    Approval,
    ApprovalError,
    ApprovalNotFound,
    ApprovalNotPending,
    Approvals,
    caller_of,
    canonical_digest,
)
from authz_server.oversight import approvals as approvals_module
from authz_server.state import Store

from . import workers

CALLER = {
    "issuer": "https://idp.example.com",
    "subject": "agent-7",
    "client_id": "ci-bot",
    "spiffe_id": "",
    "method": "dpop",
}
ARGUMENTS = {"owner": "acme", "repo": "api", "pull_number": 7, "note": "fusionnée ✓"}
KEYS = 200  # enough work per process that both overlap even on a busy machine
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["authz_server.state.redis_store", "tests.oversight.workers"])


def ask(
    approvals: Approvals,
    *,
    caller: dict[str, str] = CALLER,
    method: str = "tools/call",
    target: str = "merge_pull_request",
    arguments: Any = ARGUMENTS,
) -> Approval:
    return approvals.request(
        caller, method, target, canonical_digest(arguments), arguments, "merging needs a human"
    )


def test_the_same_call_gets_the_same_pending_approval(store: Store) -> None:
    approvals = Approvals(store)
    first = ask(approvals)
    assert first.state == "pending" and first.reason == "merging needs a human"
    reordered = dict(reversed(list(ARGUMENTS.items())))
    assert ask(approvals, arguments=reordered) == first
    assert [a.id for a in approvals.list()] == [first.id]
    assert approvals.get(first.id) == first


@pytest.mark.parametrize(
    "change",
    [
        {"caller": {**CALLER, "subject": "agent-8"}},
        {"caller": {**CALLER, "issuer": "https://other.example.com"}},
        {"caller": {**CALLER, "client_id": "other-bot"}},
        {"caller": {**CALLER, "spiffe_id": "spiffe://example.org/x"}},
        {"caller": {**CALLER, "method": "bearer"}},
        {"method": "prompts/get"},
        {"target": "merge_pull_requests"},
        {"arguments": {**ARGUMENTS, "pull_number": 8}},
        {"arguments": {**ARGUMENTS, "pull_number": "7"}},
    ],
    ids=["subject", "issuer", "client", "spiffe", "auth-method", "mcp-method", "target",
         "argument-value", "argument-type"],
)  # fmt: skip
def test_any_other_call_gets_its_own_approval(store: Store, change: dict[str, Any]) -> None:
    approvals = Approvals(store)
    mine = ask(approvals)
    approvals.approve(mine.id, by="alice")
    other = ask(approvals, **change)
    assert other.id != mine.id and other.key != mine.key and other.state == "pending"
    assert approvals.consume(other.key) is None  # my grant does not let the other call through
    assert approvals.consume(mine.key) is not None


def test_concurrent_identical_requests_share_one_record(store: Store) -> None:
    approvals = Approvals(store)
    start = threading.Barrier(20)
    got: list[Approval] = []

    def request() -> None:
        start.wait(10)
        got.append(ask(approvals))

    threads = [threading.Thread(target=request) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 20 and len({a.id for a in got}) == 1
    assert len(store.list("approval")) == 1


def test_decisions_are_taken_only_from_pending(store: Store) -> None:
    approvals = Approvals(store)
    granted = ask(approvals)
    approved = approvals.approve(granted.id, by="alice")
    assert (approved.state, approved.decided_by) == ("approved", "alice")
    assert approved.decided is not None and approved.decided >= granted.created
    with pytest.raises(ApprovalNotPending, match="approved, not pending"):
        approvals.approve(granted.id, by="bob")
    with pytest.raises(ApprovalNotPending):
        approvals.reject(granted.id, by="bob", reason="too late")
    assert approvals.get(granted.id) == approved

    refused = ask(approvals, target="delete_file")
    rejected = approvals.reject(refused.id, by="bob", reason="not on a Friday")
    assert (rejected.state, rejected.decision_reason) == ("rejected", "not on a Friday")
    with pytest.raises(ApprovalNotPending, match="rejected"):
        approvals.approve(refused.id, by="alice")
    # The agent asking again hears the rejection, and its call is not let through.
    assert ask(approvals, target="delete_file") == rejected
    assert approvals.consume(rejected.key) is None

    for unknown in ("0" * 24, "not-an-id", ""):
        with pytest.raises(ApprovalNotFound):
            approvals.approve(unknown, by="alice")
    assert {a.state for a in approvals.list(None)} == {"approved", "rejected"}
    assert approvals.list() == []  # nothing pending


def test_concurrent_decisions_have_one_winner(store: Store) -> None:
    """Two approvers clicking at once (the page on two replicas, the CLI): one decision holds,
    every other is told the approval is no longer pending."""
    approvals = Approvals(store)
    pending = ask(approvals)
    start = threading.Barrier(20)
    outcomes: list[str] = []

    def decide(n: int) -> None:
        start.wait(10)
        try:
            if n % 2:
                approvals.approve(pending.id, by=f"approver-{n}")
            else:
                approvals.reject(pending.id, by=f"approver-{n}", reason="no")
            outcomes.append(f"approver-{n}")
        except ApprovalNotPending:
            outcomes.append("refused")

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [o for o in outcomes if o != "refused"]
    assert len(outcomes) == 20 and len(winners) == 1
    final = approvals.get(pending.id)
    assert final is not None and final.decided_by == winners[0]
    assert final.state == ("approved" if int(winners[0].split("-")[1]) % 2 else "rejected")


def test_a_grant_lets_exactly_one_call_through_and_the_next_call_asks_again(store: Store) -> None:
    approvals = Approvals(store)
    first = ask(approvals)
    assert approvals.consume(first.key) is None  # pending: not yet
    approvals.approve(first.id, by="alice")
    used = approvals.consume(first.key)
    assert used is not None and (used.id, used.state, used.decided_by) == (
        first.id,
        "used",
        "alice",
    )
    assert approvals.consume(first.key) is None

    again = ask(approvals)
    assert again.state == "pending" and again.key == first.key and again.created > first.created
    assert approvals.consume(again.key) is None
    states = Counter(a.state for a in approvals.list(None))
    assert states == {"used": 1, "pending": 1}  # the used one is kept, moved aside, until it ends
    assert [a.id for a in approvals.list()] == [again.id]


def test_twenty_simultaneous_retries_of_a_grant_let_exactly_one_through(store: Store) -> None:
    approvals = Approvals(store)
    keys = []
    for n in range(20):
        pending = ask(approvals, arguments={**ARGUMENTS, "pull_number": n})
        approvals.approve(pending.id, by="alice")
        keys.append(pending.key)
    start = threading.Barrier(20)
    won: list[str] = []
    lock = threading.Lock()

    def retry(order: list[str]) -> None:
        start.wait(10)
        got = [key for key in order if approvals.consume(key) is not None]
        with lock:
            won.extend(got)

    threads = [threading.Thread(target=retry, args=(keys[i:] + keys[:i],)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert Counter(won) == Counter(keys)


def test_a_grant_is_used_once_across_two_processes(store: Store, store_url: str) -> None:
    """Two processes, each with its own store instance and 10 threads, retry the same approved
    calls at once, as two replicas would: every call goes through exactly once."""
    approvals = Approvals(store)
    keys = []
    for n in range(KEYS):
        pending = ask(approvals, arguments={**ARGUMENTS, "pull_number": n})
        approvals.approve(pending.id, by="alice")
        keys.append(pending.key)
    barrier = CONTEXT.Barrier(2)
    results = CONTEXT.Queue()
    procs = [
        CONTEXT.Process(target=workers.race_consume, args=(store_url, keys, 10, barrier, results))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    won = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert Counter(key for wins in won for key in wins) == Counter(keys)
    assert all(wins for wins in won), "one process won everything: the race did not happen"
    assert {a.state for a in approvals.list(None)} == {"used"}


def test_approvals_end_after_their_lifetime(store: Store) -> None:
    approvals = Approvals(store, ttl=1.0)
    granted = ask(approvals)
    assert granted.expires - granted.created == pytest.approx(1.0, abs=0.5)
    approvals.approve(granted.id, by="alice")
    waiting = ask(approvals, target="delete_file")
    time.sleep(max(0.0, waiting.expires - time.time()) + 0.1)
    assert approvals.consume(granted.key) is None  # the grant lapsed unused
    assert approvals.get(granted.id) is None and approvals.list(None) == []
    with pytest.raises(ApprovalNotFound):
        approvals.approve(waiting.id, by="alice")
    fresh = ask(approvals)
    assert (fresh.id, fresh.state) == (granted.id, "pending") and fresh.created > granted.created


def test_a_move_abandoned_by_a_crash_is_finished_by_the_next_request(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that crashed between marking a used record as being moved and moving it must
    not block the call for the rest of the record's life."""
    monkeypatch.setattr(approvals_module, "RETIRE_STUCK_AFTER", 0.2)
    approvals = Approvals(store)
    first = ask(approvals)
    approvals.approve(first.id, by="alice")
    assert approvals.consume(first.key) is not None
    assert store.transition("approval", first.id, "used", "retiring.crashed") is not None
    time.sleep(0.3)
    again = ask(approvals)
    assert (again.id, again.state) == (first.id, "pending")
    assert Counter(a.state for a in approvals.list(None)) == {"used": 1, "pending": 1}


def test_to_json_gives_what_the_approver_sees(store: Store) -> None:
    approvals = Approvals(store)
    approval = ask(approvals)
    body = approval.to_json()
    assert set(body) == {
        "id", "state", "key", "caller", "mcp_method", "target", "arguments", "reason",
        "created", "decided", "decided_by", "decision_reason", "expires",
    }  # fmt: skip
    assert body["caller"] == CALLER and body["arguments"] == ARGUMENTS
    assert (body["mcp_method"], body["target"], body["decided"]) == (
        "tools/call", "merge_pull_request", None,
    )  # fmt: skip


def test_bad_requests_are_refused(store: Store) -> None:
    approvals = Approvals(store)
    with pytest.raises(ApprovalError, match="digest"):
        approvals.request(CALLER, "tools/call", "x", "abc", {}, "r")
    big = {"blob": "x" * 70_000}
    with pytest.raises(ApprovalError, match="clip them"):
        approvals.request(CALLER, "tools/call", "x", canonical_digest(big), big, "r")
    with pytest.raises(ApprovalError, match="not a JSON value"):
        canonical_digest({"a": {1, 2}})
    with pytest.raises(ApprovalError, match="state must be"):
        approvals.list("approvedd")
    with pytest.raises(ApprovalError):
        Approvals(store, ttl=0)
    assert store.list("approval") == ()
    assert approvals.consume("not a key") is None


def test_the_canonical_digest() -> None:
    expected = hashlib.sha256('{"a":[1,2.5,"é"],"b":{"c":null}}'.encode()).hexdigest()
    assert canonical_digest({"b": {"c": None}, "a": [1, 2.5, "é"]}) == expected
    assert canonical_digest({"n": 1}) != canonical_digest({"n": "1"})
    assert canonical_digest("\ud800") == canonical_digest("\ud800")  # a lone surrogate is fine
    assert Approvals.canonical_digest({"a": 1}) == canonical_digest({"a": 1})


def test_caller_of_an_identity() -> None:
    identity = Identity(
        authenticated=True, method=Method.DPOP, issuer=CALLER["issuer"],
        subject=CALLER["subject"], client_id=CALLER["client_id"],
    )  # fmt: skip
    assert caller_of(identity) == CALLER
