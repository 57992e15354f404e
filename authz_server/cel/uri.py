"""The ``uri`` CEL library: ``uri.CleanPath(path)`` and ``uri.FilePath(uri)``, the path a
filesystem path or a URI names as an MCP server would open it (rules and reasons in
:mod:`authz_server.mcp.paths`). Both are hoisted out of the fast path's program like the other
Python-implemented functions (:mod:`authz_server.cel.hoist`): call them on request data
directly (``uri.FilePath(mcp.ResourceRead.URI)``), not inside a comprehension, or each call
leaks its argument and result (cel-expr-python 0.1.3).
"""

from __future__ import annotations

from cel_expr_python import cel

from authz_server.mcp import paths


def clean_path(path: str) -> str:
    try:
        return paths.clean_path(path)
    except ValueError as exc:
        raise ValueError(f"uri.CleanPath: {exc}") from None


def file_path(text: str) -> str:
    try:
        return paths.file_path(text)
    except ValueError as exc:
        raise ValueError(f"uri.FilePath: {exc}") from None


def functions() -> list[cel.FunctionDecl]:
    string = cel.Type.STRING
    return [
        cel.FunctionDecl(
            "uri.CleanPath",
            [cel.Overload("uri_clean_path_string", string, [string], impl=clean_path)],
        ),
        cel.FunctionDecl(
            "uri.FilePath",
            [cel.Overload("uri_file_path_string", string, [string], impl=file_path)],
        ),
    ]
