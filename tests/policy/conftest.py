from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authz_server.decision import Decision
from authz_server.policy import Engine, EngineOptions, PolicySet, load_directory
from authz_server.policy.testing import check_request_from_shorthand, decide


def policy_yaml(
    name: str,
    validations: list[str],
    conditions: list[str] = (),  # type: ignore[assignment]
    variables: dict[str, str] | None = None,
    failure: str | None = None,
    actions: list[str] | None = None,
    mode: str = "Envoy",
) -> str:
    """A ValidatingPolicy document; expressions are emitted as JSON strings (valid YAML)."""
    lines = [
        "apiVersion: policies.kyverno.io/v1",
        "kind: ValidatingPolicy",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  evaluation:",
        f"    mode: {mode}",
    ]
    if failure:
        lines.append(f"  failurePolicy: {failure}")
    if actions:
        lines.append(f"  validationActions: {json.dumps(actions)}")
    if conditions:
        lines.append("  matchConditions:")
        for i, c in enumerate(conditions):
            lines += [f"  - name: c{i}", f"    expression: {json.dumps(c)}"]
    if variables:
        lines.append("  variables:")
        for key, value in variables.items():
            lines += [f"  - name: {key}", f"    expression: {json.dumps(value)}"]
    lines.append("  validations:")
    for v in validations:
        lines.append(f"  - expression: {json.dumps(v)}")
    return "\n".join(lines) + "\n"


ALLOW = "envoy.Allowed().Response()"
DENY = 'envoy.Denied(403).WithBody("denied").Response()'


class Policies:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, filename: str, *documents: str) -> Path:
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("---\n".join(textwrap.dedent(d) for d in documents))
        return path

    def load(self) -> PolicySet:
        return load_directory(self.root)

    def engine(self, **options: Any) -> Engine:
        return Engine(self.load(), EngineOptions(**options))


@pytest.fixture
def policies(tmp_path: Path) -> Policies:
    return Policies(tmp_path / "policies")


def tool_call(name: str = "search", arguments: dict[str, Any] | None = None, **extra: Any) -> Any:
    return check_request_from_shorthand({"tool": name, "arguments": arguments or {}, **extra})


def run(engine: Engine, shorthand: dict[str, Any] | None = None, message: Any = None) -> Decision:
    return decide(
        engine, message if message is not None else check_request_from_shorthand(shorthand or {})
    )
