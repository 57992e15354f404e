"""``--state`` URLs: the accepted forms, clear refusals that never echo a password, and the
default state directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from authz_server.state import StoreUrlError, default_url, open_store, parse_url, state_dir
from authz_server.state.url import DEFAULT_PREFIX

SECRET = "pa55-w0rd-never-shown"


def test_sqlite_absolute_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert parse_url("sqlite:///var/lib/authz/state.db").path == Path("/var/lib/authz/state.db")
    assert parse_url("sqlite:////var/lib/x.db").path == Path("/var/lib/x.db")
    monkeypatch.chdir(tmp_path)
    url = parse_url("sqlite:data/state.db?timeout=0.5")
    assert url.path == tmp_path / "data" / "state.db"
    assert url.timeout == 0.5
    assert url.display == f"sqlite://{tmp_path}/data/state.db"


def test_redis_forms() -> None:
    url = parse_url(f"redis://agent:{SECRET}@cache.internal:6380/3?timeout=2&prefix=prod:")
    assert (url.host, url.port, url.db, url.username, url.password) == (
        "cache.internal",
        6380,
        3,
        "agent",
        SECRET,
    )
    assert (url.timeout, url.prefix) == (2.0, "prod:")
    bare = parse_url("redis://localhost")
    assert (bare.port, bare.db, bare.password, bare.prefix) == (6379, 0, None, DEFAULT_PREFIX)
    tls = parse_url(f"rediss://:{SECRET}@[::1]:6390/0?ca_file=/etc/ca.pem")
    assert (tls.scheme, tls.host, tls.ca_file, tls.username) == (
        "rediss",
        "::1",
        "/etc/ca.pem",
        None,
    )
    assert parse_url("redis://u:p%40ss@h/0").password == "p@ss"


def test_the_password_never_shows() -> None:
    url = parse_url(f"redis://agent:{SECRET}@cache:6380/3")
    assert url.display == "redis://agent:***@cache:6380/3"
    for text in (str(url), repr(url), repr(open_store(f"redis://:{SECRET}@cache/0"))):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("postgres://u:SECRET@db/x", "must start with sqlite:, redis:// or rediss://"),
        ("SECRET", "must start with"),
        ("sqlite://host/x.db", "has a host part"),
        ("sqlite:///", "names no file"),
        ("sqlite:", "names no file"),
        ("sqlite:///:memory:", "every worker"),
        ("sqlite:///x.db?timeout=0", "timeout must be"),
        ("sqlite:///x.db?timeout=forever", "timeout must be"),
        ("sqlite:///x.db?prefix=a", "unknown or repeated parameter"),
        ("redis://:SECRET@h/0?timeout=1&timeout=2", "unknown or repeated parameter"),
        ("redis://:SECRET@h/0?ca_file=/x", "unknown or repeated parameter"),
        ("redis://:SECRET@/0", "names no host"),
        ("redis://:SECRET@h:99999/0", "invalid host or port"),
        ("redis://:SECRET@h:port/0", "invalid host or port"),
        ("redis://:SECRET@h/zero", "database number"),
        ("redis://:SECRET@h/0/1", "database number"),
        ("redis://:SECRET@h/0#frag", "fragment"),
        ("redis://:SECRET@h/0?prefix=a%20b", "prefix must be"),
        ("rediss://:SECRET@h/0?timeout=61", "timeout must be"),
    ],
)
def test_bad_urls_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(StoreUrlError, match=message) as caught:
        parse_url(text.replace("SECRET", SECRET))
    assert SECRET not in str(caught.value)


def test_state_dir_rule(tmp_path: Path) -> None:
    assert state_dir({"AUTHZ_STATE_DIR": str(tmp_path)}) == tmp_path
    assert state_dir({"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}) == tmp_path / "a"
    both = {"AUTHZ_STATE_DIR": str(tmp_path / "x"), "STATE_DIRECTORY": str(tmp_path / "y")}
    assert state_dir(both) == tmp_path / "x"
    unset: dict[str, str] = {"XDG_STATE_HOME": str(tmp_path)}
    if os.geteuid() == 0:
        assert state_dir(unset) == Path("/var/lib/authz-server")
    else:
        assert state_dir(unset) == tmp_path / "authz-server"
    assert default_url({"AUTHZ_STATE_DIR": str(tmp_path)}) == f"sqlite://{tmp_path}/state.db"
    assert parse_url(default_url({"AUTHZ_STATE_DIR": str(tmp_path)})).path == (
        tmp_path / "state.db"
    )


def test_open_store_without_a_url_uses_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHZ_STATE_DIR", str(tmp_path / "state"))
    with open_store() as store:
        assert store.claim("replay", "jti-1", 60)
    assert (tmp_path / "state" / "state.db").is_file()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "state.db").stat().st_mode & 0o777 == 0o600
