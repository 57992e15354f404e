"""Take calls into Python functions out of the fast path's CEL program.

cel-expr-python 0.1.3 never frees the Python objects it creates for the arguments and the result
of a call from CEL into a Python function: ``jwt.Decode(token, key)`` leaks the token string on
every check, ``mcp.GetBoolArgument("force", false)`` its key and result. Values passed in
through an activation, and evaluation results read back, are freed. So the fast path
(:mod:`authz_server.policy.combined`) hoists such calls out of its program:

* a call is hoisted when its function is one of the namespaced Python functions below and its
  arguments read nothing but the request (``object``, ``mcp``, the named constants) and call no
  Python function: they compile in :func:`~authz_server.cel.env.pure_env`, which declares no
  library function and none of the program's local names (``variables``, comprehension
  variables);
* each distinct hoisted call becomes a variable ``authz_hN`` of the call's type, in place of the
  call in the program's source;
* per request, before the program runs, the arguments are computed: once at load when they are
  constant, otherwise by one "prelude" CEL program returning them as lists (a result, so freed);
  the Python function is then called from Python and its result bound as ``authz_hN``.

``jwks.Fetch("url")`` reads the keys fetched last for its URL: its constant argument is computed
once, but the call is made on every request like any other, so a rotated key set is seen at once.
``jwt.Decode(token, jwks.Fetch("url"))`` is hoisted as one call taking the token and the URL
(:func:`~authz_server.cel.jwt.decode_with_fetched_keys_shared`), which never builds the set's CEL
map; a ``jwks.Fetch`` elsewhere in an argument keeps the enclosing call in CEL.

Exactness. The functions are pure (``jwt.Decode`` reads the clock, ``jwks.Fetch`` the current
keys, microseconds earlier), so a bound ``authz_hN`` is the value the call would have returned,
whether or not the program reaches it. A call that raises, or whose arguments fail, leaves
``authz_hN`` unbound: where the program reads it, that is a CEL error exactly where the call
would have been one (the fast path then hands the request to the reference path, which gives
Kyverno's answer); where it does not, the call was in a branch not taken and its failure did not
matter.

Calls that stay in CEL (and leak): member calls (getters on ``mcp.Parse(...)``; ``envoy``
builder chains are folded into message literals instead, :mod:`authz_server.cel.fold`), calls
whose arguments read a variable or another Python call, and everything in a bucket that rebinds
``mcp`` (combined.py keeps the member getters there).
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor

from authz_server.cel import ast
from authz_server.cel import json as json_lib
from authz_server.cel import jwt as jwt_lib
from authz_server.cel import mcp as mcp_lib
from authz_server.cel import uri as uri_lib
from authz_server.cel.analysis import CostLimits, referenced_names
from authz_server.cel.env import (
    ENVOY,
    OBJECT,
    Program,
    activation,
    base_variables,
    compile_expression,
    constants,
    evaluate,
    fast_env,
    fast_env_with,
    pure_env,
    strings_env,
)
from authz_server.cel.errors import CelCompileError, CelError
from authz_server.cel.fold import tokens
from authz_server.cel.mcp import VARIABLE as MCP
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2
from authz_server.frozen import freeze, thaw

log = logging.getLogger(__name__)

PREFIX = "authz_h"
PATH_PREFIX = "authz_p"
_REQUEST = external_auth_pb2.CheckRequest.DESCRIPTOR
_NAMESPACES = frozenset({"jwt", "jwks", "json", "mcp", "uri"})
_ERROR = cel.Type.ERROR


@functools.cache
def implementations() -> Mapping[str, tuple[Callable[..., Any], bool]]:
    """The Python implementation of each hoistable overload, by overload id, and whether it
    takes the view of the message being judged before the call's arguments."""
    functions: dict[str, tuple[Callable[..., Any], bool]] = {
        # The shared token messages: the result goes straight into the CEL runtime, which copies.
        "jwt_decode_string_key": (jwt_lib.decode_with_secret_shared, False),
        "jwt_decode_jwk_set": (jwt_lib.decode_with_keys_shared, False),
        "jwks_parse_string": (jwt_lib.parse_keys, False),
        "jwks_fetch_string": (jwt_lib.fetch_keys, False),
        "json_unmarshal_string": (json_lib.unmarshal, False),
        "mcp_parse_string": (mcp_lib.parse, False),
        "mcp_parse_bytes": (mcp_lib.parse, False),
        "uri_clean_path_string": (uri_lib.clean_path, False),
        "uri_file_path_string": (uri_lib.file_path, False),
    }
    for overload, getter in mcp_lib.view_getters().items():
        functions[overload] = (getter, True)
    return MappingProxyType(functions)


