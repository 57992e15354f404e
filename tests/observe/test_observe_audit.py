"""The audit log: one JSON line per decision, credentials masked, never blocking a decision."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from observe_events import STARTED, denied, dry, errored, event, message, tool_call, value
from prometheus_client import CollectorRegistry, generate_latest

from authz_server.decision import DecidedBy, allow, deny
from authz_server.mcp.message import FailureReason
from authz_server.observe.audit import AuditLog
from authz_server.observe.metrics import Metrics
from authz_server.request import Peer

TOP_LEVEL = {
    "time",
    "decision_id",
    "outcome",
    "decided_by",
    "transport",
    "policy",
    "validation_index",
    "reason",
    "http_status",
    "duration_seconds",
    "dry_run",
    "request",
    "source",
    "identity",
    "mcp",
    "decode_failure",
    "approval",
}


def write(events: list[Any], path: Path, **options: Any) -> list[dict[str, Any]]:
    audit = AuditLog(str(path), **options)
    audit.start()
    for item in events:
        audit.observe(item)
    assert audit.close()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_decision_with_every_field(tmp_path: Path) -> None:
    events = [
        event(
            allow(policy="p", validation_index=0),
            tool_call("create_issue"),
            decision_id=f"d-{index}",
        )
        for index in range(25)
    ]
    lines = write(events, tmp_path / "audit.jsonl")
    assert [line["decision_id"] for line in lines] == [f"d-{index}" for index in range(25)]
    for line in lines:
        assert set(line) == TOP_LEVEL
    first = lines[0]
    assert first["time"] == "2026-05-28T20:26:40.250000Z"
    assert (first["outcome"], first["decided_by"], first["policy"]) == ("allow", "policy", "p")
    assert first["transport"] == "grpc"
    assert first["validation_index"] == 0 and first["http_status"] == 0
    assert first["duration_seconds"] == 0.0001
    assert first["request"] == {
        "method": "POST",
        "host": "mcp.example",
        "path": "/mcp",
        "request_id": "req-1",
        "user_agent": None,
        "protocol_version": None,
        "session": None,
    }
    assert first["source"] == {"address": "10.0.0.7", "principal": None}
    assert first["mcp"] == {
        "batch": False,
        "messages": [
            {
                "kind": "request",
                "id": 1,
                "method": "tools/call",
                "tool": "create_issue",
                "arguments": {},
            }
        ],
    }
    assert first["decode_failure"] is None and first["identity"] == {}


def test_deny_error_dry_run_and_decode_failure(tmp_path: Path) -> None:
    events = [
        event(
            denied("github-no-merge", reason="merging is reserved for humans", validation_index=2)
        ),
        event(errored()),
        event(allow(policy="p", dry_run=(dry("audit-only", False),))),
        event(
            deny(400, reason="invalid JSON", decided_by=DecidedBy.DECODE),
            failure=FailureReason.INVALID_JSON,
            detail="line 1 column 5",
        ),
    ]
    deny_line, error_line, dry_line, decode_line = write(events, tmp_path / "a.jsonl")
    assert (
        deny_line["outcome"],
        deny_line["policy"],
        deny_line["validation_index"],
        deny_line["http_status"],
        deny_line["reason"],
    ) == ("deny", "github-no-merge", 2, 403, "merging is reserved for humans")
    assert (error_line["outcome"], error_line["decided_by"]) == ("error", "error")
    assert dry_line["outcome"] == "allow"
    assert dry_line["dry_run"] == [
        {"policy": "audit-only", "outcome": "deny", "http_status": 403, "reason": "would deny"}
    ]
    assert decode_line["decode_failure"] == {"reason": "invalid_json", "detail": "line 1 column 5"}
    assert decode_line["mcp"] is None and decode_line["decided_by"] == "decode"


def test_batch_lists_every_element(tmp_path: Path) -> None:
    batch = event(
        denied(),
        tool_call("a", {"x": 1}, id=1),
        message("resources/read", id="r2", uri="file:///srv/readme.md"),
        message("prompts/get", id=3, prompt_name="summarise", arguments={"n": "3"}),
        batch=True,
    )
    (line,) = write([batch], tmp_path / "a.jsonl")
    assert line["mcp"]["batch"] is True
    assert line["mcp"]["messages"] == [
        {"kind": "request", "id": 1, "method": "tools/call", "tool": "a", "arguments": {"x": 1}},
        {"kind": "request", "id": "r2", "method": "resources/read", "uri": "file:///srv/readme.md"},
        {
            "kind": "request",
            "id": 3,
            "method": "prompts/get",
            "prompt": "summarise",
            "arguments": {"n": "3"},
        },
    ]


def test_identity_from_jwt_metadata_and_peer(tmp_path: Path) -> None:
    metadata = {
        "envoy.filters.http.jwt_authn": {
            "payload": {
                "sub": "agent-42",
                "iss": "https://idp.example",
                "azp": "claude-code",
                "email": "someone@example.com",
                "scope": "repo",
            }
        }
    }
    source = Peer(address="192.0.2.1", port=443, principal="spiffe://example/agent")
    headers = {
        "user-agent": "claude-code/1.2",
        "mcp-protocol-version": "2025-06-18",
        "mcp-session-id": "3f2a-session",
    }
    (line,) = write(
        [event(metadata=metadata, source=source, headers=headers)], tmp_path / "a.jsonl"
    )
    assert line["identity"] == {
        "subject": "agent-42",
        "issuer": "https://idp.example",
        "client_id": "claude-code",
    }
    assert line["source"] == {"address": "192.0.2.1", "principal": "spiffe://example/agent"}
    assert line["request"]["user_agent"] == "claude-code/1.2"
    assert line["request"]["protocol_version"] == "2025-06-18"
    assert line["request"]["session"].startswith("sha256:")
    assert "3f2a-session" not in json.dumps(line) and "someone@" not in json.dumps(line)


SECRETS = {
    "authorization": "Bearer s3cr3tAUTHZ0123456789",
    "proxy-authorization": "Basic czNjcjN0UFJPWFk6cGFzc3dvcmQ=",
    "cookie": "sid=s3cr3tCOOKIE42; theme=dark",
    "set-cookie": "sid=s3cr3tSETCOOKIE; HttpOnly",
    "dpop": "eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJqdGkiOiJzM2NyM3RfZHBvcCJ9.s3cr3tDPOPsignature",
    "x-api-key": "s3cr3tAPIKEY98765",
    "x-auth-token": "s3cr3tXAUTHTOKEN",
    "x-amz-security-token": "s3cr3tAMZTOKEN",
    "mcp-session-id": "s3cr3tSESSION",
    "user-agent": "agent/1.0 token=s3cr3tUSERAGENT",
}
SECRET_ARGUMENTS = {
    "password": "s3cr3tPASSWORD",
    "query": "select 1",
    "config": {
        "nested": {
            "apiKey": "s3cr3tNESTEDKEY",
            "deeper": [{"client_secret": "s3cr3tLISTSECRET"}, {"ok": "fine"}],
        }
    },
    "Session": {"id": "s3cr3tSESSIONARG"},
    "note": "call it with Bearer s3cr3tNOTEBEARER please",
    "github": "ghp_s3cr3tGITHUBx0123456789abcdefghijkl",
    "pat": "github_pat_s3cr3tFINEGRAINED_0123456789",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzM2NyM3RKV1QifQ.s3cr3tJWTsignatureXYZ",
    "aws": "AKIAS3CR3TAWSKEY1234",
    "openai": "sk-proj-s3cr3tOPENAIkey0123456789",
    "slack": "xoxb-s3cr3tSLACK-0123456789-abcdef",
    "url": "https://deploy:s3cr3tURLPASS@git.example/repo?access_token=s3cr3tQUERYTOKEN&x=1",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIs3cr3tPEMKEY\n-----END RSA PRIVATE KEY-----",
    "header_text": "Authorization: s3cr3tPASTEDHEADER",
    "config_text": 'password = "s3cr3tINIPASSWORD"',
}
METADATA = {"envoy.filters.http.jwt_authn": {"payload": {"sub": "agent", "token": "s3cr3tMETA"}}}


def secret_event() -> Any:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "create_issue", "arguments": SECRET_ARGUMENTS},
        }
    ).encode()
    return event(
        denied(reason="token=s3cr3tREASON not allowed"),
        tool_call("create_issue", SECRET_ARGUMENTS),
        message("resources/read", id=2, uri="https://api.example/x?api_key=s3cr3tURIKEY"),
        batch=True,
        headers={**SECRETS, "content-type": "application/json"},
        metadata=METADATA,
        body=body,
    )


def test_no_credential_reaches_the_audit_log_or_the_metrics(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write([secret_event()], path)
    registry = CollectorRegistry()
    Metrics(registry).observe(secret_event())
    outputs = {"audit": path.read_text(), "metrics": generate_latest(registry).decode()}
    for where, text in outputs.items():
        assert "s3cr3t" not in text.lower(), where
        assert "czNjcjN0" not in text, where  # the Basic credential, base64
        assert "zM2NyM3" not in text, where  # inside the JWT payloads
    line = json.loads(outputs["audit"])
    arguments = line["mcp"]["messages"][0]["arguments"]
    assert arguments["password"] == "[REDACTED]"
    assert arguments["query"] == "select 1"
    assert arguments["config"]["nested"]["apiKey"] == "[REDACTED]"
    assert arguments["config"]["nested"]["deeper"] == [
        {"client_secret": "[REDACTED]"},
        {"ok": "fine"},
    ]
    assert arguments["note"] == "call it with Bearer [REDACTED] please"
    assert arguments["url"] == (
        "https://deploy:[REDACTED]@git.example/repo?access_token=[REDACTED]&x=1"
    )
    assert line["identity"] == {"subject": "agent"}


def test_long_values_are_truncated(tmp_path: Path) -> None:
    arguments = {
        "body": "a" * 100 + " " + "b" * 5000,
        "short": "kept",
        "list": list(range(200)),
        "deep": {"a": {"b": {"c": {"d": {"e": {}}}}}},
    }
    (line,) = write(
        [event(allow(), tool_call("t", arguments), headers={"user-agent": "u" * 999})],
        tmp_path / "a.jsonl",
        max_value_length=64,
    )
    kept = line["mcp"]["messages"][0]["arguments"]
    assert kept["body"].startswith("a" * 64) and kept["body"].endswith("...[5101 chars]")
    assert len(kept["body"]) < 100
    assert kept["short"] == "kept"
    assert kept["list"][:3] == [0, 1, 2] and kept["list"][-1] == "[136 more]"
    assert len(line["request"]["user_agent"]) < 100


def test_a_secret_cut_by_truncation_is_still_masked(tmp_path: Path) -> None:
    token = "ghp_" + "S3CR3T" * 6
    arguments = {"text": "x" * 50 + " " + token + " and more text" * 20}
    (line,) = write(
        [event(allow(), tool_call("t", arguments))], tmp_path / "a.jsonl", max_value_length=60
    )
    text = line["mcp"]["messages"][0]["arguments"]["text"]
    assert "S3CR3T" not in text and "ghp_" not in text


def test_file_destination_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write([event(decision_id="first")], path)
    lines = write([event(decision_id="second"), event(decision_id="third")], path)
    assert [line["decision_id"] for line in lines] == ["first", "second", "third"]


def test_close_without_start_writes_what_was_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    audit.observe(event(decision_id="queued"))
    assert audit.close()
    assert json.loads(path.read_text())["decision_id"] == "queued"


def test_stdout_is_the_default(capfd: pytest.CaptureFixture[str]) -> None:
    audit = AuditLog()
    audit.start()
    audit.observe(event(decision_id="to-stdout"))
    assert audit.close()
    out = capfd.readouterr().out
    assert json.loads(out)["decision_id"] == "to-stdout"


def test_a_stream_without_a_descriptor() -> None:
    stream = io.BytesIO()
    audit = AuditLog(stream)
    audit.start()
    audit.observe(event(decision_id="in-memory"))
    audit.close()
    assert json.loads(stream.getvalue())["decision_id"] == "in-memory"


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "wb", buffering=0)
    audit = AuditLog(stuck, queue_size=4, on_drop=metrics.audit_dropped)
    audit.start()
    total = 5000
    padding = {"text": "p" * 200}
    for index in range(total):  # nobody reads the pipe: the writer blocks once it is full
        audit.observe(event(allow(), tool_call("t", padding), decision_id=f"d-{index}"))
    dropped = value(registry, "authz_audit_lines_dropped_total", reason="queue_full")
    assert dropped > 0 and dropped == audit.dropped

    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_end)))
    reader.start()
    assert audit.close(timeout=60)
    stuck.close()
    reader.join(60)
    lines = received[0].decode().splitlines()
    assert len(lines) + dropped == total
    ids = [json.loads(line)["decision_id"] for line in lines]
    assert len(set(ids)) == len(ids)


def _lines_within(path: Path, count: int, seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.01)
    return path.read_text().splitlines() if path.exists() else []


def test_a_quiet_server_still_writes_each_line_without_close(tmp_path: Path) -> None:
    # One decision, far below the batch size: the flush timer writes it.
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), flush_interval=0.05, batch=1000)
    audit.start()
    try:
        audit.observe(event(decision_id="lonely"))
        lines = _lines_within(path, 1)
        assert [json.loads(line)["decision_id"] for line in lines] == ["lonely"]
    finally:
        audit.close()


def test_a_full_batch_is_written_before_the_flush_timer(tmp_path: Path) -> None:
    # The timer would wait an hour: only reaching the batch size can wake the writer.
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), flush_interval=3600, batch=8)
    audit.start()
    try:
        for index in range(7):
            audit.observe(event(decision_id=f"d-{index}"))
        time.sleep(0.2)
        assert path.read_text() == ""  # created by start(), nothing written yet
        audit.observe(event(decision_id="d-7"))
        lines = _lines_within(path, 8)
        assert [json.loads(line)["decision_id"] for line in lines] == [f"d-{i}" for i in range(8)]
    finally:
        audit.close()


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_a_failing_destination_counts_write_errors() -> None:
    registry = CollectorRegistry()

    class Broken(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError("disk full")

    audit = AuditLog(Broken(), on_drop=Metrics(registry).audit_dropped)
    audit.start()
    for _ in range(3):
        audit.observe(event())
    assert audit.close()
    assert value(registry, "authz_audit_lines_dropped_total", reason="write_error") == 3


def test_observe_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    audit = AuditLog(str(path))
    audit.start()
    audit.observe(None)  # type: ignore[arg-type]
    audit.observe(event(allow(), tool_call("t", {"weird": object(), "nan": float("nan")})))
    assert audit.close()
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    arguments = line["mcp"]["messages"][0]["arguments"]
    assert arguments["nan"] == "nan" and arguments["weird"].startswith("<object")
    assert audit.dropped == 1


def test_time_is_rfc3339_utc(tmp_path: Path) -> None:
    (line,) = write([event()], tmp_path / "a.jsonl")
    assert line["time"].endswith("Z") and line["time"].startswith("2026-05-28T")
    assert STARTED == 1_780_000_000.25


def test_every_line_is_ascii_and_one_line_whatever_the_values(tmp_path: Path) -> None:
    # Non-ASCII text, Unicode line separators, a lone surrogate from a JSON body's "\ud800", an
    # integer beyond 64 bits: each line stays one ASCII line with the values' exact meaning.
    odd = {
        "text": "café 日本",
        "separators": "a\u2028b\u2029c\x85d",
        "surrogate": "x\ud800y",
        "big": 2**70,
        "negative": -(2**64),
        "control": "tab\there\x1f",
    }
    path = tmp_path / "a.jsonl"
    write([event(allow(), tool_call("t", {"k": value})) for value in odd.values()], path)
    raw = path.read_bytes()
    assert raw.isascii()
    lines = [json.loads(line) for line in raw.decode("ascii").splitlines()]
    assert [line["mcp"]["messages"][0]["arguments"]["k"] for line in lines] == list(odd.values())


def test_a_plain_line_means_what_the_standard_encoder_wrote(tmp_path: Path) -> None:
    # The fast encoder's line parses to what json.dumps would have written for the record.
    from authz_server.observe.audit import encode_line

    record = {
        "duration_seconds": 1.2e-05,
        "n": [0, -1, 2**63 - 1, 1.5, True, None],
        "s": 'quote " backslash \\ slash /',
        "nested": {"a": {"b": []}},
    }
    line = encode_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert json.loads(line) == json.loads(json.dumps(record))


def test_each_line_names_its_own_caller_and_session(tmp_path: Path) -> None:
    # The view reuses the last caller's and session's fields when the next check has the same
    # ones (a cached token's Identity object, a repeated session id): consecutive checks with
    # different callers or sessions, or the same ones again, each name their own.
    from authz_server.identity.model import Identity, Method

    def caller(subject: str) -> Identity:
        return Identity(
            authenticated=True, method=Method.BEARER, issuer="https://idp", subject=subject
        )

    alice, bob = caller("alice"), caller("bob")
    sessions = ["s-1", "s-1", "s-2", "s-1", "s-1"]
    callers = [alice, alice, bob, alice, caller("alice-2")]
    events = [
        event(identity=who, headers={"mcp-session-id": session}, decision_id=f"d-{index}")
        for index, (who, session) in enumerate(zip(callers, sessions, strict=True))
    ]
    lines = write(events, tmp_path / "a.jsonl")
    assert [line["identity"]["subject"] for line in lines] == [
        "alice", "alice", "bob", "alice", "alice-2",
    ]  # fmt: skip
    digests = [line["request"]["session"] for line in lines]
    assert digests[0] == digests[1] == digests[3] == digests[4] != digests[2]
    assert all(digest.startswith("sha256:") for digest in digests)
