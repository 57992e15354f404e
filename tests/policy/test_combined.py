"""The fast path (one combined CEL program per method bucket) decides exactly as the reference
path (per-policy evaluation), and hands every request it cannot decide to the reference."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server.cel import shared_env
from authz_server.cel.mcp import CURRENT_VIEW
from authz_server.decision import DecidedBy
from authz_server.envoy.adapter import request_from_check
from authz_server.identity.model import Identity, Method, Reason, freeze
from authz_server.mcp import decode
from authz_server.policy import Engine, EngineOptions, PolicySet, load_directory, load_text
from authz_server.policy.combined import CombinedProgram
from authz_server.policy.engine import Combine, Default
from authz_server.policy.testing import check_request_from_shorthand
from tests.policy.conftest import ALLOW, DENY, policy_yaml
from tests.policy.test_engine import EXCEPTION, KYVERNO_POLICY

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"
DEMO_KEY = "demo-shared-key-change-me-32-bytes-min"  # an HMAC key for the jwt.Decode tokens
KYVERNO_KEY = "a-shared-secret-of-decent-length-32b"  # KYVERNO_POLICY

# The conformance policies of test_engine.py and the semantics they pin down, in one set:
# lazy and chained variables, exceptions reading variables, failurePolicy, audit, ordering.
CONFORMANCE = "---\n".join(
    [
        KYVERNO_POLICY,
        policy_yaml(
            "deny-all",
            ['mcp.ToolCall.Name == "rm" ? ' + DENY + " : null"],
            variables={"agent": 'object.attributes.request.http.headers[?"x-agent"].orValue("")'},
        ),
        EXCEPTION,
        policy_yaml("audit", [DENY], conditions=['mcp.Method == "tools/call"'], actions=["Audit"]),
        policy_yaml(
            "audit-args",
            ['mcp.GetBoolArgument("force", false) ? ' + DENY + " : null"],
            actions=["Audit"],
        ),
        policy_yaml(
            "chained",
            ['variables.shout == "SEARCH" ? envoy.Denied(418).Response() : null'],
            variables={"tool": "mcp.ToolCall.Name", "shout": "variables.tool.upperAscii()"},
        ),
        policy_yaml(
            "lazy",
            [
                'mcp.Method == "" ? null : envoy.Allowed().WithHeader("x-lazy", "1").Response()',
                "variables.bad == 1 ? envoy.Denied(403).Response() : null",
            ],
            variables={"bad": "int(json.Unmarshal('{'))", "unused": "1/0"},
        ),
        policy_yaml(
            "conditions",
            ['envoy.Denied(409).WithBody("c " + mcp.ToolCall.Name).Response()'],
            conditions=['mcp.ToolCall.Name == "cond"', "1/0 == 1"],
            failure="Ignore",
        ),
        policy_yaml(
            "exception-error",
            [DENY],
            conditions=['mcp.ToolCall.Name == "exc"'],
        ),
        policy_yaml(
            "shell",
            [
                'variables.command.matches("[;&|]") ? envoy.Denied(403).Response() : null',
                "variables.program in ['ls', 'cat'] ? "
                + ALLOW
                + " : envoy.Denied(403).WithBody(variables.program).Response()",
            ],
            conditions=['mcp.Method == "tools/call" && mcp.ToolCall.Name == "shell"'],
            variables={
                "command": 'mcp.GetStringArgument("command", "")',
                "program": 'variables.command.trim().split(" ")[0]',
            },
        ),
        policy_yaml(
            "getters",
            [
                'mcp.ToolCall.Name in ["n", "x"] ? envoy.Denied(422).WithBody('
                'string(mcp.GetIntArgument("n", 7)) + "|" + string(mcp.GetFloatArgument("r", 0.5))'
                ' + "|" + mcp.GetStringSliceArgument("tags", ["none"]).join(",")'
                ' + "|" + mcp.GetIntSliceArgument("ns", [1]).map(i, string(i)).join(",")'
                ' + "|" + mcp.GetFloatSliceArgument("fs", []).map(f, string(f)).join(",")'
                ' + "|" + mcp.GetBoolSliceArgument("flags", [true]).map(b, string(b)).join(",")'
                ' + "|" + string(mcp.GetBoolArgument("force", true))'
                ' + "|" + mcp.GetStringArgument(mcp.ToolCall.Name, "none")'
                ' + "|" + mcp.GetStringArgument("owner", "?")).Response() : null',
                # Not hoisted: the key is a comprehension variable.
                '["owner", "command"].exists(k, mcp.GetStringArgument(k, "") == "root") ? '
                + DENY
                + " : null",
            ],
        ),
        policy_yaml(
            "hoisted-jwt",
            [
                # Hoisted although it fails (no or a bad token) for most requests: only the
                # "jwt" tool reaches it.
                'mcp.ToolCall.Name == "jwt" ? cel.bind(t, jwt.Decode('
                'object.attributes.request.http.headers[?"authorization"].orValue("").substring(7),'
                f' "{DEMO_KEY}"), t.Valid ? envoy.Allowed().WithHeader("x-sub", '
                "string(t.Claims.sub)).Response() : envoy.Denied(401).Response()) : null"
            ],
            failure="Ignore",
        ),
        policy_yaml(
            "z-allow-reads",
            [
                'mcp.Method in ["tools/list", "initialize"] || mcp.ToolCall.Name == "read" ? '
                'envoy.Allowed().WithHeader("x-read", "yes").WithoutHeader("cookie")'
                '.Response().WithMetadata({"reader": true}) : null'
            ],
        ),
    ]
) + (
    "---\n"
    + EXCEPTION.replace("trusted-agent", "broken-exception")
    .replace("deny-all", "exception-error")
    .replace('variables.agent == "trusted"', "1/0 == 1")
    + "  - name: never\n    expression: 'false'\n"
)

OPTIONS = [
    EngineOptions(),
    EngineOptions(combine=Combine.FIRST_MATCH),
    EngineOptions(default_decision=Default.ALLOW),
    EngineOptions(combine=Combine.FIRST_MATCH, default_decision=Default.ALLOW),
]


def _token(key: str, **claims: Any) -> str:
    return "Bearer " + jwt.encode(claims, key, algorithm="HS256")


def _tokens() -> list[str | None]:
    now = int(time.time())
    tokens: list[str | None] = [None, "Bearer", "Bearer not.a.token", "Basic abc"]
    for key in (DEMO_KEY, KYVERNO_KEY):
        tokens += [
            _token(key, sub="alice", tools=["create_pull_request", "read", "shell"], exp=now + 600),
            _token(key, sub="bob", exp=now + 600),
            _token(key, sub="carol", tools=["get_issue"], exp=now - 600),
            _token(key, sub="dave", nbf=now + 600),
        ]
    tokens.append(_token("some-other-key-of-decent-length-32b", sub="eve", tools=["read"]))
    good = _token(DEMO_KEY, sub="frank", tools=["read"], exp=now + 600)
    tokens += [
        "Bearer ",
        _token(DEMO_KEY, sub="gina", tools="read", exp=now + 600),  # a claim of the wrong type
        _token(DEMO_KEY, sub=7, tools=[1, None], nbf=now - 600, exp=now + 600),
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),  # wrongly signed
        good.rsplit(".", 1)[0] + ".",  # no signature
        "Bearer " + jwt.encode({"sub": "h"}, None, algorithm="none"),
        "Bearer e30.e30.e30",
    ]
    return tokens


TOOLS = [
    "create_pull_request",
    "get_issue",
    "merge_pull_request",
    "delete_branch",
    "write_file",
    "read_file",
    "run_command",
    "shell",
    "rm",
    "search",
    "read",
    "cond",
    "exc",
    "delete_repo",
    "x",
    "n",
    "jwt",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from(["12", "-3", "1e3", "2.5", "true", "F", "0x10", "inf", "NaN", "root"]),
)
VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=2), SCALARS)
ARGUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "command": st.sampled_from(["ls -la", "cat a; rm -rf /", "  git status", "", "pytest|x"]),
        "force": st.sampled_from([True, False, "true", "0", 1, None]),
        "owner": st.text(max_size=5) | VALUES,
        "n": VALUES,
        "r": VALUES,
        "x": VALUES,
        "tags": VALUES,
        "ns": VALUES,
        "fs": VALUES,
        "flags": VALUES,
    },
)
MESSAGES = st.one_of(
    st.builds(
        lambda tool, args: {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": tool, "arguments": args},
        },
        st.sampled_from(TOOLS),
        ARGUMENTS,
    ),
    st.builds(
        lambda method: {"jsonrpc": "2.0", "id": 1, "method": method, "params": {}},
        st.sampled_from(["tools/list", "initialize", "ping", "bogus/method", "prompts/get"]),
    ),
    st.builds(
        lambda uri: {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "resources/read",
            "params": {"uri": uri},
        },
        st.sampled_from(
            ["file:///etc/passwd", "file:///home/a.txt", "https://x/y", "file:/a/../b"]
        ),
    ),
    st.just({"jsonrpc": "2.0", "method": "notifications/initialized"}),
)
REQUESTS = st.builds(
    lambda *parts: _request(*parts),
    MESSAGES,
    st.lists(MESSAGES, min_size=2, max_size=3) | st.none(),
    st.sampled_from([None, "triage-bot", "release-bot", "intruder"]),
    st.sampled_from([None, "trusted", "other"]),
    st.sampled_from(_tokens()),
    st.booleans(),
)


def _request(body, batch, agent, x_agent, token, get) -> Any:
    if get:
        shorthand: dict[str, Any] = {"method": "GET"}
    else:
        shorthand = {"mcp": batch if batch else body}
    headers = {}
    if agent:
        headers["x-agent-id"] = agent
    if x_agent:
        headers["x-agent"] = x_agent
    if token:
        headers["authorization"] = token
    shorthand["headers"] = headers
    return check_request_from_shorthand(shorthand)


@pytest.fixture(scope="module")
def policy_sets() -> dict[str, PolicySet]:
    return {"examples": load_directory(EXAMPLES), "conformance": load_text(CONFORMANCE)}


class _Counter:
    """Counts fast-path evaluations that produced a result and those that fell back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decided = 0
        self.fell_back = 0
        real = CombinedProgram.evaluate

        def counting(
            program: CombinedProgram, check_request: Any, view: Any, identity: Any = None
        ) -> Any:
            result = real(program, check_request, view, identity)
            if result is None:
                self.fell_back += 1
            else:
                self.decided += 1
            return result

        monkeypatch.setattr(CombinedProgram, "evaluate", counting)


