"""A real headless Chromium (Debian ``chromium`` and ``chromium-driver``) driven through Selenium,
for the tests that use the admin page as a person does.

Chromium is not optional: without it these tests fail and say how to get it (``make test``
installs it)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless browser session (``selenium.webdriver.Chrome``), quit on exit."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail(
            "these tests need headless Chromium and chromedriver (Debian packages chromium and "
            "chromium-driver): `make test` installs them"
        )
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("these tests need selenium: `make test` installs it (the test extras)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    session.implicitly_wait(2)
    try:
        yield session
    finally:
        session.quit()


def by(kind: str, value: str) -> tuple[str, str]:
    """A locator: ``by("NAME", "token")``."""
    from selenium.webdriver.common.by import By

    return getattr(By, kind), value


def submit(browser: Any, button: Any, timeout: float = 10) -> None:
    """Press a form's button and wait until the browser has replaced the page it was on and
    loaded the new one. A click returns once the event is dispatched, not once the form's answer
    has loaded: reading the page (or the store) right after it would race the POST."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(*by("TAG_NAME", "html"))

    def replaced(_: Any) -> bool:
        try:
            page.is_enabled()
        except WebDriverException:
            # Stale, or (mid-navigation) "node does not belong to the document": gone either way.
            return True
        return False

    button.click()
    wait = WebDriverWait(browser, timeout)
    wait.until(replaced)
    wait.until(lambda _: browser.execute_script("return document.readyState") == "complete")
