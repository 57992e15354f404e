"""Kyverno's ``mcp`` library, plus the request's MCP message bound as ``mcp``.

``mcp`` is a map-typed variable holding Kyverno's MCPRequest view of the message being judged
(``mcp.Method``, ``mcp.ToolCall.Name`` ...; ``Method`` is ``""`` when the request carries no MCP
message). The library's names hang off the same identifier: ``mcp.Parse(body)`` is a namespaced
function, the method constants (``mcp.ToolsCallMethod``) are string variables with qualified
names, and the argument getters are member functions on any view, so
``mcp.GetStringArgument("k", "")`` and ``mcp.Parse(body).GetStringArgument("k", "")`` both work.
The parsing and conversion rules themselves live in :mod:`authz_server.mcp.kyverno`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from cel_expr_python import cel

VARIABLE = "mcp"

# Fields of the view and of its sub-objects; the loader rejects other names at load time so a
# typo such as ``mcp.ToolCall.name`` is a load error rather than a runtime "no such key".
FIELDS: Mapping[str, frozenset[str] | None] = {
    "Method": None,
    "ID": None,
    "Paginated": frozenset({"Cursor"}),
    "Initialize": frozenset({"ProtocolVersion", "Capabilities", "ClientInfo"}),
    "ResourceRead": frozenset({"URI", "Arguments"}),
    "ToolCall": frozenset({"Name", "Arguments", "Meta"}),
    "PromptGet": frozenset({"Name", "Arguments"}),
    "SetLogLevel": frozenset({"Level"}),
    "Elicitation": frozenset({"Message", "RequestedSchema"}),
}


def _kyverno() -> Any:
    # Imported on first use: the decoder package is a sibling stage and may evolve separately.
    from authz_server.mcp import kyverno

    return kyverno


def constants() -> dict[str, str]:
    """The method constants, keyed by their qualified CEL names (``mcp.ToolsCallMethod``)."""
    return {f"{VARIABLE}.{name}": value for name, value in _kyverno().METHODS.items()}


def empty_view() -> dict[str, Any]:
    """The binding for a request without an MCP message."""
    return dict(_kyverno().EMPTY_VIEW)


def parse(body: str | bytes | bytearray) -> dict[str, Any]:
    kyverno = _kyverno()
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    try:
        return dict(kyverno.parse(text))
    except kyverno.KyvernoParseError as exc:
        raise ValueError(f"mcp.Parse: {exc}") from None


# The view of the message being judged, for the fast path's getters (see request_functions).
CURRENT_VIEW: ContextVar[Mapping[str, Any] | None] = ContextVar("mcp_current_view", default=None)


@contextmanager
def current_view(view: Mapping[str, Any]) -> Iterator[None]:
    """Bind ``view`` as the message the request getters read, for one evaluation."""
    token = CURRENT_VIEW.set(view)
    try:
        yield
    finally:
        CURRENT_VIEW.reset(token)


def _getter(name: str) -> Any:
    def impl(view: Mapping[str, Any], key: str, default: Any) -> Any:
        return getattr(_kyverno(), name)(view, key, default)

    impl.__name__ = name
    return impl


_GETTERS = (
    ("GetStringArgument", "get_string_argument", cel.Type.STRING),
    ("GetIntArgument", "get_int_argument", cel.Type.INT),
    ("GetFloatArgument", "get_float_argument", cel.Type.DOUBLE),
    ("GetBoolArgument", "get_bool_argument", cel.Type.BOOL),
    ("GetStringSliceArgument", "get_string_slice_argument", cel.Type.List(cel.Type.STRING)),
    ("GetIntSliceArgument", "get_int_slice_argument", cel.Type.List(cel.Type.INT)),
    ("GetFloatSliceArgument", "get_float_slice_argument", cel.Type.List(cel.Type.DOUBLE)),
    ("GetBoolSliceArgument", "get_bool_slice_argument", cel.Type.List(cel.Type.BOOL)),
    # Not Kyverno's: string arguments cleaned as filesystem paths (authz_server.mcp.paths).
    ("GetPathArgument", "get_path_argument", cel.Type.STRING),
    ("GetPathSliceArgument", "get_path_slice_argument", cel.Type.List(cel.Type.STRING)),
)


def _request_getter(name: str) -> Any:
    get = CURRENT_VIEW.get
    resolved: list[Any] = []  # the kyverno function, looked up on first use (see _kyverno)

    def impl(key: str, default: Any) -> Any:
        view = get()
        if view is None:
            raise ValueError(f"mcp.{name}: no MCP message is being judged")
        if not resolved:
            resolved.append(getattr(_kyverno(), name))
        return resolved[0](view, key, default)

    impl.__name__ = f"request_{name}"
    return impl


def request_functions() -> list[cel.FunctionDecl]:
    """``mcp.GetStringArgument(key, default)`` ... as namespaced functions reading the message
    from :data:`CURRENT_VIEW` instead of their receiver.

    Calling a member function converts its receiver, the whole ``mcp`` map, to Python on every
    call (~8 us); these take only the key and the default. The checker resolves a namespaced
    function before a member call on a variable of the same name, so declaring them turns every
    ``mcp.Get*Argument(k, d)`` into a call that reads the view bound for the evaluation, which
    the caller must bind with :func:`current_view` (the fast path does, for one evaluation).
    That differs from the member call only where a comprehension rebinds the name ``mcp``, which
    the fast path checks for before using an environment with these declarations. Getters on
    another receiver (``mcp.Parse(body).GetStringArgument(...)``) stay member calls.
    """
    decls = []
    for cel_name, py_name, result in _GETTERS:
        decls.append(
            cel.FunctionDecl(
                f"{VARIABLE}.{cel_name}",
                [
                    cel.Overload(
                        _request_overload(py_name),
                        result,
                        [cel.Type.STRING, result],
                        impl=_request_getter(py_name),
                    )
                ],
            )
        )
    return decls


def _request_overload(py_name: str) -> str:
    return f"mcp_current_{py_name}"


def view_getters() -> dict[str, Callable[[Mapping[str, Any], str, Any], Any]]:
    """What each of :func:`request_functions` computes, by overload id, as a function of the
    view: the fast path calls them from Python (:mod:`authz_server.cel.hoist`)."""
    kyverno = _kyverno()
    return {_request_overload(py_name): getattr(kyverno, py_name) for _, py_name, _ in _GETTERS}


def variables() -> dict[str, cel.Type]:
    t = cel.Type
    declared: dict[str, cel.Type] = {VARIABLE: t.Map(t.STRING, t.DYN)}
    declared.update(dict.fromkeys(constants(), t.STRING))
    return declared


def functions() -> list[cel.FunctionDecl]:
    t = cel.Type
    view = t.Map(t.STRING, t.DYN)
    decls = [
        cel.FunctionDecl(
            "mcp.Parse",
            [
                cel.Overload("mcp_parse_string", view, [t.STRING], impl=parse),
                cel.Overload("mcp_parse_bytes", view, [t.BYTES], impl=parse),
            ],
        )
    ]
    for cel_name, py_name, result in _GETTERS:
        decls.append(
            cel.FunctionDecl(
                cel_name,
                [
                    cel.Overload(
                        f"mcp_request_{py_name}",
                        result,
                        [view, t.STRING, result],
                        is_member=True,
                        impl=_getter(py_name),
                    )
                ],
            )
        )
    return decls