@dataclass(frozen=True, slots=True)
class _Call:
    """One hoisted call: the variable its result is bound to, the function, and its arguments
    when they are constant (None: they come from the prelude)."""

    name: str
    function: Callable[..., Any]
    arguments: tuple[Any, ...] | None
    takes_view: bool = False


class _Prelude:
    """Computes the argument lists of the calls whose arguments read the request: one CEL
    program for all of them, and one per call to tell which failed when the whole list does."""

    __slots__ = ("calls", "constants", "each", "program", "reads")

    def __init__(
        self,
        calls: tuple[_Call, ...],
        program: Program,
        each: tuple[Program, ...],
        declared: Mapping[str, Any],
    ):
        self.calls = calls
        self.program = program
        self.each = each
        values = constants()
        reads = referenced_names(ast.parse(program.expression.serialize()), {**declared, **values})
        # The variables the arguments read, and the values of the named constants among them.
        self.reads = tuple(sorted(name for name in reads if name not in values))
        self.constants = {name: values[name] for name in reads if name in values}

    def arguments(self, data: Mapping[str, Any]) -> list[Any]:
        """Per call its argument list, or None when the arguments failed."""
        bound = dict(self.constants)
        for name in self.reads:
            if name in data:
                bound[name] = data[name]
        act = self.program.env.Activation(bound)
        value = self.program.expression.eval(act)
        if value.type() != _ERROR:
            return list(value.plain_value())
        if len(self.calls) == 1:
            return [None]
        results = [program.expression.eval(act) for program in self.each]
        return [None if v.type() == _ERROR else v.plain_value() for v in results]


class _Paths(_Prelude):
    """A prelude whose reads of ``object`` were replaced at load by plain string variables.

    Handing the CEL runtime the CheckRequest costs ~6 us per activation (it is converted whole),
    a prelude more than the call it replaces; a header or a string field read from Python costs
    well under one. And the arguments are then a pure function of a few strings: memoized.
    A header that is absent is left unbound, an error where read, as the missing key is.
    """

    __slots__ = ("_memo", "_paths", "_readers")

    def __init__(
        self,
        calls: tuple[_Call, ...],
        program: Program,
        each: tuple[Program, ...],
        paths: Mapping[str, _Path],
    ):
        super().__init__(calls, program, each, paths)
        self._paths = tuple(paths.items())
        self._readers = tuple(path.reader() for path in paths.values())
        # Memoized argument lists are shared by every request with the same strings: frozen
        # (tuples), and thawed by _invoke only where a container must reach a function.
        self._memo = functools.lru_cache(maxsize=MEMO_SIZE)(self._compute_frozen)

    def arguments(self, data: Mapping[str, Any]) -> Sequence[Any]:
        request = data[OBJECT]
        values = tuple([read(request) for read in self._readers])
        size = 0
        for value in values:
            size += len(value) if value is not None else 0
        return self._compute(values) if size > MAX_MEMO_TEXT else self._memo(values)

    def _compute(self, values: tuple[str | None, ...]) -> list[Any]:
        data = {name: v for (name, _), v in zip(self._paths, values, strict=True) if v is not None}
        return super().arguments(data)

    def _compute_frozen(self, values: tuple[str | None, ...]) -> tuple[Any, ...]:
        return freeze(self._compute(values))  # type: ignore[no-any-return]


# Requests that differ only in what the prelude does not read (most of them: an agent sends the
# same token until it expires) share one entry; long values bypass it to bound its memory.
MEMO_SIZE = 256
MAX_MEMO_TEXT = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Path:
    """A string in the CheckRequest: a field path, and a key when the field is a string map."""

    fields: tuple[str, ...]
    key: str | None

    def reader(self) -> Callable[[Any], str | None]:
        """A function reading the path from a CheckRequest (None: the key is absent)."""
        field = operator.attrgetter(".".join(self.fields))
        key = self.key
        if key is None:
            return lambda request: str(field(request))
        return lambda request: field(request).get(key)


