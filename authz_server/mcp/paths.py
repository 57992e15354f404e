"""The path a URI or a filesystem path names, as an MCP server would open it.

A policy that refuses ``/etc`` must compare the path the MCP server resolves, not the text the
agent sent: ``file:///./etc``, ``file:////etc``, ``file:///srv/../etc``, ``/%65tc`` (a bare
path some servers hand to ``urlparse`` and ``unquote``) and ``FILE://LocalHost/etc`` all name
``/etc``. Both functions are lexical: a symbolic link (``/proc/self/root``) stays invisible, so
policies refuse such trees as a whole. CEL binds them as ``uri.CleanPath`` and ``uri.FilePath``
(:mod:`authz_server.cel.uri`), and the path getters (``mcp.GetPathArgument``) use
:func:`clean_path`.

* :func:`clean_path`: ``.`` and empty segments dropped, ``..`` resolved (never above the root;
  kept at the front of a relative path), a backslash read as a separator (Windows servers and
  the MCP SDK's own checks do; on POSIX it only makes more paths look like traversal, the safe
  side). ``""`` is ``"."``, as in Go's ``path.Clean``.
* :func:`file_path`: for a ``file:`` URI (any case, any spelling of the local host) or a URI
  without a scheme, its path as Python's ``urllib.parse`` reads it (leading spaces and control
  characters stripped, tabs and newlines removed, query and fragment cut off), %-decoded once
  and cleaned; ``""`` for a URI of another scheme. A file URI naming another host is an error:
  neither reading of it (host ignored, or taken as a path) is safe to assume.

A path holding U+0000 (``%00``) is an error: CEL strings cannot hold it, and C-level file APIs
would cut the path there. Error texts never include the path.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_LOCAL_HOSTS = frozenset({"", "localhost"})


def clean_path(path: str) -> str:
    if "\x00" in path:
        raise ValueError("the path holds U+0000")
    text = path.replace("\\", "/")
    rooted = text.startswith("/")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment != "..":
            segments.append(segment)
        elif segments and segments[-1] != "..":
            segments.pop()
        elif not rooted:
            segments.append("..")
    joined = "/".join(segments)
    if rooted:
        return "/" + joined
    return joined or "."


def file_path(text: str) -> str:
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
    except ValueError:  # a malformed authority (an unclosed IPv6 bracket, a bad port)
        raise ValueError("the URI does not parse") from None
    if parts.scheme not in ("", "file"):
        return ""
    if host not in _LOCAL_HOSTS:
        raise ValueError("a file URI naming another host is not a local path")
    path = unquote(parts.path)
    if "\x00" in path:
        raise ValueError("the path holds U+0000")
    return clean_path(path)
