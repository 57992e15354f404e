"""Shared by the ext_proc wire and end-to-end tests: recorded SDK exchanges, the official ext_proc
client, and readers of what a client finally receives (JSON or SSE)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from conftest import wire_python

HERE = Path(__file__).resolve().parent
RECORDED = HERE.parent / "fixtures" / "mcp" / "sdk_responses.json"
LISTING_POLICIES = HERE / "listing_policies"


def recorded() -> dict[str, dict[str, Any]]:
    """The exchanges recorded from the SDK server, by name (``legacy/tools/list#1`` ...)."""
    document = json.loads(RECORDED.read_text(encoding="utf-8"))
    return {entry["name"]: entry for entry in document["exchanges"]}


def exchange(name: str, gateway: str = "envoy", label: str | None = None, **extra: Any) -> dict:
    """An exchange for ext_proc_client.py from a recorded one (``host`` becomes ``:authority``,
    as a gateway presents it)."""
    entry = recorded()[name]
    headers = [[":authority", v] if k == "host" else [k, v] for k, v in entry["request"]["headers"]]
    headers.append([":scheme", "http"])
    return {
        "label": label or f"{gateway}:{name}",
        "gateway": gateway,
        "request_headers": headers,
        "request_body": base64.b64encode(entry["request"]["body"].encode()).decode(),
        "response_headers": entry["response"]["headers"],
        "response_chunks": entry["response"]["chunks"],
        "attributes": {"source.address": "127.0.0.1:40000", "request.id": "r-1"},
        **extra,
    }


def drive(target: str, exchanges: list[dict]) -> dict[str, dict]:
    """Run exchanges through the official-proto ext_proc client in the wire interpreter."""
    done = subprocess.run(
        [wire_python(), str(HERE / "ext_proc_client.py"), target],
        input=json.dumps(exchanges),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def body_of(result: dict) -> bytes:
    return base64.b64decode(result["body"])


def sse_messages(body: bytes) -> list[Any]:
    """The JSON data of each dispatched SSE event (the way a client reads the stream)."""
    messages, data = [], []
    for line in body.decode().splitlines():
        if not line:
            if data:
                messages.append(json.loads("\n".join(data)))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return messages


def result_of(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON-RPC result in a response body, JSON or SSE."""
    if content_type.startswith("text/event-stream"):
        (message,) = [m for m in sse_messages(body) if "result" in m or "error" in m]
    else:
        message = json.loads(body)
    return message["result"]


def names(result: dict[str, Any], key: str = "tools") -> list[str]:
    return [entry.get("name") or entry.get("uri") for entry in result[key]]


def header(result: dict, name: str) -> str | None:
    values = [v for k, v in result.get("headers", []) if k == name]
    return values[0] if values else None
