"""The command line as a user runs it: `check`, `validate`, `test`, with the shipped examples."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import clean_environment, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
MERGE = ROOT / "examples" / "requests" / "merge-pull-request.json"
CREATE = ROOT / "examples" / "requests" / "create-pull-request.json"


def authz(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz_server", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_check_offline_denies_the_merge_with_the_policys_reason() -> None:
    done = authz("check", "--policies", "policies", "--request", str(MERGE))
    assert done.returncode == 1, done.stderr
    decision = json.loads(done.stdout)
    assert (decision["allowed"], decision["policy"]) == (False, "github-no-merge")
    denied = decision["check_response"]["denied_response"]
    assert json.loads(denied["body"])["error"]["message"] == (
        "merging pull requests is reserved for humans"
    )


def test_check_offline_allows_opening_a_pull_request_and_reads_stdin() -> None:
    done = authz("check", "--policies", "policies", "--request", "-", stdin=CREATE.read_text())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["policy"] == "github-contribute"


def test_check_against_a_running_server_gives_the_same_answers() -> None:
    server = start_server(ROOT / "policies")
    try:
        merge = authz("check", "--server", server.target, "--request", str(MERGE))
        create = authz("check", "--server", server.target, "--request", str(CREATE))
    finally:
        stop_server(server)
    assert (merge.returncode, create.returncode) == (1, 0), merge.stderr + create.stderr
    metadata = json.loads(merge.stdout)["check_response"]["dynamic_metadata"]
    assert metadata["policy"] == "github-no-merge" and metadata["decision_id"]


def test_check_reports_unusable_input_with_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"attributes": {"request": {"http": {"nope": 1}}}}')
    done = authz("check", "--policies", "policies", "--request", str(bad))
    assert done.returncode == 2 and "nope" in done.stderr
    neither = authz("check", "--request", str(MERGE))
    assert neither.returncode == 2 and "--policies" in neither.stderr


def test_validate_points_at_a_typo(tmp_path: Path) -> None:
    text = (ROOT / "policies" / "github.yaml").read_text()
    (tmp_path / "github.yaml").write_text(
        text.replace("mcp.ToolCall.Name ==", "mcp.ToolCal.Name ==")
    )
    done = authz("validate", str(tmp_path))
    assert done.returncode == 1
    assert "github.yaml:" in done.stderr and "ToolCal" in done.stderr
    assert authz("validate", "policies").returncode == 0


def test_policy_tests_of_the_examples_pass() -> None:
    done = authz("test", "policies")
    assert done.returncode == 0, done.stdout
    assert " 0 failed" in done.stdout


def gzipped_request(tmp_path: Path) -> Path:
    """The create-pull-request check, its body sent gzip-compressed (Envoy's raw_body)."""
    check = json.loads(CREATE.read_text())
    http = check["attributes"]["request"]["http"]
    body = http.pop("body").encode()
    http["raw_body"] = base64.b64encode(gzip.compress(body)).decode()
    http["headers"]["content-encoding"] = "gzip"
    path = tmp_path / "gzipped.json"
    path.write_text(json.dumps(check))
    return path


def test_check_reads_the_body_as_sent_unless_told_the_upstream_decompresses(
    tmp_path: Path,
) -> None:
    request = str(gzipped_request(tmp_path))
    as_sent = authz("check", "--policies", "policies", "--request", request)
    assert as_sent.returncode == 1, as_sent.stderr
    assert json.loads(as_sent.stdout)["reason"] in ("invalid_utf8", "invalid_json")
    flag = authz(
        "check", "--policies", "policies", "--request", request, "--decode-content-encoding"
    )
    assert flag.returncode == 0, flag.stdout + flag.stderr
    assert json.loads(flag.stdout)["policy"] == "github-contribute"


def test_serve_decodes_content_encoding_when_the_environment_says_so(tmp_path: Path) -> None:
    request = str(gzipped_request(tmp_path))
    server = start_server(
        ROOT / "policies", env={**clean_environment(), "AUTHZ_DECODE_CONTENT_ENCODING": "true"}
    )
    try:
        done = authz("check", "--server", server.target, "--request", request)
    finally:
        stop_server(server)
    assert done.returncode == 0, done.stdout + done.stderr


# Every numeric and duration setting of `serve`, each with values it must refuse.
NUMERIC_SETTINGS = {
    "WORKERS": ["two", "1.5"],
    "MAX_RECEIVE_BYTES": ["8MiB", "0x10"],
    "GRACE_PERIOD": ["15s", "inf", "nan"],
    "MAX_CONNECTION_AGE": ["ten", "-inf"],
    "AUDIT_MAX_VALUE_LENGTH": ["long"],
    "METRICS_TOOL_LIMIT": ["100.0"],
    "MAX_WORKER_RSS_MIB": ["512Mi"],
}
BAD_ENVIRONMENT = [(name, bad) for name, values in NUMERIC_SETTINGS.items() for bad in values]


@pytest.mark.parametrize(("name", "bad"), BAD_ENVIRONMENT)
def test_a_bad_numeric_variable_is_a_one_line_usage_error(
    name: str, bad: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from authz_server.cli import main

    monkeypatch.setenv(f"AUTHZ_{name}", bad)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--policies", "policies"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"AUTHZ_{name}" in error and repr(bad) in error, error


def test_bad_numeric_variables_do_not_break_the_commands_that_ignore_them() -> None:
    bad = {f"AUTHZ_{name}": values[0] for name, values in NUMERIC_SETTINGS.items()}
    done = subprocess.run(
        [sys.executable, "-m", "authz_server", "validate", "policies"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **bad},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("flag", ["--grace-period", "--max-connection-age"])
def test_a_duration_flag_must_be_finite(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    from authz_server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--policies", "policies", flag, "inf"])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


def test_serve_with_a_bad_variable_exits_2_without_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "authz_server", "serve", "--policies", "policies"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "AUTHZ_WORKERS": "two"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "authz-server: AUTHZ_WORKERS: invalid int value 'two'"


def test_workers_run_with_every_setting_of_their_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A setting given to the supervisor and lost on the way to its workers (the state store
    was) silently changes what the server does: a worker on another store lets a DPoP proof be
    replayed to its sibling. Every setting differs from its default here."""
    from dataclasses import replace

    from authz_server.cli import build_parser, serve_config
    from authz_server.config import DEFAULT_DISPATCH, Address, ServeConfig
    from authz_server.serve.workers import worker_command, worker_environment

    password = "not-on-the-command-line"
    config = ServeConfig(
        policies=Path("/srv/policies"),
        grpc_address=Address("127.0.0.1", 9100),
        http_address=Address("::1", 9101),
        workers=3,
        max_receive_bytes=1 << 20,
        grace_period=3.5,
        max_connection_age=7.0,
        combine="first-match",
        default_decision="allow",
        decode_failures_to_policies=True,
        decode_content_encoding=True,
        log_level="debug",
        audit_log="/var/log/audit.log",
        audit_max_value_length=64,
        metrics_tool_limit=5,
        max_worker_rss_mib=300,
        state=f"redis://:{password}@127.0.0.1:6379/2",
        admin_address=Address("127.0.0.1", 9102),
        admin_token_file=Path("/run/secrets/admin-token"),
        admin_public_url="https://authz-admin.example.com",
        approval_ttl=120.0,
        http_authz_address=Address("127.0.0.1", 9103),
        http_authz_nested_request=True,
        ext_proc_max_body_bytes=1 << 19,
        ext_proc_oversize="pass",
        ext_proc_streams=17,
        dispatch="inline" if DEFAULT_DISPATCH == "thread" else "thread",
    )
    for name in [name for name in os.environ if name.startswith("AUTHZ_")]:
        monkeypatch.delenv(name)
    for name, value in worker_environment(config).items():
        monkeypatch.setenv(name, value)
    command = worker_command(config)
    assert command[1:4] == ["-m", "authz_server", "serve"]
    assert not any(password in part for part in command)
    worker = serve_config(build_parser().parse_args(command[3:]))
    # The admin listener is the supervisor's alone (one per host): workers get none.
    assert worker == replace(
        config, workers=1, reuse_port=True, admin_address=None, admin_token_file=None
    )
    # Without a public URL, the workers' approval links still name the supervisor's listener.
    local = replace(config, admin_public_url="")
    command = worker_command(local)
    assert serve_config(build_parser().parse_args(command[3:])).approval_url == (
        "http://127.0.0.1:9102"
    )


def test_dispatch_comes_from_the_flag_or_the_environment_and_a_bad_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from authz_server.cli import build_parser, serve_config
    from authz_server.config import DEFAULT_DISPATCH, ConfigError

    def dispatch(*flags: str) -> str:
        return serve_config(
            build_parser().parse_args(["serve", "--policies", "p", *flags])
        ).dispatch

    monkeypatch.delenv("AUTHZ_DISPATCH", raising=False)
    assert dispatch() == DEFAULT_DISPATCH
    assert dispatch("--dispatch", "inline") == "inline"
    monkeypatch.setenv("AUTHZ_DISPATCH", "inline")
    assert dispatch() == "inline"
    assert dispatch("--dispatch", "thread") == "thread"  # the flag wins
    monkeypatch.setenv("AUTHZ_DISPATCH", "fibers")
    with pytest.raises(ConfigError, match="--dispatch"):
        dispatch()