class Hoisted:
    """A program whose hoisted calls must be bound (:meth:`bind`) before each evaluation."""

    __slots__ = ("_fixed", "_prelude", "program")

    def __init__(self, program: Program, fixed: tuple[_Call, ...], prelude: _Prelude | None):
        self.program = program
        self._fixed = fixed
        self._prelude = prelude

    def bind(self, data: dict[str, Any], failures: dict[str, str] | None = None) -> None:
        """Add the hoisted calls' results to ``data`` (the request already in it), leaving out
        those that failed; ``failures`` gets the error text of each call that raised, by the
        name it would have been bound to (a call whose arguments failed is not made)."""
        for call in self._fixed:
            _invoke(call, call.arguments or (), data, failures)
        if self._prelude is None:
            return
        prelude = self._prelude
        for call, arguments in zip(prelude.calls, prelude.arguments(data), strict=True):
            if arguments is not None:
                _invoke(call, arguments, data, failures)


_SCALAR_TYPES = frozenset({str, int, float, bool, bytes, type(None)})


def _invoke(
    call: _Call, arguments: Sequence[Any], data: dict[str, Any], failures: dict[str, str] | None
) -> None:
    for argument in arguments:
        if type(argument) not in _SCALAR_TYPES:  # from the memo: a function gets its own copy
            arguments = thaw(arguments)
            break
    try:
        if call.takes_view:
            data[call.name] = call.function(data[MCP], *arguments)
        else:
            data[call.name] = call.function(*arguments)
    except Exception as exc:  # left unbound: an error where the program reads it
        if failures is not None:
            failures[call.name] = str(exc)


@dataclass(frozen=True, slots=True)
class _Site:
    """A hoistable call found in the source: token span, the call's text and its arguments."""

    start: int
    end: int
    text: str
    arguments: str


def hoist(
    source: str,
    program: Program,
    limits: CostLimits,
    variables: Mapping[str, cel.Type] | None = None,
    mode: str = ENVOY,
) -> Hoisted | None:
    """``program`` (compiled from ``source`` in the fast environment of ``mode``, plus the
    declarations ``variables``) with its hoistable calls taken out, or None when it has none
    (or, unexpectedly, the rewrite does not compile)."""
    locals_ = _local_names(ast.parse(program.expression.serialize()))
    if any(name.startswith(PREFIX) for name in locals_):
        return None
    plans: dict[str, tuple[str, cel.Type, _Call, str]] = {}
    pieces: list[str] = []
    position = 0
    for site in _sites(source, locals_):
        if site.start < position:
            continue  # inside a call already hoisted
        planned = plans.get(_key(site.text))
        if planned is None:
            planned = _plan(site, f"{PREFIX}{len(plans)}", mode)
            if planned is None:
                continue
            plans[_key(site.text)] = planned
        pieces += [source[position : site.start], planned[0]]
        position = site.end
    if not plans:
        return None
    pieces.append(source[position:])
    return _assemble("".join(pieces), list(plans.values()), limits, variables or {}, mode)


def _assemble(
    source: str,
    plans: list[tuple[str, cel.Type, _Call, str]],
    limits: CostLimits,
    variables: Mapping[str, cel.Type],
    mode: str,
) -> Hoisted | None:
    declared = {**variables, **{name: kind for name, kind, _, _ in plans}}
    try:
        program = compile_expression(fast_env_with(declared, mode), source, limits)
        fixed = tuple(call for _, _, call, _ in plans if call.arguments is not None)
        dynamic = [(call, arguments) for _, _, call, arguments in plans if call.arguments is None]
        prelude = _prelude(dynamic, mode) if dynamic else None
    except CelCompileError as exc:
        log.warning("fast path: calls not hoisted, the rewrite does not compile: %s", exc)
        return None
    return Hoisted(program, fixed, prelude)


