"""The admin JSON API through real HTTP on loopback, over a real SQLite store: every endpoint
does what design.md says with the token, and nothing without it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_server.oversight import Approvals, Revocations
from authz_server.oversight.admin import AdminServer
from authz_server.state import open_store
from tests.oversight.admin_kit import TOKEN, Admin, api, http, start_admin


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    started = start_admin(tmp_path_factory.mktemp("admin"))
    yield started
    started.stop()


@pytest.fixture
def admin(running: Admin) -> Admin:
    """The module's listener over an emptied store."""
    for kind in ("approval", "revocation"):
        for record in running.store.list(kind):
            running.store.delete(kind, record.id)
    return running


ENDPOINTS = [
    ("GET", "revocations", None),
    ("POST", "revocations", {"subject": "agent-7", "reason": "leaked key"}),
    ("DELETE", "revocations/{revocation}", None),
    ("GET", "approvals", None),
    ("POST", "approvals/{approval}/approve", None),
    ("POST", "approvals/{approval}/reject", {"reason": "no"}),
]


@pytest.mark.parametrize(
    "credential",
    [None, "wrong-token-0000000000000", f"{TOKEN}x", TOKEN[:-1], ""],
    ids=["missing", "wrong", "longer", "prefix", "empty"],
)
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_every_endpoint_refuses_a_missing_or_wrong_token_and_changes_nothing(
    admin: Admin, method: str, path: str, body: object, credential: str | None
) -> None:
    revocation = admin.revocations.add(subject="someone", reason="kept")
    approval = admin.pending("merge_pull_request", {"pr": 1})
    path = path.format(revocation=revocation.id, approval=approval.id)

    answer = api(admin, method, path, body, token=credential)

    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "admin token" in answer.json()["error"]
    assert [r.id for r in admin.revocations.list()] == [revocation.id]
    assert admin.approvals.get(approval.id).state == "pending"


def test_a_token_in_another_scheme_is_refused(admin: Admin) -> None:
    answer = http(f"{admin.url}/api/v1/revocations", headers={"Authorization": f"Basic {TOKEN}"})
    assert answer.status == 401


def test_revocations_are_added_listed_and_removed(admin: Admin) -> None:
    made = api(
        admin,
        "POST",
        "revocations",
        {
            "subject": "agent-7",
            "issuer": "https://idp.example.com",
            "tools": ["delete_file"],
            "for": "30m",
            "reason": "deleting files it should not",
            "by": "alice",
        },
    )
    assert made.status == 201
    revocation = made.json()
    assert revocation["subject"] == "agent-7"
    assert revocation["issuer"] == "https://idp.example.com"
    assert revocation["tools"] == ["delete_file"]
    assert revocation["created_by"] == "alice"
    assert revocation["expires"] == pytest.approx(time.time() + 1800, abs=10)
    stored = admin.revocations.get(revocation["id"])
    assert stored is not None and stored.reason == "deleting files it should not"

    everyone = api(admin, "POST", "revocations", {"everyone": True, "reason": "incident"})
    assert everyone.status == 201
    assert everyone.json()["created_by"] == "admin api"
    assert everyone.json()["expires"] is None

    listed = api(admin, "GET", "revocations")
    assert listed.status == 200
    assert [r["id"] for r in listed.json()] == [revocation["id"], everyone.json()["id"]]

    removed = api(admin, "DELETE", f"revocations/{revocation['id']}")
    assert removed.status == 200
    assert removed.json() == {"id": revocation["id"], "removed": True}
    assert [r.id for r in admin.revocations.list()] == [everyone.json()["id"]]
    assert api(admin, "DELETE", f"revocations/{revocation['id']}").status == 404
    assert api(admin, "DELETE", "revocations/not-an-id").status == 404


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not JSON"),
        (b'["subject"]', "JSON object"),
        (b"", "not JSON"),
        (b'{"subjet": "agent-7", "reason": "typo"}', "unknown fields: subjet"),
        (b'{"reason": "which one?"}', "exactly one"),
        (b'{"subject": "a", "client_id": "b", "reason": "two"}', "exactly one"),
        (b'{"subject": "agent-7", "reason": ""}', "reason"),
        (b'{"subject": "agent-7", "reason": "x", "for": "soon"}', "duration"),
        (b'{"subject": "agent-7", "reason": "x", "tools": "delete_file"}', "list"),
        (b'{"subject": "agent-7", "reason": "x", "by": 7}', "by must be a string"),
    ],
)
def test_a_bad_revocation_is_refused_with_the_reason_and_not_stored(
    admin: Admin, raw: bytes, says: str
) -> None:
    answer = api(admin, "POST", "revocations", raw=raw)
    assert answer.status == 400
    assert says in answer.json()["error"]
    assert admin.revocations.list() == []


