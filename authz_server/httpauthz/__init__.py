"""The plain-HTTP authorizer: Envoy's ``http_service``, agentgateway's HTTP protocol and Kyverno's
own HTTP-mode clients call it with the request to judge, and HTTP-mode policies judge it."""

from authz_server.httpauthz.adapter import (
    HttpReply,
    HttpRequest,
    NestedRequestError,
    reply_from_decision,
    request_from_http,
)
from authz_server.httpauthz.server import HttpAuthzListener

__all__ = [
    "HttpAuthzListener",
    "HttpReply",
    "HttpRequest",
    "NestedRequestError",
    "reply_from_decision",
    "request_from_http",
]