def _prelude(dynamic: list[tuple[_Call, str]], mode: str) -> _Prelude:
    calls = tuple(c for c, _ in dynamic)
    texts = [f"[{a}\n]" for _, a in dynamic]
    env = pure_env(mode)
    each = tuple(compile_expression(env, t) for t in texts)
    program = compile_expression(env, "[" + ", ".join(texts) + "]")
    generic = _Prelude(calls, program, each, base_variables(mode))
    # The string paths are Envoy's CheckRequest's; HTTP mode's request is handed over whole.
    if mode != ENVOY or OBJECT in _local_names(ast.parse(program.expression.serialize())):
        return generic
    return _strings_prelude(calls, texts) or generic


def _strings_prelude(calls: tuple[_Call, ...], texts: list[str]) -> _Paths | None:
    """The prelude over strings read from the request, when that is all it reads."""
    paths: dict[_Path, str] = {}
    rewritten = [_rewrite_paths(t, paths) for t in texts]
    sources = [t for t in rewritten if t is not None]
    if not paths or len(sources) < len(texts):
        return None
    declared = {name: path for path, name in paths.items()}
    env = strings_env(declared)
    try:
        program = compile_expression(env, "[" + ", ".join(sources) + "]")
        each = tuple(compile_expression(env, t) for t in sources)
    except CelCompileError:
        return None  # the arguments read the request in another way too (``mcp``)
    return _Paths(calls, program, each, declared)


def _rewrite_paths(text: str, paths: dict[_Path, str]) -> str | None:
    """``text`` with each string it reads from ``object`` replaced by a variable (named in
    ``paths``, added to as needed); None when it reads ``object`` in another way."""
    toks = tokens(text)
    pieces: list[str] = []
    position = 0
    for i, token in enumerate(toks):
        if token.text != OBJECT or token.kind != "ident" or _selected(toks, i):
            continue
        found = _path_at(toks, i)
        if found is None:
            return None
        path, end = found
        name = paths.setdefault(path, f"{PATH_PREFIX}{len(paths)}")
        pieces += [text[position : token.start], name]
        position = toks[end].end
    pieces.append(text[position:])
    return "".join(pieces)


def _path_at(toks: Sequence[Any], i: int) -> tuple[_Path, int] | None:
    """The path ``object.f.g`` (a string field) or ``object.f.g["key"]`` (an entry of a string
    map) starting at token ``i``, and its last token; None for any other use of ``object``."""
    message: Any = _REQUEST
    fields: list[str] = []
    field: Any = None
    end = i
    while message is not None and _text(toks, end + 1) == "." and _text(toks, end + 3) != "(":
        field = message.fields_by_name.get(_text(toks, end + 2))
        if field is None:
            return None
        fields.append(field.name)
        end += 2
        if _is_string_map(field):
            key = _plain_string(toks, end + 2) if _text(toks, end + 1) == "[" else None
            if key is None or _text(toks, end + 3) != "]":
                return None
            return _Path(tuple(fields), key), end + 3
        if _is_repeated(field):
            return None
        message = field.message_type
    if message is not None or field.type != descriptor.FieldDescriptor.TYPE_STRING:
        return None
    return _Path(tuple(fields), None), end


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # newer protobuf; ``label`` is deprecated
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == descriptor.FieldDescriptor.LABEL_REPEATED)


def _is_string_map(field: Any) -> bool:
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return False
    string = descriptor.FieldDescriptor.TYPE_STRING
    return all(entry.fields_by_name[f].type == string for f in ("key", "value"))


def _plain_string(toks: Sequence[Any], i: int) -> str | None:
    """The value of a quoted string literal without escapes or prefix at token ``i``."""
    text = _text(toks, i)
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0] or "\\" in text:
        return None
    if text.startswith(text[0] * 3):
        return None
    return text[1:-1]


def _text(toks: Sequence[Any], i: int) -> str:
    return toks[i].text if i < len(toks) else ""


