"""The operator's commands as run from a shell (``python -m authz_server``), against a store with no
server running: what they print, their exit statuses, and what they never print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from authz_server.identity.model import Identity, Method
from authz_server.oversight import Approvals, RevocationIndex, Revocations, canonical_digest
from authz_server.state import open_store
from tests.serving import clean_environment
from tests.state.redis_server import PASSWORD, RedisServer

ROOT = Path(__file__).resolve().parents[2]
AGENT = Identity(authenticated=True, method=Method.BEARER, issuer="https://idp", subject="agent-7")


def authz(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A command that lost its --state must not reach the machine's real default store.
    with tempfile.TemporaryDirectory(prefix="authz-cli-default-") as default:
        return subprocess.run(
            [sys.executable, "-m", "authz_server", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
            env={**clean_environment(), "AUTHZ_STATE_DIR": default, **(env or {})},
        )  # fmt: skip


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'state.db'}"


def test_revoke_list_and_remove(url: str) -> None:
    made = authz(
        "revoke", "--subject", "agent-7", "--issuer", "https://idp", "--tool", "merge_pull_request",
        "--tool", "delete_file", "--for", "30m", "--reason", "token leaked", "--by", "ops",
        "--state", url,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    id = made.stdout.strip()
    assert len(made.stdout.splitlines()) == 1 and id

    with open_store(url) as store:  # what a server's check would see
        index = RevocationIndex.of(Revocations(store).list())
        revocation = index.match(AGENT, "merge_pull_request")
        assert revocation is not None and revocation.id == id
        assert index.match(AGENT, "create_pull_request") is None

    listed = authz("revocations", "--json", "--state", url)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert {k: entry[k] for k in ("id", "subject", "issuer", "tools", "reason", "created_by")} == {
        "id": id, "subject": "agent-7", "issuer": "https://idp",
        "tools": ["merge_pull_request", "delete_file"], "reason": "token leaked",
        "created_by": "ops",
    }  # fmt: skip
    assert entry["expires"] - entry["created"] == pytest.approx(1800, abs=1)

    table = authz("revocations", "--state", url)
    assert table.returncode == 0
    assert id in table.stdout and "subject=agent-7 (issuer https://idp)" in table.stdout
    assert "token leaked" in table.stdout

    removed = authz("revocations", "remove", id, "--state", url)
    assert (removed.returncode, removed.stdout.strip()) == (0, f"removed {id}")
    assert json.loads(authz("revocations", "--json", "--state", url).stdout) == []
    again = authz("revocations", "remove", id, "--state", url)
    assert again.returncode == 1 and id in again.stderr

    # --state may also come before the action.
    other = authz("revoke", "--client-id", "c", "--reason", "r", "--state", url).stdout.strip()
    before = authz("revocations", "--state", url, "remove", other)
    assert (before.returncode, before.stdout.strip()) == (0, f"removed {other}"), before.stderr


def test_the_store_comes_from_authz_state_and_else_the_state_directory(
    url: str, tmp_path: Path
) -> None:
    made = authz("revoke", "--everyone", "--reason", "incident", env={"AUTHZ_STATE": url})
    assert made.returncode == 0, made.stderr
    with open_store(url) as store:
        assert [r.id for r in Revocations(store).list()] == [made.stdout.strip()]
    directory = tmp_path / "state-dir"
    default = authz("revoke", "--client-id", "c", "--reason", "r",
                    env={"AUTHZ_STATE_DIR": str(directory)})  # fmt: skip
    assert default.returncode == 0, default.stderr
    assert (directory / "state.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["revoke", "--reason", "r"], "one of the arguments"),
        (["revoke", "--subject", "a", "--client-id", "b", "--reason", "r"], "not allowed with"),
        (["revoke", "--subject", "a"], "--reason"),
        (["revoke", "--subject", "a", "--reason", "r", "--for", "soon"], "duration"),
        (["revoke", "--client-id", "a", "--issuer", "i", "--reason", "r"], "issuer only"),
        (["revoke", "--subject", "a", "--reason", " "], "reason"),
        (["revocations", "remove"], "ID"),
        (["approve"], "ID"),
    ],
)
def test_usage_errors_exit_2_and_store_nothing(url: str, args: list[str], message: str) -> None:
    done = authz(*args, "--state", url)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert json.loads(authz("revocations", "--json", "--state", url).stdout) == []


def test_approvals_approve_and_reject(url: str) -> None:
    with open_store(url) as store:
        approvals = Approvals(store)
        caller = {"issuer": "https://idp", "subject": "agent-7", "method": "bearer"}
        merge_args = {"pull_number": 7}
        merge = approvals.request(
            caller,
            "tools/call",
            "merge_pull_request",
            canonical_digest(merge_args),
            merge_args,
            "merges need a human",
        )
        delete_args = {"path": "README.md"}
        delete = approvals.request(
            caller,
            "tools/call",
            "delete_file",
            canonical_digest(delete_args),
            delete_args,
            "deletes too",
        )
    listed = authz("approvals", "--json", "--state", url)
    assert listed.returncode == 0, listed.stderr
    assert [(a["id"], a["target"], a["arguments"]) for a in json.loads(listed.stdout)] == [
        (merge.id, "merge_pull_request", merge_args),
        (delete.id, "delete_file", delete_args),
    ]
    text = authz("approvals", "--state", url).stdout
    assert merge.id in text and "tools/call merge_pull_request" in text
    assert '{"pull_number": 7}' in text and "merges need a human" in text

    approved = authz("approve", merge.id, "--by", "alice", "--state", url)
    assert approved.returncode == 0 and approved.stdout.startswith(f"approved {merge.id}")
    twice = authz("approve", merge.id, "--state", url)
    assert twice.returncode == 1 and "approved, not pending" in twice.stderr
    rejected = authz("reject", delete.id, "--by", "bob", "--reason", "not today", "--state", url)
    assert rejected.returncode == 0, rejected.stderr
    assert authz("reject", merge.id, "--state", url).returncode == 1
    missing = authz("approve", "0" * 24, "--state", url)
    assert missing.returncode == 1 and "no live approval" in missing.stderr

    assert json.loads(authz("approvals", "--json", "--state", url).stdout) == []
    assert authz("approvals", "--state", url).stdout == "no pending approvals\n"
    everything = json.loads(authz("approvals", "--all", "--json", "--state", url).stdout)
    assert {(a["id"], a["state"], a["decided_by"], a["decision_reason"]) for a in everything} == {
        (merge.id, "approved", "alice", ""),
        (delete.id, "rejected", "bob", "not today"),
    }
    with open_store(url) as store:  # the server's next retry goes through, once
        assert Approvals(store).consume(merge.key) is not None


def test_agent_text_cannot_drive_the_operators_terminal(url: str) -> None:
    """Tool names and arguments come from the agent: an escape sequence in them is shown as
    text, never sent to the terminal."""
    hostile = "merge\x1b]0;pwned\x07\x1b[2J\u202e"
    arguments = {"title": "\x1b[31mred\x9b"}
    with open_store(url) as store:
        Approvals(store).request({"subject": "agent-7"}, "tools/call", hostile,
                                 canonical_digest(arguments), arguments, "r\x1b[1m")  # fmt: skip
    for args in (["approvals"], ["approvals", "--json"]):
        done = authz(*args, "--state", url)
        assert done.returncode == 0
        assert not any(c in done.stdout for c in "\x1b\x07\x9b\u202e"), done.stdout
    assert "\\x1b]0;pwned" in authz("approvals", "--state", url).stdout


def test_a_bad_state_url_is_a_usage_error_without_the_password(url: str) -> None:
    secret = "s3cret-do-not-print"
    for args in (
        ["revocations", "--state", f"redis://ops:{secret}@127.0.0.1:6379/0?timeoutt=1"],
        ["approvals", "--state", f"redis://ops:{secret}@127.0.0.1:notaport/0"],
        ["revoke", "--everyone", "--reason", "r", "--state", f"postgres://ops:{secret}@db/x"],
    ):
        done = authz(*args)
        assert done.returncode == 2, done.stderr
        assert "--state" in done.stderr
        assert secret not in done.stdout + done.stderr
    env = authz("approvals", env={"AUTHZ_STATE": f"redis://ops:{secret}@127.0.0.1:1/0?bad=1"})
    assert env.returncode == 2 and secret not in env.stdout + env.stderr


def test_an_unreachable_store_exits_2_without_the_password(own_redis: RedisServer) -> None:
    url = own_redis.url(timeout=0.3)
    assert authz("revoke", "--everyone", "--reason", "r", "--state", url).returncode == 0
    own_redis.stop()
    for args in (["revocations"], ["approvals"], ["approve", "0" * 24],
                 ["revoke", "--everyone", "--reason", "r"]):  # fmt: skip
        done = authz(*args, "--state", url)
        assert done.returncode == 2 and "unavailable" in done.stderr, done.stderr
        assert PASSWORD not in done.stdout + done.stderr and "***" in done.stderr


def test_revoke_on_redis_from_the_command_line(redis_server: RedisServer) -> None:
    url = redis_server.url("cli-test:")
    made = authz("revoke", "--token-id", "jti-1", "--reason", "stolen token", "--state", url)
    assert made.returncode == 0, made.stderr
    listed = json.loads(authz("revocations", "--json", "--state", url).stdout)
    assert [(r["id"], r["token_id"]) for r in listed] == [(made.stdout.strip(), "jti-1")]
    assert PASSWORD not in os.linesep.join([made.stdout, made.stderr])
