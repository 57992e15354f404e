"""Which responses answer a list request, and the same bodies with hidden entries removed."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from authz_server.mcp.responses import (
    UNKNOWN,
    ResponseError,
    id_key,
    list_requests,
    rewrite,
)

TOOLS = {"tools": [{"name": "read"}, {"name": "hidden_drop"}], "nextCursor": "c2"}


def hide(result: dict[str, Any], method: str) -> tuple[dict[str, Any], int]:
    """The test's filter: entries named hidden_* go; it records what it was asked."""
    hide.calls.append(method)  # type: ignore[attr-defined]
    key = {"tools/list": "tools", "prompts/list": "prompts"}.get(method, "resources")
    kept = [e for e in result[key] if not e.get("name", "").startswith("hidden_")]
    return {**result, key: kept}, len(result[key]) - len(kept)


@pytest.fixture(autouse=True)
def _calls() -> None:
    hide.calls = []  # type: ignore[attr-defined]


def _body(message: Any) -> bytes:
    return json.dumps(message).encode()


def test_list_requests_are_found_by_method_and_id() -> None:
    assert list_requests(b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}') == {
        id_key(3): "tools/list"
    }
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "prompts/list"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "tools/list"},  # a notification: nothing answers it
    ]
    assert list_requests(_body(batch)) == {id_key("a"): "prompts/list"}
    assert list_requests(b'{"jsonrpc":"2.0","id":4,"method":"tools/call"}') == {}
    assert list_requests(b"") == {}


def test_an_escaped_method_name_is_still_a_list_request() -> None:
    body = b'{"jsonrpc":"2.0","id":9,"method":"tools\\/\\u006cist"}'
    assert list_requests(body) == {id_key(9): "tools/list"}


def test_a_request_body_that_is_not_json_as_sent_is_unknown() -> None:
    body = gzip.compress(b'{"jsonrpc":"2.0","id":9,"method":"tools/list"}')
    assert list_requests(body) is UNKNOWN


def test_only_the_response_to_the_list_request_is_filtered() -> None:
    requests = {id_key(2): "tools/list"}
    response = {"jsonrpc": "2.0", "id": 2, "result": TOOLS}
    new, hidden = rewrite(_body(response), requests, hide)
    assert hidden == 1
    assert json.loads(new) == {
        "jsonrpc": "2.0",
        "id": 2,
        "result": {"tools": [{"name": "read"}], "nextCursor": "c2"},
    }
    # The same result under another id (or the string "2") is not this exchange's list.
    assert rewrite(_body({**response, "id": "2"}), requests, hide) == (None, 0)
    assert rewrite(_body({**response, "id": 3}), requests, hide) == (None, 0)
    assert hide.calls == ["tools/list"]  # type: ignore[attr-defined]


def test_nothing_hidden_leaves_the_bytes_as_they_came() -> None:
    body = b'{"id":2,  "jsonrpc":"2.0","result":{"tools":[{"name":"read"}]}}'
    assert rewrite(body, {id_key(2): "tools/list"}, hide) == (None, 0)


def test_a_batch_response_is_filtered_element_by_element() -> None:
    requests = {id_key(1): "tools/list", id_key(2): "prompts/list"}
    batch = [
        {"jsonrpc": "2.0", "id": 1, "result": TOOLS},
        {"jsonrpc": "2.0", "id": 2, "result": {"prompts": [{"name": "hidden_p"}]}},
        {"jsonrpc": "2.0", "id": 3, "result": TOOLS},
    ]
    new, hidden = rewrite(_body(batch), requests, hide)
    assert hidden == 2
    first, second, third = json.loads(new)
    assert first["result"]["tools"] == [{"name": "read"}]
    assert second["result"]["prompts"] == []
    assert third == batch[2]


def test_an_unreadable_list_response_is_an_error() -> None:
    with pytest.raises(ResponseError):
        rewrite(b'{"jsonrpc":"2.0","id":2,"result":', {id_key(2): "tools/list"}, hide)


def test_unknown_requests_are_recognised_by_the_shape_of_the_result() -> None:
    listed = {"jsonrpc": "2.0", "id": 5, "result": TOOLS}
    new, hidden = rewrite(_body(listed), UNKNOWN, hide)
    assert hidden == 1 and json.loads(new)["result"]["tools"] == [{"name": "read"}]
    # A tool call whose structured output happens to hold "tools" is no list.
    call = {"jsonrpc": "2.0", "id": 6, "result": {"content": [], **TOOLS}}
    assert rewrite(_body(call), UNKNOWN, hide) == (None, 0)
    assert rewrite(b"not json", UNKNOWN, hide) == (None, 0)
