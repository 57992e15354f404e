"""Kyverno's ``json`` library: ``json.Unmarshal(string) -> dyn``.

Numbers come back as doubles whatever their spelling, because Kyverno decodes into Go's
``interface{}`` (float64); a policy comparing ``== 1`` still matches thanks to CEL's
cross-type numeric equality.
"""

from __future__ import annotations

import json as _json
from typing import Any

from cel_expr_python import cel


def _reject_constant(name: str) -> Any:
    raise ValueError(f"json.Unmarshal: invalid JSON number {name}")


def unmarshal(text: str) -> Any:
    try:
        return _json.loads(text, parse_int=float, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"json.Unmarshal: {exc}") from None


def functions() -> list[cel.FunctionDecl]:
    return [
        cel.FunctionDecl(
            "json.Unmarshal",
            [
                cel.Overload(
                    "json_unmarshal_string", cel.Type.DYN, [cel.Type.STRING], impl=unmarshal
                )
            ],
        )
    ]
