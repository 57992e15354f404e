"""The admin page's session and CSRF defences, spoken to as plain HTTP: what a page on another
site could send with the person's cookie is refused, and the same request from the page works."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from authz_server.oversight.admin import COOKIE, AdminApp, AdminError, Sessions
from tests.oversight.admin_kit import TOKEN, Admin, csrf_of, form, http, log_in, start_admin

EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    started = start_admin(tmp_path_factory.mktemp("admin"))
    yield started
    started.stop()


def test_the_login_sets_a_strict_http_only_session_cookie_that_is_not_the_token(
    admin: Admin,
) -> None:
    answer = form(admin, "/login", {"token": TOKEN, "name": "alice"})
    assert answer.status == 303
    assert answer.headers["Location"] == "/"
    cookie = answer.headers["Set-Cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    page = http(f"{admin.url}/", headers={"Cookie": cookie.split(";")[0]})
    assert "Pending approvals" in page.text
    assert TOKEN not in page.text


@pytest.mark.parametrize("token", ["", "wrong", TOKEN[:-1], f"{TOKEN} "])
def test_a_wrong_token_gets_the_login_form_again_and_no_cookie(admin: Admin, token: str) -> None:
    answer = form(admin, "/login", {"token": token, "name": "mallory"})
    assert answer.status == 401
    assert "Set-Cookie" not in answer.headers
    assert 'name="token"' in answer.text
    assert "not the admin token" in answer.text


def test_without_a_session_the_page_is_only_the_login_form(admin: Admin) -> None:
    approval = admin.pending("merge_pull_request", {"pr": "hidden-until-login"})
    for headers in ({}, {"Cookie": f"{COOKIE}=made-up"}, {"Cookie": f"{COOKIE}={TOKEN}"}):
        page = http(f"{admin.url}/", headers=headers)
        assert page.status == 200
        assert 'name="token"' in page.text
        assert "hidden-until-login" not in page.text
    assert admin.approvals.get(approval.id).state == "pending"


@pytest.mark.parametrize(
    ("origin", "csrf"),
    [
        (EVIL, None),  # the brief's case: cross-site, no CSRF field
        (EVIL, "wrong"),
        (EVIL, "right"),  # even the right token from another origin
        ("", None),  # the right origin without the token
        ("", "wrong"),
        (None, "right"),  # no Origin header at all
        ("null", "right"),  # an opaque origin (sandboxed frame, data: URL)
    ],
)
def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(
    admin: Admin, origin: str | None, csrf: str | None
) -> None:
    cookie = log_in(admin)
    approval = admin.pending("merge_pull_request", {"pr": f"csrf-{origin}-{csrf}"})
    fields = {} if csrf is None else {"csrf": csrf_of(admin, cookie) if csrf == "right" else csrf}

    answer = form(admin, f"/approvals/{approval.id}/approve", fields, cookie=cookie, origin=origin)

    assert answer.status == 403
    assert admin.approvals.get(approval.id).state == "pending"
    # The same session, token and origin as the page: it works (the refusal was the check's).
    fields = {"csrf": csrf_of(admin, cookie)}
    answer = form(admin, f"/approvals/{approval.id}/approve", fields, cookie=cookie)
    assert answer.status == 303
    assert admin.approvals.get(approval.id).state == "approved"


def test_the_referer_stands_in_for_a_missing_origin(admin: Admin) -> None:
    cookie = log_in(admin)
    approval = admin.pending("merge_pull_request", {"pr": "referer"})
    csrf = csrf_of(admin, cookie)
    for referer, status in ((f"{EVIL}/", 403), (f"{admin.url}/", 303)):
        answer = http(
            f"{admin.url}/approvals/{approval.id}/reject",
            "POST",
            f"csrf={csrf}".encode(),
            {"Cookie": f"{COOKIE}={cookie}", "Referer": referer},
        )
        assert answer.status == status
    assert admin.approvals.get(approval.id).state == "rejected"


def test_a_login_from_another_origin_is_refused(admin: Admin) -> None:
    answer = form(admin, "/login", {"token": TOKEN}, origin=EVIL)
    assert answer.status == 403
    assert "Set-Cookie" not in answer.headers


def test_the_csrf_token_belongs_to_its_session(admin: Admin) -> None:
    alice, bob = log_in(admin, "alice"), log_in(admin, "bob")
    approval = admin.pending("merge_pull_request", {"pr": "two sessions"})
    answer = form(
        admin,
        f"/approvals/{approval.id}/approve",
        {"csrf": csrf_of(admin, bob)},
        cookie=alice,
    )
    assert answer.status == 403
    assert admin.approvals.get(approval.id).state == "pending"


def test_logging_out_ends_the_session(admin: Admin) -> None:
    cookie = log_in(admin)
    csrf = csrf_of(admin, cookie)
    answer = form(admin, "/logout", {"csrf": csrf}, cookie=cookie)
    assert answer.status == 303
    assert "Max-Age=0" in answer.headers["Set-Cookie"]
    page = http(f"{admin.url}/", headers={"Cookie": f"{COOKIE}={cookie}"})
    assert 'name="token"' in page.text
    approval = admin.pending("merge_pull_request", {"pr": "after logout"})
    late = form(admin, f"/approvals/{approval.id}/approve", {"csrf": csrf}, cookie=cookie)
    assert late.status == 403
    assert admin.approvals.get(approval.id).state == "pending"


def test_a_session_expires() -> None:
    now = [1000.0]
    sessions = Sessions(ttl=60, clock=lambda: now[0])
    cookie, session = sessions.open("alice")
    assert sessions.find(cookie) is session
    now[0] += 59
    assert sessions.find(cookie) is session
    now[0] += 2
    assert sessions.find(cookie) is None


def test_sessions_are_bounded_and_the_oldest_goes_first() -> None:
    sessions = Sessions(limit=3)
    cookies = [sessions.open(f"p{i}")[0] for i in range(4)]
    assert sessions.find(cookies[0]) is None
    assert all(sessions.find(c) is not None for c in cookies[1:])


def test_a_link_to_one_approval_survives_the_login_and_shows_it_first(admin: Admin) -> None:
    approval = admin.pending("delete_file", {"path": "linked"})
    login = http(f"{admin.url}/?approval={approval.id}")
    assert f'name="approval" value="{approval.id}"' in login.text
    answer = form(admin, "/login", {"token": TOKEN, "approval": approval.id})
    assert answer.headers["Location"] == f"/?approval={approval.id}#approval-{approval.id}"
    cookie = re.match(rf"{COOKIE}=([^;]+)", answer.headers["Set-Cookie"]).group(1)
    page = http(
        f"{admin.url}{answer.headers['Location']}", headers={"Cookie": f"{COOKIE}={cookie}"}
    )
    focus = page.text.index("The approval you were sent to")
    assert page.text.index(f'id="approval-{approval.id}"') > focus
    # Anything but an approval id is dropped, never echoed into the page.
    login = http(f"{admin.url}/?approval=%22%3E%3Cscript%3E")
    assert "<script>" not in login.text
    assert 'name="approval"' not in login.text


def test_page_answers_carry_the_security_headers(admin: Admin) -> None:
    page = http(f"{admin.url}/")
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "form-action 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    assert "style-src 'sha256-" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"


def test_an_empty_token_is_refused_at_construction() -> None:
    with pytest.raises(AdminError):
        AdminApp("", None, None)  # type: ignore[arg-type]


def test_unknown_page_paths_and_methods(admin: Admin) -> None:
    assert http(f"{admin.url}/nothing").status == 404
    assert http(f"{admin.url}/", "POST", b"").status == 405
    assert http(f"{admin.url}/login").status == 405
