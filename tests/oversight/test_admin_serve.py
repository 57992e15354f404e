"""``serve`` and the admin listener: the flags' refusals, and one listener per host whether
``serve`` runs a single process or a supervisor with workers."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from authz_server.cli import main
from authz_server.oversight import Revocations
from authz_server.oversight.admin import AdminError, read_token
from authz_server.state import open_store
from tests.oversight.admin_kit import TOKEN
from tests.serving import ROOT, clean_environment, free_port, start_server, stop_server

POLICIES = ROOT / "policies"


def serve(*args: str) -> int:
    return main(["serve", "--policies", str(POLICIES), *args])


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(f"{TOKEN}\n")
    return path


@pytest.mark.parametrize("address", ["0.0.0.0:9002", ":9002", "[::]:9002", "admin.internal:9002"])
def test_serve_refuses_an_admin_address_beyond_loopback_without_a_token_file(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve("--admin-address", address) == 2
    error = capsys.readouterr().err
    assert "--admin-address" in error
    assert "--admin-token-file" in error


def test_the_environment_sets_the_admin_address_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTHZ_ADMIN_ADDRESS", "0.0.0.0:9002")
    assert serve() == 2
    assert "--admin-token-file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ("short", "16 to 4096 printable"),
        ("has a space in the middle!", "16 to 4096 printable"),
        ("tökén-with-non-ascii-characters", "not ASCII"),
    ],
)
def test_serve_refuses_an_unusable_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, says: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    assert serve("--admin-token-file", str(path)) == 2
    error = capsys.readouterr().err
    assert "--admin-token-file" in error
    assert says in error
    with pytest.raises(AdminError, match=says):
        read_token(path)


def test_the_token_file_may_end_with_a_newline(token_file: Path) -> None:
    assert read_token(token_file) == TOKEN


def _environment(tmp_path: Path) -> dict[str, str]:
    return {**clean_environment(), "AUTHZ_STATE_DIR": str(tmp_path / "state")}


def _api(port: int, path: str, token: str | None = TOKEN, data: object = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/{path}", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_without_a_token_file_nothing_listens_and_the_log_says_how_to_turn_it_on(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = start_server(
        POLICIES, "--workers", "1", "--max-worker-rss-mib", "0",
        "--admin-address", f"127.0.0.1:{port}", env=_environment(tmp_path),
    )  # fmt: skip
    try:
        assert _refused(port)
        assert "admin page and API off: give --admin-token-file" in server.output()
    finally:
        assert stop_server(server) == 0


@pytest.mark.parametrize("supervised", [False, True], ids=["single-process", "two-workers"])
def test_serve_runs_one_admin_listener_over_its_state_store(
    tmp_path: Path, token_file: Path, supervised: bool
) -> None:
    port = free_port()
    env = _environment(tmp_path)
    if supervised:  # set as in Kubernetes: the workers inherit this environment
        env |= {
            "AUTHZ_ADMIN_ADDRESS": f"127.0.0.1:{port}",
            "AUTHZ_ADMIN_TOKEN_FILE": str(token_file),
        }
        args: tuple[str, ...] = ("--workers", "2")
    else:
        args = ("--workers", "1", "--max-worker-rss-mib", "0", "--admin-address",
                f"127.0.0.1:{port}", "--admin-token-file", str(token_file))  # fmt: skip
    server = start_server(POLICIES, *args, env=env)
    try:
        assert _api(port, "approvals", token=None)[0] == 401
        status, body = _api(port, "revocations", data={"subject": "agent-7", "reason": "test"})
        assert status == 201, body
        # Written to the store `serve` uses: the CLI and every replica see it.
        state = open_store(f"sqlite://{tmp_path / 'state' / 'state.db'}")
        try:
            assert [r.subject for r in Revocations(state).list()] == ["agent-7"]
        finally:
            state.close()
        # Workers never bind the admin port: one that tried would fail and stop the server.
        assert server.http("/readyz")[0] == 200
        assert server.output().count("admin page and API on") == 1
        assert "failed to start" not in server.output()
        assert TOKEN not in server.output()
    finally:
        assert stop_server(server) == 0
    assert _refused(port)


def test_a_busy_admin_port_stops_serve(tmp_path: Path, token_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for mode in (("--workers", "1", "--max-worker-rss-mib", "0"), ("--workers", "2")):
            with pytest.raises(RuntimeError, match="cannot listen for the admin page"):
                start_server(
                    POLICIES, *mode, "--admin-address", f"127.0.0.1:{port}",
                    "--admin-token-file", str(token_file), env=_environment(tmp_path),
                )  # fmt: skip