def test_approvals_are_listed_by_state(admin: Admin) -> None:
    first = admin.pending("merge_pull_request", {"pr": 1})
    second = admin.pending("delete_file", {"path": "README.md"})
    admin.approvals.approve(second.id, by="bob")

    pending = api(admin, "GET", "approvals")
    assert pending.status == 200
    assert [a["id"] for a in pending.json()] == [first.id]
    assert pending.json()[0]["arguments"] == {"pr": 1}
    assert pending.json()[0]["caller"]["subject"] == "agent-7"
    assert [a["id"] for a in api(admin, "GET", "approvals?state=approved").json()] == [second.id]
    assert {a["id"] for a in api(admin, "GET", "approvals?state=all").json()} == {
        first.id,
        second.id,
    }
    bad = api(admin, "GET", "approvals?state=maybe")
    assert bad.status == 400
    assert "state must be" in bad.json()["error"]


def test_approve_and_reject_decide_a_pending_approval_once(admin: Admin) -> None:
    merge = admin.pending("merge_pull_request", {"pr": 1})
    delete = admin.pending("delete_file", {"path": "README.md"})

    approved = api(admin, "POST", f"approvals/{merge.id}/approve", {"by": "alice"})
    assert approved.status == 200
    assert approved.json()["state"] == "approved"
    assert approved.json()["decided_by"] == "alice"
    assert admin.approvals.get(merge.id).state == "approved"

    rejected = api(admin, "POST", f"approvals/{delete.id}/reject", {"reason": "not today"})
    assert rejected.status == 200
    assert rejected.json()["decision_reason"] == "not today"
    assert rejected.json()["decided_by"] == "admin api"
    assert admin.approvals.get(delete.id).state == "rejected"

    for path in (f"approvals/{merge.id}/reject", f"approvals/{delete.id}/approve"):
        again = api(admin, "POST", path)
        assert again.status == 409
        assert "not pending" in again.json()["error"]


def test_deciding_an_unknown_approval_is_404(admin: Admin) -> None:
    for id in ("0" * 24, "no-such-approval"):
        for action in ("approve", "reject"):
            answer = api(admin, "POST", f"approvals/{id}/{action}")
            assert answer.status == 404
            assert "no live approval" in answer.json()["error"]


@pytest.mark.parametrize(
    ("action", "body", "says"),
    [
        ("approve", {"reason": "fine"}, "reject only"),
        ("approve", {"by": "a", "extra": 1}, "unknown fields: extra"),
        ("reject", {"reason": 5}, "reason must be a string"),
        ("reject", ["no"], "JSON object"),
    ],
)
def test_a_bad_decision_body_is_400_and_decides_nothing(
    admin: Admin, action: str, body: object, says: str
) -> None:
    approval = admin.pending("merge_pull_request", {"pr": 2})
    answer = api(admin, "POST", f"approvals/{approval.id}/{action}", body)
    assert answer.status == 400
    assert says in answer.json()["error"]
    assert admin.approvals.get(approval.id).state == "pending"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", "revocations", 501),
        ("DELETE", "revocations", 405),
        ("POST", "revocations/0123456789ab", 405),
        ("POST", "approvals", 405),
        ("GET", "approvals/0123/approve", 405),
        ("GET", "nothing", 404),
        ("POST", "approvals/0123/maybe", 404),
    ],
)
def test_other_methods_and_paths_are_refused(
    admin: Admin, method: str, path: str, status: int
) -> None:
    assert api(admin, method, path).status == status


def test_a_body_over_the_limit_is_refused_unread(admin: Admin) -> None:
    answer = api(admin, "POST", "revocations", raw=b" " * (64 * 1024 + 1))
    assert answer.status == 413


def test_every_answer_carries_the_security_headers(admin: Admin) -> None:
    for answer in (api(admin, "GET", "approvals"), api(admin, "GET", "approvals", token=None)):
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Content-Type"] == "application/json"


def test_a_store_that_cannot_answer_is_503_without_its_password(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    store = open_store(f"redis://:s3cret-pass@127.0.0.1:{port}/0?timeout=0.3")
    server = AdminServer.build("127.0.0.1", 0, TOKEN, Revocations(store), Approvals(store))
    server.start()
    try:
        admin = Admin(server, store, Approvals(store), Revocations(store))
        for method, path in (("GET", "revocations"), ("POST", f"approvals/{'0' * 24}/approve")):
            answer = api(admin, method, path)
            assert answer.status == 503
            assert answer.json() == {"error": "the state store is unavailable"}
        page = http(f"{admin.url}/?approval={'0' * 24}")
        assert page.status == 200  # the login form needs no store
    finally:
        server.stop()
        store.close()
