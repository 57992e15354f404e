"""Kyverno's ``envoy`` library: builders for the CheckResponse a validation returns.

Every builder returns a new message (CEL values are immutable), and the messages are built field
for field as Kyverno builds them, so the same policy yields the same CheckResponse here: a header
from ``envoy.Header`` keeps the default ``append_action``; ``Response()`` sets ``status.code`` 0
(ok) or 7 (PERMISSION_DENIED); ``WithMetadata`` replaces the metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from cel_expr_python import cel
from google.protobuf import empty_pb2

from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2

CheckResponse = external_auth_pb2.CheckResponse
OkHttpResponse = external_auth_pb2.OkHttpResponse
DeniedHttpResponse = external_auth_pb2.DeniedHttpResponse
HeaderValueOption = base_pb2.HeaderValueOption
QueryParameter = base_pb2.QueryParameter

PERMISSION_DENIED = 7

# Registers google.protobuf.Empty in the pool the runtime reads (see functions()).
_EMPTY = empty_pb2.Empty

_T = cel.Type
_CHECK_RESPONSE = _T("envoy.service.auth.v3.CheckResponse")
_OK = _T("envoy.service.auth.v3.OkHttpResponse")
_DENIED = _T("envoy.service.auth.v3.DeniedHttpResponse")
_HEADER = _T("envoy.config.core.v3.HeaderValueOption")
_QUERY = _T("envoy.config.core.v3.QueryParameter")
_STRUCT = _T("google.protobuf.Struct")
_CARRIER = _T("google.protobuf.Empty")

M = TypeVar("M")


def _copy(message: Any, cls: type[M]) -> M:
    # The runtime hands back instances of the generated classes when they are imported; anything
    # else from the pool is converted through the wire format.
    fresh = cls()
    if isinstance(message, cls):
        fresh.CopyFrom(message)  # type: ignore[attr-defined]
    else:
        fresh.ParseFromString(message.SerializeToString())  # type: ignore[attr-defined]
    return fresh


def allowed() -> Any:
    return OkHttpResponse()


def denied(code: int) -> Any:
    response = DeniedHttpResponse()
    response.status.code = code  # type: ignore[assignment]
    return response


def header(key: str, value: str) -> Any:
    return HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def query_param(key: str, value: str) -> Any:
    return QueryParameter(key=key, value=value)


def with_body(response: Any, body: str) -> Any:
    result = _copy(response, DeniedHttpResponse)
    result.body = body
    return result


def with_header(response: Any, option: Any) -> Any:
    result = _copy(response, _response_class(response))
    result.headers.append(_copy(option, HeaderValueOption))
    return result


def with_header_kv(response: Any, key: str, value: str) -> Any:
    return with_header(response, header(key, value))


def _response_class(response: Any) -> type:
    name = response.DESCRIPTOR.full_name
    return DeniedHttpResponse if name == DeniedHttpResponse.DESCRIPTOR.full_name else OkHttpResponse


def without_header(response: Any, key: str) -> Any:
    result = _copy(response, OkHttpResponse)
    result.headers_to_remove.append(key)
    return result


def with_response_header(response: Any, option: Any) -> Any:
    result = _copy(response, OkHttpResponse)
    result.response_headers_to_add.append(_copy(option, HeaderValueOption))
    return result


def with_response_header_kv(response: Any, key: str, value: str) -> Any:
    return with_response_header(response, header(key, value))


def with_query_param(response: Any, param: Any) -> Any:
    result = _copy(response, OkHttpResponse)
    result.query_parameters_to_set.append(_copy(param, QueryParameter))
    return result


def with_query_param_kv(response: Any, key: str, value: str) -> Any:
    return with_query_param(response, query_param(key, value))


def without_query_param(response: Any, key: str) -> Any:
    result = _copy(response, OkHttpResponse)
    result.query_parameters_to_remove.append(key)
    return result


def keep_empty_value(option: Any, keep: bool = True) -> Any:
    result = _copy(option, HeaderValueOption)
    result.keep_empty_value = keep
    return result


def response(http_response: Any) -> Any:
    result = CheckResponse()
    if _response_class(http_response) is DeniedHttpResponse:
        result.status.code = PERMISSION_DENIED
        result.denied_response.CopyFrom(_copy(http_response, DeniedHttpResponse))
    else:
        result.status.code = 0
        result.ok_response.CopyFrom(_copy(http_response, OkHttpResponse))
    return result


def with_message(response: Any, message: str) -> Any:
    result = _copy(response, CheckResponse)
    # Kyverno dereferences the status without a check; a response without one is an error there.
    if not result.HasField("status"):
        raise ValueError("WithMessage: the response has no status")
    result.status.message = message
    return result


def with_metadata(response: Any, metadata: Mapping[str, Any]) -> Any:
    result = _copy(response, CheckResponse)
    result.ClearField("dynamic_metadata")
    result.dynamic_metadata.update(_plain(metadata))
    return result


def _plain(value: Any) -> Any:
    # Struct.update accepts only JSON-like values; CEL hands over bytearray for bytes and may hand
    # over protobuf messages for nested literals.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return value


def _fn(name: str, *overloads: tuple[str, Any, list[Any], bool, Any]) -> cel.FunctionDecl:
    return cel.FunctionDecl(
        name,
        [
            cel.Overload(oid, ret, params, is_member=member, impl=impl)
            if impl is not None
            else cel.Overload(oid, ret, params, is_member=member)
            for oid, ret, params, member, impl in overloads
        ],
    )


def functions() -> list[cel.FunctionDecl]:
    """Declarations of the library, with their implementations."""
    S, B = _T.STRING, _T.BOOL
    return [
        _fn("envoy.Allowed", ("envoy_allowed", _OK, [], False, allowed)),
        _fn("envoy.Denied", ("envoy_denied_int", _DENIED, [_T.INT], False, denied)),
        _fn("envoy.Header", ("envoy_header", _HEADER, [S, S], False, header)),
        _fn("envoy.QueryParam", ("envoy_query_param", _QUERY, [S, S], False, query_param)),
        _fn("WithBody", ("denied_with_body", _DENIED, [_DENIED, S], True, with_body)),
        # The runtime tells overloads apart by value kind only (every message is one kind) and
        # checks a result against the declared type of the overload that carries the
        # implementation. So the typed overloads carry none, and one implementation, declared on
        # a receiver no policy builds (google.protobuf.Empty) with a dyn result, serves them all.
        _fn(
            "WithHeader",
            ("ok_with_header", _OK, [_OK, _HEADER], True, None),
            ("ok_with_header_kv", _OK, [_OK, S, S], True, None),
            ("denied_with_header", _DENIED, [_DENIED, _HEADER], True, None),
            ("denied_with_header_kv", _DENIED, [_DENIED, S, S], True, None),
            ("any_with_header", _T.DYN, [_CARRIER, _HEADER], True, with_header),
            ("any_with_header_kv", _T.DYN, [_CARRIER, S, S], True, with_header_kv),
        ),
        _fn("WithoutHeader", ("ok_without_header", _OK, [_OK, S], True, without_header)),
        _fn(
            "WithResponseHeader",
            ("ok_with_response_header", _OK, [_OK, _HEADER], True, with_response_header),
            ("ok_with_response_header_kv", _OK, [_OK, S, S], True, with_response_header_kv),
        ),
        _fn(
            "WithQueryParam",
            ("ok_with_query_param", _OK, [_OK, _QUERY], True, with_query_param),
            ("ok_with_query_param_kv", _OK, [_OK, S, S], True, with_query_param_kv),
        ),
        _fn(
            "WithoutQueryParam",
            ("ok_without_query_param", _OK, [_OK, S], True, without_query_param),
        ),
        _fn(
            "KeepEmptyValue",
            ("header_keep_empty_value", _HEADER, [_HEADER], True, keep_empty_value),
            ("header_keep_empty_value_bool", _HEADER, [_HEADER, B], True, keep_empty_value),
        ),
        _fn(
            "Response",
            ("ok_response", _CHECK_RESPONSE, [_OK], True, None),
            ("denied_response", _CHECK_RESPONSE, [_DENIED], True, None),
            ("any_response", _CHECK_RESPONSE, [_CARRIER], True, response),
        ),
        _fn(
            "WithMessage",
            ("response_with_message", _CHECK_RESPONSE, [_CHECK_RESPONSE, S], True, with_message),
        ),
        _fn(
            "WithMetadata",
            (
                "response_with_metadata",
                _CHECK_RESPONSE,
                [_CHECK_RESPONSE, _STRUCT],
                True,
                with_metadata,
            ),
        ),
    ]