def _plan(site: _Site, name: str, mode: str) -> tuple[str, cel.Type, _Call, str] | None:
    """(variable, its type, the call, its argument list's source) for a hoistable site."""
    try:
        call = compile_expression(fast_env(mode), site.text)
    except CelCompileError:
        return None  # reads a local name
    checked = ast.parse(call.expression.serialize())
    overloads = checked.overloads.get(checked.root.id, ())
    if ast.kind_of(checked.root) != "call_expr" or len(overloads) != 1:
        return None
    implementation = implementations().get(overloads[0])
    if implementation is None:
        return None
    function, takes_view = implementation
    text = site.arguments
    if overloads[0] == "jwt_decode_jwk_set":
        fetched = _fetched_keys_argument(text)
        if fetched is not None:  # jwt.Decode(token, jwks.Fetch("url")) -> f(token, "url")
            function, text = jwt_lib.decode_with_fetched_keys_shared, fetched
    try:
        arguments = compile_expression(pure_env(mode), f"[{text}\n]")
    except CelCompileError:
        return None  # reads a local name or calls Python in its arguments
    fixed = _constant_arguments(arguments)
    return name, call.result_type, _Call(name, function, fixed, takes_view), text


def _fetched_keys_argument(arguments: str) -> str | None:
    """``arguments`` with its last one, when that is ``jwks.Fetch(<string literal>)``, replaced
    by the literal; None otherwise."""
    toks = tokens(arguments)
    depth = 0
    last = 0  # the index of the last argument's first token
    for i, token in enumerate(toks):
        if token.kind != "punct":
            continue
        if token.text in "([{":
            depth += 1
        elif token.text in ")]}":
            depth -= 1
        elif token.text == "," and depth == 0:
            last = i + 1
    tail = toks[last:]
    shape = [t.text for t in tail[:4]] + [t.kind for t in tail[4:5]] + [t.text for t in tail[5:]]
    if shape != ["jwks", ".", "Fetch", "(", "string", ")"]:
        return None
    return arguments[: tail[0].start] + tail[4].text


def _constant_arguments(arguments: Program) -> tuple[Any, ...] | None:
    if not arguments.constant:
        return None
    try:
        return tuple(evaluate(arguments, activation({}, arguments.env)))
    except CelError:
        return None  # fails every time: leave it to the prelude, where it stays unbound


def _key(text: str) -> str:
    return " ".join(t.text for t in tokens(text))


def _local_names(checked: ast.Checked) -> frozenset[str]:
    """Names a comprehension or ``cel.bind`` declares anywhere in the expression."""
    names = set()
    for node in ast.walk(checked.root):
        if ast.kind_of(node) == "comprehension_expr":
            c = node.comprehension_expr
            names |= {c.iter_var, c.iter_var2, c.accu_var}
    return frozenset(names - {""})


def _sites(source: str, locals_: frozenset[str]) -> Iterator[_Site]:
    """Calls ``ns.Name(...)`` of a library namespace, outermost first, that mention no local
    name (where a local hides a global, the text alone cannot tell which one it reads)."""
    toks = tokens(source)
    i = 0
    while i < len(toks):
        end = _call_end(toks, i)
        if end is not None and not any(
            t.kind == "ident" and t.text in locals_ for t in toks[i : end + 1]
        ):
            yield _Site(
                toks[i].start,
                toks[end].end,
                source[toks[i].start : toks[end].end],
                source[toks[i + 3].end : toks[end].start],
            )
        i += 1


def _call_end(toks: Sequence[Any], i: int) -> int | None:
    """The index of the ``)`` closing a namespaced call starting at token ``i``."""
    if not (
        toks[i].kind == "ident"
        and toks[i].text in _NAMESPACES
        and i + 3 < len(toks)
        and toks[i + 1].text == "."
        and toks[i + 2].kind == "ident"
        and toks[i + 3].text == "("
        and not _selected(toks, i)
    ):
        return None
    depth = 0
    for j in range(i + 3, len(toks)):
        if toks[j].kind != "punct":
            continue
        if toks[j].text == "(":
            depth += 1
        elif toks[j].text == ")":
            depth -= 1
            if depth == 0:
                return j
    return None


def _selected(toks: Sequence[Any], i: int) -> bool:
    """Whether token ``i`` is a field name (``x.jwt``, ``x.?jwt``), not a namespace."""
    before = toks[i - 1].text if i > 0 else ""
    return before == "." or (before == "?" and i > 1 and toks[i - 2].text == ".")
