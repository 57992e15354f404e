"""The admin page in a real headless Chromium (Selenium and chromedriver): a person logs in with
the token, sees a hostile tool argument as text, approves, rejects, adds and ends a revocation.

One browser for the module keeps these few tests fast. Chromium is not optional: without it the
tests fail and say how to get it (``make test`` installs it)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.oversight.admin_kit import TOKEN, Admin, start_admin

HOSTILE = {
    "title": "<script>alert(1)</script>",
    "body": '"><img src=x onerror=alert(2)>',
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "these tests need headless Chromium and chromedriver (Debian packages chromium and "
            "chromium-driver): `make test` installs them"
        )
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("these tests need selenium: `make test` installs it (the test extras)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    session.implicitly_wait(2)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    started = start_admin(tmp_path_factory.mktemp("admin"))
    yield started
    started.stop()


def by(kind: str, value: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    return getattr(By, kind), value


def log_in(browser: Any, admin: Admin, token: str = TOKEN, path: str = "/") -> None:
    browser.get(f"{admin.url}/")
    browser.delete_all_cookies()
    browser.get(f"{admin.url}{path}")
    browser.find_element(*by("NAME", "token")).send_keys(token)
    browser.find_element(*by("NAME", "name")).send_keys("alice")
    submit(browser, browser.find_element(*by("CSS_SELECTOR", "form[action='/login'] button")))


def submit(browser: Any, button: Any, seconds: float = 10) -> None:
    """Click a form's button and wait until the answer has replaced the page. Reading right after
    the click could find the old page's element (an earlier flash, say) and have Chromium swap
    the document out under the read. Chromium reports that as a generic error, not as a stale
    element, and it does so for Selenium's own staleness check too; so the old page is marked in
    its window object, which every new document replaces, and polled for with script calls that
    may fail while the swap is under way."""
    from selenium.common.exceptions import WebDriverException

    browser.execute_script("window.authzOldPage = true")
    button.click()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if browser.execute_script(
                "return window.authzOldPage === undefined && document.readyState === 'complete'"
            ):
                return
        except WebDriverException:  # the document is being swapped out under the call
            pass
        time.sleep(0.05)
    raise AssertionError(f"the form's answer did not replace the page within {seconds:g} s")


def flash(browser: Any, expected: str, seconds: float = 10) -> str:
    """The flash message once it holds ``expected``: a form's POST answers with a redirect, and
    the page read right after the click may still be the old one (or be replaced mid-read)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        try:
            text = browser.find_element(*by("ID", "flash")).text
        except WebDriverException:  # no such element yet, or the page swapped mid-read
            text = ""
        if expected in text:
            return text
        time.sleep(0.05)
    return text


