"""``uri.CleanPath``, ``uri.FilePath`` and the path getters: the path a server would open.

The oracle for cleaning is the standard library's lexical normalisation (``posixpath.normpath``),
for URIs ``urllib.parse`` and ``unquote`` (what a Python MCP server calls); the calls are hoisted
out of the fast path's program and keep no memory per check.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz_server.cel import CelEvaluationError
from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode, paths
from authz_server.policy import Engine, load_directory
from authz_server.policy.testing import check_request_from_shorthand
from tests.leaks import kept_bytes
from tests.policy.test_call_leak import BOUND, _leaks

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"

SEGMENTS = st.sampled_from(["a", "etc", "passwd", ".", "..", "", "b c", "x.y", "...", "~"])
PATHS = st.builds(
    lambda rooted, segments, trailing: ("/" if rooted else "") + "/".join(segments) + trailing,
    st.booleans(),
    st.lists(SEGMENTS, max_size=8),
    st.sampled_from(["", "/", "/."]),
)


def _normpath(path: str) -> str:
    result = posixpath.normpath(path) if path else "."
    # POSIX leaves a leading "//" to the implementation; Linux reads it as "/".
    return result[1:] if result.startswith("//") else result


@given(PATHS)
def test_clean_path_is_lexical_normalisation(path: str) -> None:
    assert paths.clean_path(path) == _normpath(path)


@given(PATHS)
def test_a_backslash_is_a_separator(path: str) -> None:
    assert paths.clean_path(path.replace("/", "\\")) == _normpath(path)


@given(PATHS)
def test_a_clean_path_has_no_dot_segments_and_cleans_to_itself(path: str) -> None:
    cleaned = paths.clean_path(path)
    assert paths.clean_path(cleaned) == cleaned
    if cleaned.startswith("/"):
        assert not {".", "..", ""} & set(cleaned.split("/")[1:]) or cleaned == "/"


@given(
    path=PATHS.filter(lambda p: p.startswith("/")),
    scheme=st.sampled_from(["file", "FILE", "File"]),
    host=st.sampled_from(["", "localhost", "LOCALHOST", "user@localhost:8"]),
    encode=st.sets(st.sampled_from(list("ae./ ~"))),
    tail=st.sampled_from(["", "?q=/../x", "#/../../root", "?a#b"]),
)
def test_file_path_is_the_decoded_cleaned_path_of_the_uri(path, scheme, host, encode, tail):
    # The first "/" ends the authority; the others may be %2F, which servers decode.
    spelled = "/" + "".join(quote(c, safe="") if c in encode else c for c in path[1:])
    spelled = spelled.replace(".", "%2E") if "." in encode else spelled
    uri = f"{scheme}://{host}{spelled}{tail}"
    assert paths.file_path(uri) == _normpath(path)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:/etc/passwd", "/etc/passwd"),
        ("file:///./etc/passwd", "/etc/passwd"),
        ("file:///.//etc//passwd", "/etc/passwd"),
        ("file:///srv/data/../../etc", "/etc"),
        ("file:///srv/%2e%2e/%2E%2E/etc", "/etc"),
        ("file:///srv%2F..%2F..%2Fetc", "/etc"),
        ("file:///e\ttc/pass\nwd", "/etc/passwd"),
        (" file:///etc", "/etc"),
        ("/%65tc/passwd", "/etc/passwd"),
        ("etc/../../x", "../x"),
        ("file:", "."),
        ("https://example.com/etc/passwd", ""),
        ("urn:x:/etc", ""),
    ],
)
def test_file_path_examples(uri: str, expected: str) -> None:
    assert paths.file_path(uri) == expected


@pytest.mark.parametrize(
    "uri", ["file://fileserver/etc/passwd", "//host/etc", "file:///etc%00.txt", "file://[::1/x"]
)
def test_file_path_refuses_what_it_cannot_read_safely(uri: str) -> None:
    with pytest.raises(ValueError) as raised:
        paths.file_path(uri)
    assert "etc" not in str(raised.value) and "host/" not in str(raised.value)


def test_the_cel_functions(cel_eval) -> None:
    assert cel_eval('uri.CleanPath("/a/./b/../../../etc")') == "/etc"
    assert cel_eval('uri.FilePath("FILE://LocalHost/./ETC")') == "/ETC"
    with pytest.raises(CelEvaluationError, match=r"uri\.FilePath: a file URI naming another host"):
        cel_eval('uri.FilePath("file://h/etc")')


def test_the_path_getters(cel_eval) -> None:
    cel_eval.message(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "read_multiple_files",
                "arguments": {"path": "/w/../etc/", "paths": '["a/./b", "/x//y"]', "n": 5},
            },
        }
    )
    assert cel_eval('mcp.GetPathArgument("path", "")') == "/etc"
    assert cel_eval('mcp.GetPathArgument("missing", "d/./")') == "d/./"  # the default as given
    assert cel_eval('mcp.GetPathSliceArgument("paths", [])') == ["a/b", "/x/y"]
    with pytest.raises(CelEvaluationError, match="does not convert"):
        cel_eval('mcp.GetPathArgument("n", "")')


# --- the example policies: the calls are hoisted and keep no memory per check -------------

RESOURCE = {"mcp": {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {}}}


def _check(shorthand: dict) -> tuple[Engine, Any, Any]:
    engine = Engine(load_directory(EXAMPLES))
    request = request_from_check(check_request_from_shorthand(shorthand))
    return engine, request, decode(request.body, request.headers)


def test_the_example_path_calls_are_hoisted_out_of_the_programs() -> None:
    policies = load_directory(EXAMPLES)
    resources = policies.fast_path("resources/read").program.source
    tools = policies.fast_path("tools/call").program.source
    assert "uri.FilePath" not in resources and re.search(r"authz_h\d", resources)
    assert "GetPathArgument" not in tools and "GetPathSliceArgument" not in tools


@pytest.mark.parametrize(
    ("shorthand", "allowed"),
    [
        ({"mcp": {**RESOURCE["mcp"], "params": {"uri": "file:///./etc/" + "p" * 2000}}}, False),
        ({"mcp": {**RESOURCE["mcp"], "params": {"uri": "file:///w/" + "n" * 2000}}}, True),
        ({"tool": "read_text_file", "arguments": {"path": "/w/../etc/" + "p" * 2000}}, False),
        ({"tool": "read_multiple_files", "arguments": {"paths": ["/w/" + "n" * 2000]}}, True),
    ],
    ids=["resource-denied", "resource-allowed", "file-denied", "files-allowed"],
)
def test_the_example_path_checks_retain_no_memory_per_check(shorthand: dict, allowed: bool):
    engine, request, decoded = _check(shorthand)
    assert engine.check(request, decoded).allowed is allowed
    leaks = _leaks(lambda: engine.check(request, decoded), 2_000)
    assert kept_bytes(leaks) < BOUND, leaks
