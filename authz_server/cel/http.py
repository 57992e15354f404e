"""Kyverno's ``http`` library and types, for policies with ``spec.evaluation.mode: HTTP``.

``object`` is an ``http.CheckRequest`` whose ``attributes`` describe the HTTP request being
authorized, with Kyverno's field names: ``method``, ``header`` and ``query`` (each name to the
list of its values), ``host``, ``protocol``, ``contentLength``, ``body`` (bytes), ``scheme``,
``path`` (decoded, without the query) and ``fragment``. Header names are in Go's canonical form
(``X-Gateway``), as Kyverno's policies index them; ``attributes.Header(name)`` finds one by any
spelling and ``attributes.QueryParam(name)`` reads one query parameter, each an empty list when
absent. A validation answers ``http.Allowed().Response()`` or ``http.Denied(reason).Response()``
(an ``http.CheckResponse``), or null.

The types are Kyverno's Go structs declared as protobuf messages in the default descriptor pool
(built in code, like :mod:`authz_server.cel.identity`), so a misspelt field is a load error.
``http.CheckResponse`` has one field Kyverno's has not, ``approval``: what
``approval.Require(reason)`` answers in this mode (a person must approve the call first).

cel-expr-python 0.1.3 never frees the Python objects it makes for the arguments of a call into
Python, and a member call's receiver is an argument: ``object.attributes.Header("foo")`` would
leak the whole request, body included, on every evaluation. :func:`rewrite` therefore turns
these calls into CEL that makes no call into Python (``.header[?"Foo"].orValue([])``), and the
response builders into message literals; the policy is still compiled and reported on as written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory, struct_pb2

from authz_server.cel.tokens import Token, call_at, selected, string_literal, text_at, tokens

PACKAGE = "http"
REQUEST_TYPE = "http.CheckRequest"
ATTRIBUTES_TYPE = "http.CheckRequestAttributes"
RESPONSE_TYPE = "http.CheckResponse"
OK_TYPE = "http.CheckResponseOk"
DENIED_TYPE = "http.CheckResponseDenied"
APPROVAL_TYPE = "http.CheckResponseApproval"

# Registers google.protobuf.Empty in the pool the runtime reads (see functions()).
_EMPTY = empty_pb2.Empty

_F = descriptor_pb2.FieldDescriptorProto
_O, _R = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_LIST = ".google.protobuf.ListValue"
# message -> fields (name, type, message type); Kyverno's ``cel:`` names, in its order.
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, str], ...]], ...] = (
    (
        "CheckRequestAttributes",
        (
            ("method", _F.TYPE_STRING, ""),
            ("header", _F.TYPE_MESSAGE, ".http.CheckRequestAttributes.HeaderEntry"),
            ("host", _F.TYPE_STRING, ""),
            ("protocol", _F.TYPE_STRING, ""),
            ("contentLength", _F.TYPE_INT64, ""),
            ("body", _F.TYPE_BYTES, ""),
            ("scheme", _F.TYPE_STRING, ""),
            ("path", _F.TYPE_STRING, ""),
            ("query", _F.TYPE_MESSAGE, ".http.CheckRequestAttributes.QueryEntry"),
            ("fragment", _F.TYPE_STRING, ""),
        ),
    ),
    ("CheckRequest", (("attributes", _F.TYPE_MESSAGE, ".http.CheckRequestAttributes"),)),
    ("CheckResponseOk", ()),
    ("CheckResponseDenied", (("reason", _F.TYPE_STRING, ""),)),
    ("CheckResponseApproval", (("reason", _F.TYPE_STRING, ""),)),
    (
        "CheckResponse",
        (
            ("ok", _F.TYPE_MESSAGE, ".http.CheckResponseOk"),
            ("denied", _F.TYPE_MESSAGE, ".http.CheckResponseDenied"),
            ("approval", _F.TYPE_MESSAGE, ".http.CheckResponseApproval"),
        ),
    ),
)
_MAPS = (("header", "HeaderEntry"), ("query", "QueryEntry"))


@functools.cache
def _register() -> None:
    """Declare the types in the default pool (once; a second import finds them there)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(REQUEST_TYPE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto(
        name="authz_server/v1/http.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[struct_pb2.DESCRIPTOR.name],
    )
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for number, (field_name, kind, type_name) in enumerate(fields, start=1):
            repeated = type_name.endswith("Entry")
            field = message.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=_R if repeated else _O,
                json_name=field_name,
            )
            if type_name:
                field.type_name = type_name
        if name == "CheckRequestAttributes":
            for _, entry_name in _MAPS:
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_O)
                entry.field.add(
                    name="value", number=2, type=_F.TYPE_MESSAGE, label=_O, type_name=_LIST
                )
    pool.Add(file)