def page_text(browser: Any, expected: str, seconds: float = 10) -> str:
    """The page's text once it holds ``expected`` (the answer to a form may still be loading)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        try:
            text = browser.find_element(*by("TAG_NAME", "body")).text
        except WebDriverException:
            text = ""
        if expected in text:
            return text
        time.sleep(0.05)
    return text


def absent(browser: Any, kind: str, value: str) -> bool:
    """Whether no element matches, asked without the implicit wait (absence would wait it)."""
    browser.implicitly_wait(0)
    try:
        return browser.find_elements(*by(kind, value)) == []
    finally:
        browser.implicitly_wait(2)


def no_alert(browser: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        browser.switch_to.alert  # noqa: B018
    except NoAlertPresentException:
        return True
    return False


def test_a_wrong_token_shows_the_login_again(browser: Any, admin: Admin) -> None:
    admin.pending("merge_pull_request", {"pr": "not for strangers"})
    log_in(browser, admin, token="not-the-admin-token")
    assert "not the admin token" in page_text(browser, "not the admin token")
    assert browser.find_elements(*by("NAME", "token"))
    assert "not for strangers" not in browser.page_source
    assert browser.get_cookies() == []


def test_a_hostile_argument_is_text_and_the_call_is_approved(browser: Any, admin: Admin) -> None:
    approval = admin.pending("merge_pull_request", HOSTILE, reason="merges need a human")
    # The link an agent's user follows: it survives the login and lands on this approval.
    log_in(browser, admin, path=f"/?approval={approval.id}")
    assert f"approval={approval.id}" in browser.current_url
    row = browser.find_element(*by("ID", f"approval-{approval.id}"))
    assert "The approval you were sent to" in browser.page_source
    assert "<script>alert(1)</script>" in row.text
    assert '"><img src=x onerror=alert(2)>' in row.text
    assert "merges need a human" in row.text
    assert "agent-7" in row.text
    assert no_alert(browser)
    assert absent(browser, "TAG_NAME", "script")
    assert absent(browser, "TAG_NAME", "img")
    assert TOKEN not in browser.page_source
    assert all(TOKEN not in c["value"] for c in browser.get_cookies())

    submit(browser, row.find_element(*by("NAME", "approve")))

    assert "Approved merge_pull_request" in flash(browser, "Approved merge_pull_request")
    decided = admin.approvals.get(approval.id)
    assert decided.state == "approved"
    assert decided.decided_by == "alice"
    assert absent(browser, "ID", f"approval-{approval.id}")


def test_a_call_is_rejected_with_a_reason(browser: Any, admin: Admin) -> None:
    approval = admin.pending("delete_file", {"path": "/etc/passwd"})
    log_in(browser, admin)
    row = browser.find_element(*by("ID", f"approval-{approval.id}"))
    row.find_element(*by("NAME", "reason")).send_keys("never that file")
    submit(browser, row.find_element(*by("NAME", "reject")))

    assert "Rejected delete_file" in flash(browser, "Rejected delete_file")
    decided = admin.approvals.get(approval.id)
    assert decided.state == "rejected"
    assert decided.decision_reason == "never that file"
    assert decided.decided_by == "alice"


def test_a_revocation_is_added_and_ended(browser: Any, admin: Admin) -> None:
    from selenium.webdriver.support.ui import Select

    log_in(browser, admin)
    add = browser.find_element(*by("ID", "add-revocation"))
    Select(add.find_element(*by("NAME", "selector"))).select_by_value("client_id")
    add.find_element(*by("NAME", "value")).send_keys("ci-bot")
    add.find_element(*by("NAME", "tools")).send_keys("delete_file, merge_pull_request")
    add.find_element(*by("NAME", "for")).send_keys("30m")
    add.find_element(*by("NAME", "reason")).send_keys("<b>compromised</b>")
    submit(browser, add.find_element(*by("NAME", "revoke")))

    assert "is active" in flash(browser, "is active")
    [revocation] = admin.revocations.list()
    assert revocation.client_id == "ci-bot"
    assert revocation.tools == ("delete_file", "merge_pull_request")
    assert revocation.expires is not None
    assert revocation.created_by == "alice"
    row = browser.find_element(*by("ID", f"revocation-{revocation.id}"))
    assert "<b>compromised</b>" in row.text

    submit(browser, row.find_element(*by("NAME", "end")))

    ended = f"Revocation {revocation.id} ended"
    assert ended in flash(browser, ended)
    assert admin.revocations.list() == []
    assert browser.find_elements(*by("ID", "no-revocations"))


def test_a_revocation_the_store_refuses_is_explained(browser: Any, admin: Admin) -> None:
    log_in(browser, admin)
    add = browser.find_element(*by("ID", "add-revocation"))
    add.find_element(*by("NAME", "reason")).send_keys("who?")
    submit(browser, add.find_element(*by("NAME", "revoke")))  # subject chosen, no value given
    assert "exactly one" in browser.find_element(*by("ID", "error")).text
    assert admin.revocations.list() == []


def test_logging_out_shows_the_login(browser: Any, admin: Admin) -> None:
    log_in(browser, admin)
    submit(browser, browser.find_element(*by("NAME", "logout")))
    assert browser.find_elements(*by("NAME", "token"))
    browser.get(f"{admin.url}/")
    assert browser.find_elements(*by("NAME", "token"))
