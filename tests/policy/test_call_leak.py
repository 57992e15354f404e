"""The fast path keeps no Python memory per check.

cel-expr-python 0.1.3 never frees the Python objects it makes for the arguments and the result
of a call from CEL into a Python function (the JWT string passed to ``jwt.Decode`` on every
check, ~450 bytes). Those are Python allocations, so ``tracemalloc`` sees them: deterministic,
unlike the process's resident size.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.policy import Engine, load_directory, load_text
from tests.benchmarks import workload
from tests.leaks import Leaks, kept_bytes, steady_growth
from tests.policy.conftest import DENY, policy_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"
CHECKS = 5_000
# A leak of one small object per check is thousands of objects, far above this.
BOUND = 50_000


def _leaks(run: Callable[[], object], times: int = CHECKS) -> Leaks:
    """The allocation sites that kept at least one block every other run, in each half of
    ``times`` runs (after a warm-up).

    A leak grows steadily; what does not is left out: one-off allocations (a cache entry),
    and objects the runtime frees later rather than at once (in a full test run, several
    hundred of them are alive at any time, a number that does not grow).
    """
    return steady_growth(run, times, every=2)


def _checker(engine: Engine) -> Callable[[], object]:
    request = request_from_check(workload.check_request())
    decoded = decode(request.body, request.headers)
    return lambda: engine.check(request, decoded)


def _denier(engine: Engine, message: Callable[[str], dict[str, Any]], policy: str):
    """Checks whose body is ``message(name)`` with a new long name each time, each denied by
    ``policy`` with the name in the denial body (so the name reaches the response builders)."""
    template = workload.check_request()
    counter = itertools.count()

    def run() -> object:
        name = f"x{next(counter):08d}-" + "n" * NAME
        body = json.dumps({"jsonrpc": "2.0", "id": 1, **message(name)}).encode()
        # For the shell, the agent's and the token's tool lists would decide first.
        shell = policy == "shell-allow-list"
        dropped = {"x-agent-id": None, "authorization": None} if shell else {}
        request = request_from_check(workload.changed(template, dropped, body))
        decision = engine.check(request, decode(request.body, request.headers))
        assert not decision.allowed and decision.policy == policy, decision
        assert name in decision.body
        return decision

    return run


def _tool(name: str) -> dict[str, Any]:
    return {"method": "tools/call", "params": {"name": name, "arguments": {}}}


def _shell(name: str) -> dict[str, Any]:
    return {"method": "tools/call", "params": {"name": "shell", "arguments": {"command": name}}}


# Denials whose body carries a string the client chose: an unknown method's name, a tool name,
# a shell program. Each is a new string per request, so anything kept per call adds up: calling
# the builders (WithBody, Response) from CEL kept about four copies of it per denying policy.
# What may remain is one int per response message of 256 bytes or more that the runtime
# converts to Python (a cel-expr-python 0.1.3 reference leak, 28 bytes whatever the length).
NAME = 2_000
DENIAL_CHECKS = 2_000
PER_CHECK = NAME // 8
DENIALS = [
    pytest.param(lambda name: {"method": name}, "unknown-methods", id="unknown-method"),
    pytest.param(_tool, "agent-allow-list", id="tool-not-allowed"),
    pytest.param(_shell, "shell-allow-list", id="shell-program"),
]


@pytest.mark.parametrize(("message", "policy"), DENIALS)
def test_denials_naming_request_strings_retain_no_memory(message, policy):
    engine = Engine(load_directory(EXAMPLES))
    leaks = _leaks(_denier(engine, message, policy), DENIAL_CHECKS)
    assert kept_bytes(leaks) < PER_CHECK * DENIAL_CHECKS // 2, leaks


def test_the_measure_sees_the_denial_leak():
    # Control: the same denials, made by the reference path, which calls the builders
    # (WithBody, Response) from CEL with the name: the measure must see that leak.
    engine = Engine(load_directory(EXAMPLES), fast_path=False)
    leaks = _leaks(_denier(engine, lambda name: {"method": name}, "unknown-methods"), DENIAL_CHECKS)
    assert kept_bytes(leaks) > PER_CHECK * DENIAL_CHECKS // 2


def test_the_example_policies_retain_no_memory_per_check():
    leaks = _leaks(_checker(Engine(load_directory(EXAMPLES))))
    assert kept_bytes(leaks) < BOUND, leaks


def test_hoisted_getters_and_json_retain_no_memory_per_check():
    policies = load_text(
        policy_yaml(
            "p",
            [
                'mcp.GetStringArgument("owner", "") == "x" || mcp.GetIntArgument("n", 0) == 3 || '
                'mcp.GetStringSliceArgument("tags", []) == ["a"] || '
                "json.Unmarshal(string(object.attributes.request.http.raw_body)).params.name == 'y'"
                f" ? {DENY} : null"
            ],
        )
    )
    leaks = _leaks(_checker(Engine(policies)))
    assert kept_bytes(leaks) < BOUND, leaks


def test_the_measure_sees_a_leak():
    # Calling into Python from CEL in a loop: the measure must report it, or the tests above
    # prove nothing.
    from authz_server.cel import compile_expression
    from authz_server.cel.env import activation

    text = "y" * 300
    program = compile_expression(None, f"json.Unmarshal('\"{text}\"') == '{text}'")
    act = activation({})
    assert kept_bytes(_leaks(lambda: program.expression.eval(act), 2_000)) > BOUND


def test_decoding_with_fetched_keys_retains_no_memory_per_check():
    # jwt.Decode(token, jwks.Fetch(url)) is one hoisted call: neither the token nor the key set
    # passes through a CEL call into Python.
    from authz_server.cel import jwt as jwt_lib
    from tests.identity.helpers import ec_key, token

    url = "https://idp.example.com/jwks.json"
    signer = ec_key("k1")
    document = {"keys": [signer.jwk()]}
    policies = load_text(
        policy_yaml(
            "p",
            [f"variables.token.Valid ? null : {DENY}"],
            variables={
                "token": 'jwt.Decode(object.attributes.request.http.headers["authorization"]'
                f'.substring(7), jwks.Fetch("{url}"))'
            },
        )
    )
    check = workload.check_request()
    check.attributes.request.http.headers["authorization"] = f"Bearer {token(signer, time.time())}"
    request = request_from_check(check)
    decoded = decode(request.body, request.headers)
    engine = Engine(policies)
    jwt_lib.serve_key_sets(lambda u: document if u == url else None)
    try:
        assert engine.check(request, decoded).policy == ""  # decided, by no policy
        leaks = _leaks(lambda: engine.check(request, decoded))
    finally:
        jwt_lib.serve_key_sets(None)
    assert kept_bytes(leaks) < BOUND, leaks


# A policy alone in its bucket that fails at run time: a path argument that is not a string,
# read through a variable, next to a denial whose body names another argument. Each request
# carries a new long argument, which a call from CEL into Python on the ``mcp`` map would keep.
_FAILING = policy_yaml(
    "paths",
    [
        'variables.path.startsWith("/srv/") ? null : '
        'envoy.Denied(403).WithBody("outside: " + mcp.GetStringArgument("note", "")).Response()'
    ],
    variables={"path": 'mcp.GetPathArgument("path", "")'},
)


def _failing_checks(engine: Engine) -> Callable[[], object]:
    counter = itertools.count()

    def run() -> object:
        note = f"{next(counter):08d}" + "v" * NAME
        arguments = {"path": 42, "note": note}
        message = {"method": "tools/call", "params": {"name": "read", "arguments": arguments}}
        body = json.dumps({"jsonrpc": "2.0", "id": 1, **message}).encode()
        request = request_from_check(workload.check_request(body))
        decision = engine.check(request, decode(request.body, request.headers))
        assert decision.policy == "paths" and "variable 'path'" in decision.reason, decision
        return decision

    return run


def test_a_policy_failing_at_run_time_retains_no_memory_per_check():
    leaks = _leaks(_failing_checks(Engine(load_text(_FAILING))), DENIAL_CHECKS)
    assert kept_bytes(leaks) < PER_CHECK * DENIAL_CHECKS // 2, leaks


def test_the_measure_sees_the_failing_policy_leak():
    # Control: the reference path as loaded converts the whole ``mcp`` map, the long argument
    # included, for each getter called from CEL.
    engine = Engine(load_text(_FAILING), fast_path=False)
    leaks = _leaks(_failing_checks(engine), DENIAL_CHECKS)
    assert kept_bytes(leaks) > PER_CHECK * DENIAL_CHECKS // 2
