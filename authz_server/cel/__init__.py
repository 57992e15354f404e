"""CEL for policies: the environment, Kyverno's libraries and the static checks around them."""

from authz_server.cel._none_guard import protect_none

protect_none()

# ruff: noqa: E402

from authz_server.cel.analysis import CostLimits
from authz_server.cel.env import (
    Program,
    activation,
    compile_expression,
    evaluate,
    new_env,
    shared_env,
)
from authz_server.cel.errors import CelCompileError, CelError, CelEvaluationError, CelIssue

__all__ = [
    "CelCompileError",
    "CelError",
    "CelEvaluationError",
    "CelIssue",
    "CostLimits",
    "Program",
    "activation",
    "compile_expression",
    "evaluate",
    "new_env",
    "shared_env",
]
