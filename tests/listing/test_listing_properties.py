"""Property: list filtering agrees with the engine on random policy sets.

Policy sets are drawn from a small grammar (conditions on the tool's name, its arguments, the
caller's headers and identity, constant errors; allow, deny, approval and null answers; match
conditions, variables, failurePolicy, Audit; either combination rule and default). For every
tool, the real Engine judges calls with every argument set of a product that reaches each
branch of each argument condition (absent, the value tested, one that does not convert).

* Sound, for every set: a hidden tool has no argument set the engine allows (or approves).
* Exact, for sets whose argument conditions each read their own argument (the analysis treats
  the unknowns of different reads as independent, which is then true) and whose variables hold
  nothing that fails whatever the call carries (see FAILING_ATOMS): a listed tool has one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server.identity.model import ANONYMOUS, Identity, Method
from authz_server.policy import Engine, EngineOptions
from tests.listing.helpers import policy_set, usable, visible
from tests.policy.conftest import ALLOW, DENY, policy_yaml

TOOLS = ("alpha", "beta", "gamma", "delta")
APPROVE = 'approval.Require("approve")'
ALICE = Identity(
    authenticated=True,
    method=Method.BEARER,
    issuer="https://idp.example.com",
    subject="alice",
    claims=MappingProxyType({"tools": ("alpha", "gamma")}),
)

NAME_ATOMS = (
    'mcp.ToolCall.Name == "alpha"',
    'mcp.ToolCall.Name in ["beta", "gamma"]',
    'mcp.ToolCall.Name != "delta"',
    '"tools" in identity.Claims && mcp.ToolCall.Name in identity.Claims.tools',
)
CALLER_ATOMS = (
    'object.attributes.request.http.headers[?"x-team"].orValue("") == "red"',
    'identity.Subject == "alice"',
    "mcp.Method == 'tools/call'",
    "true",
    "false",
)
# Fail whatever the call carries (no request has this header; an anonymous caller has no
# claims). The analysis follows such a failure meeting an argument's condition
# (``error && (argument)`` is false or an error), except through a variable: see Keys.failing.
FAILING_ATOMS = (
    'object.attributes.request.http.headers["x-absent"] == "1"',
    "mcp.ToolCall.Name in identity.Claims.tools",
)
ANSWERS = (ALLOW, DENY, APPROVE, "null")
# Fresh argument keys per case: the ground truth tries every combination of three values per
# key, so their number stays small (and within the analysis's own limit of atoms).
MAX_KEYS = 4


@dataclass
class Keys:
    """Argument keys handed out to argument conditions: fresh ones (exact sets) or two shared
    ones (sound sets, where conditions on one argument are correlated)."""

    fresh: bool
    used: list[str]
    # Whether conditions may include FAILING_ATOMS. Not in an exact set's variable: a reader
    # of a variable whose value is unknown takes it as any value (listing/filter.py).
    failing: bool = True

    def spent(self) -> bool:
        return self.fresh and len(self.used) >= MAX_KEYS

    def take(self, draw: Any) -> str:
        key = f"k{len(self.used)}" if self.fresh else draw(st.sampled_from(("k0", "k1")))
        if key not in self.used:
            self.used.append(key)
        return key


@st.composite
def atoms(draw: Any, keys: Keys) -> str:
    kind = draw(st.sampled_from(("name", "caller", "argument")))
    if kind == "argument" and keys.spent():
        kind = "caller"
    if kind == "name":
        return draw(st.sampled_from(NAME_ATOMS))
    if kind == "caller":
        return draw(st.sampled_from(CALLER_ATOMS + (FAILING_ATOMS if keys.failing else ())))
    key = keys.take(draw)
    if not keys.fresh and draw(st.booleans()):
        # Errs when the call has no arguments at all: correlated with every such read.
        return f'"{key}" in mcp.ToolCall.Arguments'
    return f'mcp.GetStringArgument("{key}", "") == "v"'


@st.composite
def conditions(draw: Any, keys: Keys, depth: int = 2) -> str:
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        atom = draw(atoms(keys))
        return f"!({atom})" if draw(st.booleans()) else atom
    left = draw(conditions(keys, depth - 1))
    right = draw(conditions(keys, depth - 1))
    return f"({left}) {draw(st.sampled_from(('&&', '||')))} ({right})"


@st.composite
def validations(draw: Any, keys: Keys, variable: bool) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(ANSWERS))
    condition = "variables.v" if variable and draw(st.booleans()) else draw(conditions(keys))
    return f"({condition}) ? {draw(st.sampled_from(ANSWERS))} : {draw(st.sampled_from(ANSWERS))}"


@st.composite
def policies(draw: Any, keys: Keys, index: int) -> str:
    # In an exact set a variable is read at most once (two reads would correlate).
    variable = draw(st.booleans())
    readers = draw(st.integers(1, 3))
    found = [
        draw(validations(keys, variable and (not keys.fresh or i == 0))) for i in range(readers)
    ]
    if variable and not any("variables.v" in v for v in found):
        variable = False
    conditions_ = draw(st.lists(conditions(keys, 1), max_size=2))
    keys.failing = not keys.fresh
    value = draw(conditions(keys)) if variable else None
    keys.failing = True
    return policy_yaml(
        f"p{index}",
        found,
        conditions_,
        variables={"v": value} if value is not None else None,
        failure=draw(st.sampled_from(("Fail", "Ignore"))),
        actions=["Audit"] if draw(st.integers(0, 9)) == 0 else None,
    )


@st.composite
def cases(draw: Any, fresh: bool) -> dict[str, Any]:
    keys = Keys(fresh, [])
    documents = [draw(policies(keys, i)) for i in range(draw(st.integers(1, 4)))]
    return {
        "documents": documents,
        "keys": list(keys.used),
        "options": {
            "combine": draw(st.sampled_from(("deny-overrides", "first-match"))),
            "default_decision": draw(st.sampled_from(("deny", "allow"))),
        },
        "headers": draw(st.sampled_from(({}, {"x-team": "red"}))),
        "identity": draw(st.sampled_from((ANONYMOUS, ALICE))),
    }


def argument_sets(keys: list[str]) -> list[dict[str, Any] | None]:
    """No arguments at all, and every combination of absent, the tested value and a value that
    does not convert to a string."""
    values = (None, "v", [1])
    found: list[dict[str, Any] | None] = [None]
    for combination in itertools.product(values, repeat=len(keys)):
        found.append({k: v for k, v in zip(keys, combination, strict=True) if v is not None})
    return found


def judge(case: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(tools listed, tools some drawn call may use)."""
    policy = policy_set(*case["documents"])
    shown = visible(
        policy, TOOLS, headers=case["headers"], identity=case["identity"], **case["options"]
    )
    engine = Engine(policy, EngineOptions(**case["options"]))
    sets = argument_sets(case["keys"])
    may = {
        tool
        for tool in TOOLS
        if usable(engine, tool, sets, headers=case["headers"], identity=case["identity"])
    }
    return shown, may


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(cases(fresh=False))
def test_a_hidden_tool_has_no_call_the_engine_allows(case: dict[str, Any]) -> None:
    shown, may = judge(case)
    assert may <= shown, (may - shown, case)


@PROPERTY
@given(cases(fresh=True))
def test_a_listed_tool_has_a_call_the_engine_allows_when_arguments_are_read_once(
    case: dict[str, Any],
) -> None:
    shown, may = judge(case)
    assert shown == may, (shown, may, case)