def message_class(name: str) -> Any:
    """The generated class of one of the library's types (``http.CheckRequest`` ...)."""
    _register()
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))


# -- Building the request object (the HTTP authorizer's adapter calls this) -------------------

_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def canonical_header_key(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``x-gateway`` -> ``X-Gateway``. A name with a
    character outside an HTTP token is returned unchanged, as Go does."""
    if not _TOKEN_CHARS.fullmatch(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def request_message(
    *,
    method: str,
    headers: Iterable[tuple[str, str]],
    host: str,
    protocol: str,
    body: bytes,
    scheme: str,
    path: str,
    query: Iterable[tuple[str, str]],
    fragment: str = "",
) -> Any:
    """``object`` for one HTTP request. ``headers`` are the request's lines in order (a name
    may repeat; each line is one value); ``query`` its decoded parameters, in order."""
    request = message_class(REQUEST_TYPE)()
    attributes = request.attributes
    attributes.method = method
    attributes.host = host
    attributes.protocol = protocol
    attributes.contentLength = len(body)
    attributes.body = body
    attributes.scheme = scheme
    attributes.path = path
    attributes.fragment = fragment
    for name, value in headers:
        attributes.header[canonical_header_key(name)].values.add(string_value=value)
    for name, value in query:
        attributes.query[name].values.add(string_value=value)
    return request


# -- The library's functions --------------------------------------------------------------------


def allowed() -> Any:
    return message_class(OK_TYPE)()


def denied(reason: str) -> Any:
    return message_class(DENIED_TYPE)(reason=reason)


def response(answer: Any) -> Any:
    """``.Response()`` of an Ok or a Denied (the runtime hands either as the same kind)."""
    result = message_class(RESPONSE_TYPE)()
    if answer.DESCRIPTOR.full_name == DENIED_TYPE:
        result.denied.reason = answer.reason
    else:
        result.ok.SetInParent()
    return result


def require_approval(reason: str) -> Any:
    """``approval.Require(reason)`` in HTTP mode."""
    result = message_class(RESPONSE_TYPE)()
    result.approval.reason = reason
    return result


def _values(entries: Mapping[str, Any], key: str) -> list[str]:
    found = entries.get(key)
    return [] if found is None else [str(v) for v in found]


def header(attributes: Any, name: str) -> list[str]:
    # Not reached by a loaded policy (rewrite() replaces the call); kept for any left in place.
    return _values(attributes.header, canonical_header_key(name))


def query_param(attributes: Any, name: str) -> list[str]:
    return _values(attributes.query, name)


_T = cel.Type
_RESPONSE = _T(RESPONSE_TYPE)
_OK = _T(OK_TYPE)
_DENIED = _T(DENIED_TYPE)
_ATTRIBUTES = _T(ATTRIBUTES_TYPE)
_CARRIER = _T("google.protobuf.Empty")
_STRINGS = _T.List(_T.STRING)
CANONICAL = "http.CanonicalHeaderKey"


def _member_function(name: str, overload: str, impl: Any) -> cel.FunctionDecl:
    parameters = [_ATTRIBUTES, _T.STRING]
    return cel.FunctionDecl(
        name, [cel.Overload(overload, _STRINGS, parameters, is_member=True, impl=impl)]
    )


def _member_function(name: str, overload: str, impl: Any) -> cel.FunctionDecl:
    parameters = [_ATTRIBUTES, _T.STRING]
    return cel.FunctionDecl(
        name, [cel.Overload(overload, _STRINGS, parameters, is_member=True, impl=impl)]
    )


def functions() -> list[cel.FunctionDecl]:
    _register()
    s = _T.STRING
    return [
        cel.FunctionDecl("http.Allowed", [cel.Overload("http_allowed", _OK, [], impl=allowed)]),
        cel.FunctionDecl(
            "http.Denied", [cel.Overload("http_denied_string", _DENIED, [s], impl=denied)]
        ),
        # As in the envoy library: the runtime tells overloads apart by value kind only, so the
        # typed overloads carry no implementation and one on a receiver no policy builds
        # (google.protobuf.Empty) serves both.
        cel.FunctionDecl(
            "Response",
            [
                cel.Overload("http_ok_response", _RESPONSE, [_OK], is_member=True),
                cel.Overload("http_denied_response", _RESPONSE, [_DENIED], is_member=True),
                cel.Overload(
                    "http_any_response", _RESPONSE, [_CARRIER], is_member=True, impl=response
                ),
            ],
        ),
        _member_function("Header", "http_attributes_header", header),
        _member_function("QueryParam", "http_attributes_query_param", query_param),
        cel.FunctionDecl(
            CANONICAL,
            [cel.Overload("http_canonical_header_key", s, [s], impl=canonical_header_key)],
        ),
        cel.FunctionDecl(
            "approval.Require",
            [cel.Overload("http_approval_require", _RESPONSE, [s], impl=require_approval)],
        ),
    ]


def variables() -> dict[str, cel.Type]:
    _register()
    return {"object": _T(REQUEST_TYPE)}


# -- Rewriting calls that would pass the request into Python ------------------------------------

_MEMBERS = {"Header": "header", "QueryParam": "query"}
_LITERAL_OK = f"{RESPONSE_TYPE}{{ok: {OK_TYPE}{{}}}}"


def rewrite(source: str) -> str:
    """``source`` with ``X.Header(name)``, ``X.QueryParam(name)``, ``http.Allowed().Response()``
    and ``http.Denied(reason).Response()`` replaced by CEL that computes the same value without
    calling into Python (see the module docstring). Only meaningful for an expression that
    type-checked in the HTTP environment, where these names mean nothing else."""
    toks = tokens(source)
    pieces: list[str] = []
    position = 0
    i = 0
    while i < len(toks):
        replaced = _member(source, toks, i) or _builder(source, toks, i)
        if replaced is None:
            i += 1
            continue
        first, last, text = replaced
        pieces += [source[position : toks[first].start], text]
        position = toks[last].end
        i = last + 1
    pieces.append(source[position:])
    return "".join(pieces)


def _member(source: str, toks: list[Token], i: int) -> tuple[int, int, str] | None:
    """``.Header(arg)`` at token ``i`` (the dot) -> ``.header[?key].orValue([])``."""
    field = _MEMBERS.get(text_at(toks, i + 1))
    if text_at(toks, i) != "." or field is None:
        return None
    call = call_at(toks, i + 2)
    if call is None or len(call.arguments) != 1:
        return None
    first, last = call.arguments[0]
    argument = source[toks[first].start : toks[last].end]
    if field == "header":
        token = toks[first]
        if first == last and token.kind == "string" and token.text[:1] in "\"'":
            key = _string_value(token.text)
            argument = string_literal(canonical_header_key(key)) if key is not None else ""
        else:
            argument = ""
        if not argument:
            argument = f"{CANONICAL}({rewrite(source[toks[first].start : toks[last].end])}\n)"
    else:
        argument = f"({rewrite(argument)}\n)"
    return i, call.end, f".{field}[?{argument}].orValue([])"


def _builder(source: str, toks: list[Token], i: int) -> tuple[int, int, str] | None:
    """``http.Allowed().Response()`` / ``http.Denied(r).Response()`` -> a message literal."""
    if text_at(toks, i) != PACKAGE or selected(toks, i) or text_at(toks, i + 1) != ".":
        return None
    name = text_at(toks, i + 2)
    if name not in ("Allowed", "Denied"):
        return None
    call = call_at(toks, i + 3)
    if (
        call is None
        or text_at(toks, call.end + 1) != "."
        or (text_at(toks, call.end + 2) != "Response")
    ):
        return None
    closing = call_at(toks, call.end + 3)
    if closing is None or closing.arguments:
        return None
    if name == "Allowed":
        if call.arguments:
            return None
        return i, closing.end, f"({_LITERAL_OK})"
    if len(call.arguments) != 1:
        return None
    first, last = call.arguments[0]
    reason = rewrite(source[toks[first].start : toks[last].end])
    return i, closing.end, f"({RESPONSE_TYPE}{{denied: {DENIED_TYPE}{{reason: ({reason}\n)}}}})"


_ESCAPES = re.compile(r"\\(.)", re.S)


def _string_value(text: str) -> str | None:
    """The value of a plain (not raw, not triple-quoted) string literal without escapes other
    than quotes and backslashes; None for anything else (left to the runtime)."""
    if len(text) < 2 or text[0] != text[-1] or text[:3] in ('"""', "'''"):
        return None
    body = text[1:-1]
    if "\\" in body and any(m.group(1) not in "\"'\\" for m in _ESCAPES.finditer(body)):
        return None
    return _ESCAPES.sub(r"\1", body)


def response_kind(result: Any) -> str:
    """What a validation's ``http.CheckResponse`` says: ``approval``, ``denied`` (also when both
    ok and denied are set: in doubt, deny) or ``ok``; ``denied`` for one with neither, as
    Kyverno's default output answers 403 for it."""
    if result.HasField("approval"):
        return "approval"
    if result.HasField("ok") and not result.HasField("denied"):
        return "ok"
    return "denied"
