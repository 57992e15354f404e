"""The ``identity`` variable: the verified caller as a typed CEL message.

A message type rather than a ``map(string, dyn)`` so that a policy naming a field that does not
exist (``identity.Subjet``) fails to load instead of failing every request at run time, and so
that ``identity.Scopes`` is a ``list(string)`` to the type checker. The type is declared here, in
the default descriptor pool the CEL runtime reads, from a descriptor built in code: it is the
project's own and has no ``.proto`` file to keep in step.

Building a message costs microseconds (the claims become a ``google.protobuf.Struct``), so
:class:`Messages` keeps the messages of recent identity values: the verifier hands out the same
value for a repeated token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

from authz_server.frozen import thaw

VARIABLE = "identity"
TYPE_NAME = "authz_server.v1.Identity"

_F = descriptor_pb2.FieldDescriptorProto
# design.md's fields, in its order (the numbers are this project's; nothing stores them).
_FIELDS: tuple[tuple[str, int, bool], ...] = (
    ("Authenticated", _F.TYPE_BOOL, False),
    ("Method", _F.TYPE_STRING, False),
    ("Issuer", _F.TYPE_STRING, False),
    ("Subject", _F.TYPE_STRING, False),
    ("ClientID", _F.TYPE_STRING, False),
    ("Audiences", _F.TYPE_STRING, True),
    ("Scopes", _F.TYPE_STRING, True),
    ("Claims", _F.TYPE_MESSAGE, False),
    ("Actor", _F.TYPE_STRING, False),
    ("SPIFFEID", _F.TYPE_STRING, False),
    ("CertificateThumbprint", _F.TYPE_STRING, False),
    ("KeyThumbprint", _F.TYPE_STRING, False),
    ("Error", _F.TYPE_STRING, False),
)
CACHE_SIZE = 1024


@functools.cache
def message_class() -> type:
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(TYPE_NAME)
    except KeyError:
        file = descriptor_pb2.FileDescriptorProto(
            name="authz_server/v1/identity.proto",
            package=TYPE_NAME.rpartition(".")[0],
            syntax="proto3",
            dependency=[struct_pb2.DESCRIPTOR.name],
        )
        message = file.message_type.add(name=TYPE_NAME.rpartition(".")[2])
        for number, (name, kind, repeated) in enumerate(_FIELDS, start=1):
            field = message.field.add(
                name=name,
                number=number,
                type=kind,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
                json_name=name,
            )
            if kind == _F.TYPE_MESSAGE:
                field.type_name = ".google.protobuf.Struct"
        pool.Add(file)
        descriptor = pool.FindMessageTypeByName(TYPE_NAME)
    return message_factory.GetMessageClass(descriptor)


def to_message(fields: Mapping[str, Any]) -> Any:
    """The message for an identity's design.md fields (``Identity.to_cel()``)."""
    values = dict(fields)
    claims = values.pop("Claims", None)
    message = message_class()(**values)
    if claims:
        message.Claims.update(thaw(claims))
    return message


@functools.cache
def anonymous() -> Any:
    """The message of a caller nobody verified (no identity stage ran): every field empty."""
    return message_class()()


class Messages:
    """Messages of recent identity values, keyed by the value itself (the verifier's cache hands
    out one value per token). Safe with several deciding threads (``--dispatch inline``): each
    step is one dict operation, atomic under the GIL, an entry is used only if it holds the very
    key asked for, and a lost race at worst builds a message twice."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._cache: dict[int, tuple[object, Any]] = {}

    def get(self, key: object, fields: Callable[[], Mapping[str, Any]]) -> Any:
        entry = self._cache.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        message = to_message(fields())
        if len(self._cache) >= self._size:
            self._cache.clear()
        # The key is held so that its id is not reused while the entry lives.
        self._cache[id(key)] = (key, message)
        return message


def variables() -> dict[str, cel.Type]:
    message_class()  # the type must be in the pool before an environment names it
    return {VARIABLE: cel.Type(TYPE_NAME)}