def _both(
    policies: PolicySet, options: EngineOptions, message: Any, identity: Identity | None = None
) -> tuple[Any, Any]:
    """Both paths' decisions, each with the policy evaluations it reported (the metrics)."""
    request = request_from_check(message)
    decoded = decode(request.body, request.headers)
    fast_seen: list[Any] = []
    reference_seen: list[Any] = []
    fast = Engine(policies, options, on_evaluated=fast_seen.extend).check(
        request, decoded, identity
    )
    reference = Engine(
        policies, options, fast_path=False, on_evaluated=reference_seen.extend
    ).check(request, decoded, identity)
    return (fast, fast_seen), (reference, reference_seen)


@pytest.mark.parametrize("name", ["examples", "conformance"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(message=REQUESTS, option=st.sampled_from(OPTIONS))
def test_fast_path_decides_exactly_as_the_reference_path(policy_sets, name, message, option):
    fast, reference = _both(policy_sets[name], option, message)
    # Every field: allowed, status, headers, body, policy, validation_index, decided_by, dry_run;
    # and the same policies reported as asked, with the same results.
    assert fast == reference


def _verified(method: Method, claims: dict[str, Any], spiffe_id: str = "") -> Identity:
    return Identity(
        authenticated=True,
        method=method,
        issuer="https://idp.example.com" if claims else "",
        subject=str(claims.get("sub", "")),
        claims=freeze(claims),
        spiffe_id=spiffe_id,
    )


# The callers the identity examples (policies/identity-*.yaml) tell apart.
IDENTITIES = st.sampled_from(
    [
        None,
        Identity.failure(Reason.EXPIRED),
        Identity.failure(Reason.DPOP_REPLAYED),
        Identity.failure(Reason.KEYS_UNAVAILABLE),
        _verified(Method.BEARER, {"sub": "a", "tools": ["create_pull_request", "read"]}),
        _verified(Method.BEARER, {"sub": "b"}),
        _verified(Method.DPOP, {"sub": "c", "tools": ["get_issue", "shell"]}),
        _verified(Method.DPOP, {"sub": "d", "tools": "read"}),  # a claim of the wrong type
        _verified(Method.GATEWAY, {"sub": "e", "tools": []}),
        _verified(Method.MTLS, {}, "spiffe://example.org/agents/ci"),
        _verified(Method.MTLS, {}, "spiffe://example.org/agents/docs"),
        _verified(Method.DPOP, {"sub": "f"}, "spiffe://example.org/agents/ci"),
    ]
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(message=REQUESTS, option=st.sampled_from(OPTIONS), identity=IDENTITIES)
def test_fast_path_decides_the_identity_examples_exactly_as_the_reference_path(
    policy_sets, message, option, identity
):
    fast, reference = _both(policy_sets["examples"], option, message, identity)
    assert fast == reference


def _table() -> list[dict[str, Any]]:
    now = int(time.time())
    good = _token(DEMO_KEY, sub="a", tools=["create_pull_request"], exp=now + 600)
    kyverno = _token(KYVERNO_KEY, sub="alice", exp=now + 600)
    rows: list[dict[str, Any]] = [{"method": "GET"}, {"method": "DELETE", "headers": {}}]
    for tool in TOOLS:
        for headers in (
            {},
            {"x-agent-id": "release-bot", "authorization": good},
            {"x-agent-id": "triage-bot", "x-agent": "trusted", "authorization": kyverno},
        ):
            rows.append({"tool": tool, "headers": headers})
    rows.append({"tool": "run_command", "arguments": {"command": "ls -la"}})
    rows.append({"tool": "shell", "arguments": {"command": "cat x; rm y"}})
    rows.append({"tool": "search", "arguments": {"force": True}})
    return rows


@pytest.mark.parametrize("name", ["examples", "conformance"])
def test_fast_path_table_and_it_is_not_vacuous(policy_sets, name, monkeypatch):
    counter = _Counter(monkeypatch)
    for row in _table():
        for option in OPTIONS:
            fast, reference = _both(policy_sets[name], option, check_request_from_shorthand(row))
            assert fast == reference, row
    # The examples are decided by the fast path; the conformance set is made of errors and
    # lazy variables, so much of it must fall back.
    if name == "examples":  # no example policy errors on these rows: nothing falls back
        assert counter.decided > 0 and counter.fell_back == 0
    else:
        assert counter.decided > 0 and counter.fell_back > 0


@pytest.mark.parametrize("name", ["examples", "conformance"])
def test_every_bucket_has_a_fast_path(policy_sets, name, caplog):
    policies = policy_sets[name]
    for method in (*policies._by_method, "", "tools/list"):
        fast = policies.fast_path(method)
        assert fast is not None, method
        assert fast.policies == policies.for_method(method)


def test_the_example_workload_is_decided_by_the_fast_path(monkeypatch, policy_sets):
    from tests.benchmarks import workload

    counter = _Counter(monkeypatch)
    fast, reference = _both(policy_sets["examples"], EngineOptions(), workload.check_request())
    assert fast == reference and fast[0].allowed
    assert (counter.decided, counter.fell_back) == (1, 0)


# the mechanisms, one by one


def _engine(*documents: str, **options: Any) -> Engine:
    return Engine(load_text("---\n".join(documents)), EngineOptions(**options))


def decode_body(request: Any) -> Any:
    return decode(request.body, request.headers)


def _evaluate(policies: PolicySet, shorthand: dict[str, Any]) -> list[Any] | None:
    request = request_from_check(check_request_from_shorthand(shorthand))
    message = decode(request.body, request.headers).messages[0]
    fast = policies.fast_path(message.method)
    assert fast is not None
    return fast.evaluate(request.check_request, dict(message.kyverno))


def test_result_is_one_entry_per_policy_with_the_validation_index():
    policies = load_text(
        "---\n".join(
            [
                policy_yaml("a", ["null", ALLOW]),
                policy_yaml("b", ["null"]),
                policy_yaml("c", [DENY], conditions=["false"]),
            ]
        )
    )
    results = _evaluate(policies, {"tool": "x"})
    assert results is not None and len(results) == 3
    assert results[0][0] == 1 and results[0][1].status.code == 0
    assert results[1:] == [None, None]


def test_variables_are_bound_before_the_first_validation_that_reads_them():
    # Validation 1 is never reached, so its erroring variable is never evaluated (lazy).
    policies = load_text(
        policy_yaml("p", [ALLOW, "variables.bad == 1 ? null : null"], variables={"bad": "1/0"})
    )
    (result,) = _evaluate(policies, {"tool": "x"})
    assert result[0] == 0


def test_an_erroring_variable_the_reference_does_not_reach_falls_back():
    # One validation reads both; the reference tolerates the error it never reaches, the fast
    # path's bind fails as a whole: the reference path decides.
    validation = "variables.good == 1 || variables.bad == 1 ? " + ALLOW + " : null"
    policies = load_text(policy_yaml("p", [validation], variables={"good": "1", "bad": "1/0"}))
    assert _evaluate(policies, {"tool": "x"}) is None
    request = request_from_check(check_request_from_shorthand({"tool": "x"}))
    decision = Engine(policies).check(request, decode(request.body, request.headers))
    assert decision.allowed and decision.validation_index == 0


def test_an_unread_variable_is_not_evaluated_at_all():
    policies = load_text(policy_yaml("p", [ALLOW], variables={"bad": "1/0"}))
    assert _evaluate(policies, {"tool": "x"}) is not None


def test_match_conditions_keep_the_reference_rule_a_false_beats_an_error():
    policies = load_text(policy_yaml("p", [DENY], conditions=["1/0 == 1", "false"]))
    assert _evaluate(policies, {"tool": "x"}) == [None]
    policies = load_text(policy_yaml("p", [DENY], conditions=["true", "1/0 == 1"]))
    assert _evaluate(policies, {"tool": "x"}) is None


def test_exception_conditions_are_strict_in_order_as_the_reference():
    # The reference evaluates [error, false] in order and fails; a CEL && would say false.
    exception = (
        EXCEPTION.replace('variables.agent == "trusted"', "1/0 == 1")
        + "  - name: never\n    expression: 'false'\n"
    )
    policies = load_text(policy_yaml("deny-all", [DENY]) + "---\n" + exception)
    assert _evaluate(policies, {"tool": "x"}) is None
    exception = EXCEPTION.replace('variables.agent == "trusted"', "1 == 2")
    policies = load_text(policy_yaml("deny-all", [DENY]) + "---\n" + exception)
    (result,) = _evaluate(policies, {"tool": "x"})
    assert result[0] == 0 and result[1].status.code == 7


def test_a_result_that_is_not_a_response_falls_back():
    policies = load_text(policy_yaml("p", ["variables.v"], variables={"v": "dyn('a string')"}))
    assert _evaluate(policies, {"tool": "x"}) is None
    request = request_from_check(check_request_from_shorthand({"tool": "x"}))
    decision = Engine(policies).check(request, decode(request.body, request.headers))
    assert not decision.allowed and "not a response" in decision.reason


def test_getters_read_the_message_bound_for_the_evaluation_only():
    # The key is a comprehension variable, so the getter stays in the program (not hoisted).
    getter = '["k"].exists(key, mcp.GetStringArgument(key, "none") == "v")'
    policies = load_text(policy_yaml("p", [f"{getter} ? {DENY} : null"]))
    program = policies.fast_path("tools/call").program
    assert "mcp.GetStringArgument(key" in program.source
    assert program.env is not shared_env()
    assert _evaluate(policies, {"tool": "x", "arguments": {"k": "v"}})[0] is not None
    assert _evaluate(policies, {"tool": "x", "arguments": {"k": "w"}}) == [None]
    assert CURRENT_VIEW.get() is None


# hoisted calls (authz_server.cel.hoist)


def test_the_example_calls_into_python_are_hoisted_out_of_the_program(policy_sets):
    source = policy_sets["examples"].fast_path("tools/call").program.source
    for call in ("jwt.Decode", "GetBoolArgument", "GetStringArgument"):
        assert call not in source
    assert "authz_h" in source


def test_identical_calls_share_one_variable_and_constant_ones_need_no_prelude():
    getter = 'mcp.GetStringArgument("k", "none")'
    policies = load_text(
        policy_yaml("a", [f'{getter} == "v" ? {DENY} : null'])
        + "---\n"
        + policy_yaml("b", [f'{getter}  ==  "w" ? {ALLOW} : null'])
    )
    fast = policies.fast_path("tools/call")
    assert re.findall(r"authz_h\d+", fast.program.source) == ["authz_h0", "authz_h0"]
    assert fast._hoisted is not None and fast._hoisted._prelude is None
    assert _evaluate(policies, {"tool": "x", "arguments": {"k": "w"}})[1] is not None


def test_a_failing_hoisted_call_matters_only_where_the_program_reads_it():
    decode = 'jwt.Decode(object.attributes.request.http.headers[?"a"].orValue("bad"), "k")'
    policies = load_text(
        policy_yaml("p", [f'mcp.ToolCall.Name == "jwt" ? ({decode}.Valid ? {ALLOW} : null) : null'])
    )
    assert "jwt.Decode" not in policies.fast_path("tools/call").program.source
    assert _evaluate(policies, {"tool": "x"}) == [None]  # the call was not needed
    assert _evaluate(policies, {"tool": "jwt"}) is None  # needed: the reference decides
    request = request_from_check(check_request_from_shorthand({"tool": "jwt"}))
    decision = Engine(policies).check(request, decode_body(request))
    assert decision.decided_by is DecidedBy.ERROR and "jwt.Decode" in decision.reason


def test_calls_reading_locals_or_calling_python_in_their_arguments_stay():
    inner = 'mcp.GetStringArgument("t", "")'
    policies = load_text(
        policy_yaml(
            "p",
            [
                f'jwt.Decode({inner}, "k").Valid ? {ALLOW} : null',
                f'cel.bind(x, "k", mcp.GetStringArgument(x, "") == "v") ? {DENY} : null',
            ],
        )
    )
    source = policies.fast_path("tools/call").program.source
    assert 'jwt.Decode(authz_h0, "k")' in source  # only the inner call is hoisted
    assert 'mcp.GetStringArgument(x, "")' in source
    token = jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256")
    assert _evaluate(policies, {"tool": "x", "arguments": {"t": token}}) is None  # wrong key


def test_a_bucket_that_rebinds_mcp_keeps_the_member_getters():
    local = '{"ToolCall": {"Arguments": {"k": "local"}}}'
    source = f'cel.bind(mcp, {local}, mcp.GetStringArgument("k", ""))'
    policies = load_text(policy_yaml("p", [f'{source} == "local" ? {DENY} : null']))
    fast = policies.fast_path("tools/call")
    assert fast.program.env is shared_env()
    assert _evaluate(policies, {"tool": "x"})[0] is not None


def test_audit_policies_are_recorded_even_after_a_denial_on_both_paths():
    documents = (
        policy_yaml("a-deny", [DENY]),
        policy_yaml("b-audit", ["envoy.Denied(451).Response()"], actions=["Audit"]),
        policy_yaml("c-allow", [ALLOW]),
    )
    request = request_from_check(check_request_from_shorthand({"tool": "x"}))
    decoded = decode(request.body, request.headers)
    for fast_path in (True, False):
        for combine in Combine:
            engine = Engine(
                load_text("---\n".join(documents)),
                EngineOptions(combine=combine),
                fast_path=fast_path,
            )
            decision = engine.check(request, decoded)
            assert not decision.allowed and decision.policy == "a-deny"
            assert [(d.policy, d.http_status) for d in decision.dry_run] == [("b-audit", 451)]


def test_a_set_without_policies_for_a_method_has_no_fast_path():
    policies = load_text(policy_yaml("p", [ALLOW], conditions=['mcp.Method == "tools/call"']))
    assert policies.fast_path("tools/call") is not None
    assert policies.fast_path("tools/list") is None


def test_many_null_results_do_not_exhaust_none():
    # The combined program returns lists of nulls; cel-expr-python 0.1.3 steals a reference to
    # None per converted null (authz_server.cel._none_guard).
    policies = load_text(policy_yaml("p", ["null"]) + "---\n" + policy_yaml("q", ["null"]))
    request = request_from_check(check_request_from_shorthand({"tool": "x"}))
    view = dict(decode(request.body, request.headers).messages[0].kyverno)
    fast = policies.fast_path("tools/call")
    for _ in range(20_000):
        assert fast.evaluate(request.check_request, view) == [None, None]


BEARER = 'object.attributes.request.http.headers["authorization"]'


@pytest.mark.parametrize(
    ("argument", "strings"),
    [
        (f"{BEARER}.substring(7)", True),
        ("object.attributes.request.http.path + object.attributes.request.http.body", True),
        ('object.attributes.request.http.headers[?"authorization"].orValue("")', False),
        ("string(object.attributes.request.http.headers.size())", False),
        ("string(object.attributes.source.address.socket_address.port_value)", False),
        ("mcp.ToolCall.Name + object.attributes.request.http.path", False),
    ],
)
def test_prelude_reads_strings_from_python_where_it_can(argument, strings):
    policies = load_text(policy_yaml("p", [f"json.Unmarshal({argument}) == 1 ? {DENY} : null"]))
    hoisted = policies.fast_path("tools/call")._hoisted
    assert hoisted is not None
    assert (type(hoisted._prelude).__name__ == "_Paths") is strings


def test_an_absent_header_read_from_python_is_an_error_where_read():
    token = _token(DEMO_KEY, sub="a", exp=int(time.time()) + 600)
    decode_ = f'jwt.Decode({BEARER}.substring(7), "{DEMO_KEY}")'
    policies = load_text(
        policy_yaml("a", [f"{decode_}.Valid ? {ALLOW} : null"])
        + "---\n"
        + policy_yaml("b", [f'{BEARER} == "" || true ? {DENY} : null'])
    )
    assert type(policies.fast_path("tools/call")._hoisted._prelude).__name__ == "_Paths"
    with_token = {"tool": "x", "headers": {"authorization": token}}
    assert _evaluate(policies, with_token)[0][0] == 0
    assert _evaluate(policies, {"tool": "x"}) is None
    for shorthand in (with_token, {"tool": "x"}):
        request = request_from_check(check_request_from_shorthand(shorthand))
        decoded = decode_body(request)
        fast = Engine(policies).check(request, decoded)
        assert fast == Engine(policies, fast_path=False).check(request, decoded)
