"""Settings every test shares."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _state_directory() -> Iterator[None]:
    """Servers started by the tests keep their state store (the default SQLite file) in a
    directory of this run, never in the machine's /var/lib/authz-server or home directory."""
    directory = tempfile.mkdtemp(prefix="authz-test-state-")
    previous = os.environ.get("AUTHZ_STATE_DIR")
    os.environ["AUTHZ_STATE_DIR"] = directory
    yield
    if previous is None:
        os.environ.pop("AUTHZ_STATE_DIR", None)
    else:
        os.environ["AUTHZ_STATE_DIR"] = previous
    shutil.rmtree(directory, ignore_errors=True)
