"""``approval.Require(reason)``: the response meaning "a human must approve this call first".

It is a CheckResponse like every other validation result, so policies combine and type-check as
before; what marks it is ``status.code`` 10 (``google.rpc.Code.ABORTED``: "retry at a higher
level", which is what the agent does once a person approved). Kyverno's ``envoy`` builders only
ever produce 0 or 7, so no existing policy yields it by accident. The reason goes in
``status.message``; ``denied_response`` carries 403 for a gateway that sees the response without
this server's translation.
"""

from __future__ import annotations

from typing import Any

from cel_expr_python import cel

from authz_server.envoy.pb.envoy.service.auth.v3.external_auth_pb2 import CheckResponse

APPROVAL_CODE = 10
FORBIDDEN = 403


def require(reason: str) -> Any:
    response = CheckResponse()
    response.status.code = APPROVAL_CODE
    response.status.message = reason
    response.denied_response.status.code = FORBIDDEN
    return response


def functions() -> list[cel.FunctionDecl]:
    result = cel.Type("envoy.service.auth.v3.CheckResponse")
    return [
        cel.FunctionDecl(
            "approval.Require",
            [cel.Overload("approval_require", result, [cel.Type.STRING], impl=require)],
        )
    ]
