"""Which entries a caller is shown, for policies of each shape.

The rule: an entry is hidden when every call using it is denied whatever it carries, and shown
when some call could be allowed (or approved). Each test states the answer and, where it
matters, holds it against the engine's own decisions for concrete calls.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import MappingProxyType

import pytest

from authz_server.identity.model import ANONYMOUS, Identity, Method
from authz_server.listing import ListFilter, ListingCaller, ListKind
from authz_server.policy import Engine, EngineOptions, load_directory
from tests.leaks import kept_bytes
from tests.listing.helpers import list_request, policy_set, usable, visible
from tests.policy.conftest import ALLOW, DENY, policy_yaml
from tests.policy.test_call_leak import _leaks

TOOLS = ["read_file", "write_file", "search", "deploy", "shell"]
APPROVE = 'approval.Require("a person must approve this")'
NAME_IN = "mcp.ToolCall.Name in {}"
ALLOW_READS = policy_yaml(
    "allow-reads",
    [f"{NAME_IN.format(['read_file', 'search', 'shell'])} ? {ALLOW} : null"],
    ["mcp.Method == 'tools/call'"],
)


def test_a_name_allow_list_shows_exactly_its_tools() -> None:
    assert visible(ALLOW_READS, TOOLS) == {"read_file", "search", "shell"}


def test_the_default_decision_decides_tools_no_policy_answers_for() -> None:
    assert visible(ALLOW_READS, TOOLS, default_decision="allow") == set(TOOLS)
    deny_writes = policy_yaml("deny-writes", [f"mcp.ToolCall.Name == 'write_file' ? {DENY} : null"])
    assert visible(deny_writes, TOOLS, default_decision="allow") == set(TOOLS) - {"write_file"}


def test_a_denial_by_name_overrides_an_allow_and_wins_in_first_match_by_order() -> None:
    allow_all = policy_yaml("b-allow-all", [ALLOW], ["mcp.Method == 'tools/call'"])
    deny_deploy = policy_yaml("a-deny-deploy", [f"mcp.ToolCall.Name == 'deploy' ? {DENY} : null"])
    assert visible(policy_set(allow_all, deny_deploy), TOOLS) == set(TOOLS) - {"deploy"}
    assert visible(policy_set(allow_all, deny_deploy), TOOLS, combine="first-match") == (
        set(TOOLS) - {"deploy"}
    )
    # In first-match order decides: an allow that comes first wins.
    late_deny = policy_yaml("c-deny-deploy", [f"mcp.ToolCall.Name == 'deploy' ? {DENY} : null"])
    assert visible(policy_set(allow_all, late_deny), TOOLS, combine="first-match") == set(TOOLS)
    assert visible(policy_set(allow_all, late_deny), TOOLS) == set(TOOLS) - {"deploy"}


def test_a_tool_whose_fate_depends_on_its_arguments_stays_listed() -> None:
    shell = policy_yaml(
        "shell-commands",
        [f'mcp.GetStringArgument("command", "") in ["ls", "cat"] ? {ALLOW} : {DENY}'],
        ["mcp.Method == 'tools/call' && mcp.ToolCall.Name == 'shell'"],
    )
    assert visible(shell, TOOLS) == {"shell"}
    engine = Engine(policy_set(shell))
    assert usable(engine, "shell", [{"command": "ls"}])
    assert not usable(engine, "shell", [None, {"command": "rm"}])


def test_argument_rules_that_can_only_deny_do_not_make_a_tool_usable() -> None:
    # Reading the arguments does not keep a tool by itself: this rule can deny or pass, and
    # nothing allows write_file, so no call of it can be allowed.
    guard = policy_yaml(
        "no-force",
        [f'mcp.GetBoolArgument("force", false) ? {DENY} : null'],
        ["mcp.Method == 'tools/call'"],
    )
    assert visible(policy_set(guard, ALLOW_READS), TOOLS) == {"read_file", "search", "shell"}
    # And where a tool is allowed, a rule that denies some of its calls leaves it listed.
    engine = Engine(policy_set(guard, ALLOW_READS))
    assert usable(engine, "search", [{"force": True}, {"force": False}])


def test_a_rule_that_denies_whatever_the_arguments_hides_the_tool() -> None:
    # Both branches deny: the arguments are read, but no value of them lets a call through.
    always = policy_yaml(
        "deploy-never",
        [f'mcp.GetStringArgument("env", "") == "prod" ? {DENY} : {DENY}'],
        ["mcp.Method == 'tools/call' && mcp.ToolCall.Name == 'deploy'"],
    )
    allow_all = policy_yaml("allow-all", [ALLOW], ["mcp.Method == 'tools/call'"])
    assert "deploy" not in visible(policy_set(always, allow_all), TOOLS)
    # An argument read absorbed by || or && does not make the answer unknown.
    absorbed = policy_yaml(
        "deploy-off",
        [f'mcp.ToolCall.Name == "deploy" || mcp.GetBoolArgument("x", false) ? {DENY} : null'],
    )
    assert visible(policy_set(absorbed, allow_all), TOOLS) == set(TOOLS) - {"deploy"}


def test_match_conditions_on_arguments() -> None:
    # A policy that applies only to some calls of a tool cannot hide it: the condition may be
    # false.
    guarded = policy_yaml(
        "deny-when-dry-run",
        [DENY],
        ["mcp.Method == 'tools/call'", 'mcp.GetBoolArgument("dry_run", false)'],
    )
    assert visible(policy_set(guarded, ALLOW_READS), TOOLS) == {"read_file", "search", "shell"}
    # A condition on the arguments that reads the name too is decided where the name decides.
    named = policy_yaml(
        "deny-search-args",
        [DENY],
        ['mcp.ToolCall.Name == "search" && has(mcp.ToolCall.Arguments.q)'],
    )
    allow_all = policy_yaml("allow-all", [ALLOW], ["mcp.Method == 'tools/call'"])
    assert visible(policy_set(named, allow_all), TOOLS) == set(TOOLS)
    # A whole-argument denial wins only when the arguments cannot change it.
    everything = policy_yaml("deny-args", [DENY], ["mcp.ToolCall.Arguments != null || true"])
    assert visible(policy_set(everything, allow_all), TOOLS) == set()


def test_identity_claims_name_the_tools_a_caller_may_see() -> None:
    claim = policy_yaml(
        "tools-claim",
        [f"mcp.ToolCall.Name in identity.Claims.tools ? null : {DENY}"],
        ["mcp.Method == 'tools/call'", 'identity.Authenticated && "tools" in identity.Claims'],
    )
    allow_all = policy_yaml("allow-all", [ALLOW], ["mcp.Method == 'tools/call'"])
    agent = Identity(
        authenticated=True,
        method=Method.BEARER,
        issuer="https://idp.example.com",
        subject="agent",
        claims=MappingProxyType({"tools": ("search", "deploy", "unknown_tool")}),
    )
    policies = policy_set(claim, allow_all)
    assert visible(policies, TOOLS, identity=agent) == {"search", "deploy"}
    assert visible(policies, TOOLS) == set(TOOLS)  # anonymous: the claim policy does not apply
    engine = Engine(policies)
    assert not usable(engine, "read_file", [None, {"path": "/x"}], identity=agent)


def test_headers_of_the_list_request_are_the_callers() -> None:
    agents = policy_yaml(
        "agent-tools",
        [f"mcp.ToolCall.Name in variables.tools[variables.agent] ? {ALLOW} : {DENY}"],
        [
            "mcp.Method == 'tools/call'",
            'object.attributes.request.http.headers[?"x-agent-id"].orValue("") in ["bot"]',
        ],
        variables={
            "agent": 'object.attributes.request.http.headers["x-agent-id"]',
            "tools": '{"bot": ["search", "read_file"]}',
        },
    )
    assert visible(agents, TOOLS, headers={"x-agent-id": "bot"}) == {"search", "read_file"}
    assert visible(agents, TOOLS, headers={"x-agent-id": "other"}) == set()


def test_what_a_call_carries_of_its_own_is_unknown_not_the_lists() -> None:
    # The list request has no such header and a small body; a call could carry either.
    header = policy_yaml(
        "large-bodies",
        [f'int(object.attributes.request.http.headers["content-length"]) > 10 ? {ALLOW} : {DENY}'],
    )
    assert visible(header, TOOLS) == set(TOOLS)
    body = policy_yaml(
        "body-words", [f'object.attributes.request.http.body.contains("please") ? {ALLOW} : null']
    )
    assert visible(body, TOOLS) == set(TOOLS)
    param = policy_yaml(
        "param-header",
        [
            f"object.attributes.request.http.headers[?\"mcp-param-region\"].orValue('') == 'eu'"
            f" ? {ALLOW} : null"
        ],
    )
    assert visible(param, TOOLS) == set(TOOLS)


def test_a_body_read_the_method_makes_irrelevant_does_not_keep_a_tool() -> None:
    # The example library's protocol policy reads the body only when there is no method.
    plumbing = policy_yaml(
        "plumbing",
        [f"mcp.Method == 'tools/list' || (mcp.Method == '' && variables.no_body) ? {ALLOW} : null"],
        variables={"no_body": "size(object.attributes.request.http.body) == 0"},
    )
    assert visible(policy_set(plumbing, ALLOW_READS), TOOLS) == {"read_file", "search", "shell"}


def test_audit_policies_never_hide_a_tool() -> None:
    audit = policy_yaml("audit-deny-all", [DENY], actions=["Audit"])
    assert visible(policy_set(audit, ALLOW_READS), TOOLS) == {"read_file", "search", "shell"}


def test_a_tool_that_needs_a_persons_approval_is_listed() -> None:
    approval = policy_yaml(
        "approve-deploy",
        [f"mcp.ToolCall.Name == 'deploy' ? {APPROVE} : null"],
        ["mcp.Method == 'tools/call'"],
    )
    assert visible(policy_set(approval, ALLOW_READS), TOOLS) == {
        "read_file",
        "search",
        "shell",
        "deploy",
    }
    # A denial still overrides an approval, as in the engine.
    deny = policy_yaml("deny-deploy", [f"mcp.ToolCall.Name == 'deploy' ? {DENY} : null"])
    assert "deploy" not in visible(policy_set(approval, deny), TOOLS)


@pytest.mark.parametrize(("failure", "shown"), [("Fail", set()), ("Ignore", set(TOOLS))])
def test_failure_policy_of_a_policy_that_fails_for_every_call(failure: str, shown: set) -> None:
    broken = policy_yaml(
        "broken",
        [f'object.attributes.request.http.headers["x-missing"] == "1" ? {ALLOW} : null'],
        failure=failure,
    )
    allow_all = policy_yaml("allow-all", [ALLOW], ["mcp.Method == 'tools/call'"])
    assert visible(policy_set(broken, allow_all), TOOLS) == shown


def test_an_error_that_depends_on_the_arguments_does_not_hide() -> None:
    # The argument may not convert (an error, so a denial under Fail) or may: the tool stays.
    strict = policy_yaml(
        "count-limit",
        [f'mcp.GetIntArgument("count", 0) > 100 ? {DENY} : null'],
    )
    allow_all = policy_yaml("allow-all", [ALLOW], ["mcp.Method == 'tools/call'"])
    assert visible(policy_set(strict, allow_all), TOOLS) == set(TOOLS)


def test_exceptions_apply_by_what_the_caller_sends() -> None:
    deny_all = policy_yaml(
        "deny-all",
        [DENY],
        variables={"agent": 'object.attributes.request.http.headers[?"x-agent"].orValue("")'},
    )
    exception = """\
apiVersion: policies.kyverno.io/v1
kind: PolicyException
metadata:
  name: trusted
spec:
  policyRefs:
  - name: deny-all
    kind: ValidatingPolicy
  matchConditions:
  - name: trusted
    expression: variables.agent == "trusted" && mcp.ToolCall.Name != "deploy"
"""
    policies = policy_set(deny_all, exception)
    options = {"default_decision": "allow"}
    assert visible(policies, TOOLS, headers={"x-agent": "trusted"}, **options) == (
        set(TOOLS) - {"deploy"}
    )
    assert visible(policies, TOOLS, headers={"x-agent": "other"}, **options) == set()


def test_an_erring_variable_nobody_reads_is_harmless_and_one_that_is_read_fails() -> None:
    policies = policy_yaml(
        "variables",
        [f"mcp.ToolCall.Name == 'search' ? {ALLOW} : null", f"variables.bad ? {ALLOW} : null"],
        variables={"bad": 'object.attributes.request.http.headers["x-missing"] == "1"'},
    )
    # search is allowed before the bad variable is read; the rest fail (Fail: a denial).
    assert visible(policies, TOOLS) == {"search"}


def test_no_policies_show_nothing() -> None:
    assert visible(policy_set(), TOOLS) == set()


def test_prompts_follow_prompts_get() -> None:
    prompts = policy_yaml(
        "prompts",
        [f"mcp.PromptGet.Name.startsWith('public-') ? {ALLOW} : null"],
        ["mcp.Method == 'prompts/get'"],
    )
    guard = policy_yaml(
        "prompt-args",
        [f'mcp.PromptGet.Arguments[?"lang"].orValue("en") == "xx" ? {DENY} : null'],
        ["mcp.Method == 'prompts/get'"],
    )
    names = ["public-summary", "internal-notes", "public-x"]
    assert visible(policy_set(prompts, guard), names, kind=ListKind.PROMPTS) == {
        "public-summary",
        "public-x",
    }


RESOURCES = policy_yaml(
    "resources",
    [
        f'variables.path.matches("^/(etc|root)(/|$)") ? {DENY} : null',
        f'variables.uri.startsWith("file:") || variables.uri.startsWith("https:") ? {ALLOW} : null',
    ],
    ["mcp.Method == 'resources/read'"],
    variables={
        "uri": "mcp.ResourceRead.URI.lowerAscii()",
        "path": "uri.FilePath(mcp.ResourceRead.URI).lowerAscii()",
    },
)


def test_resources_follow_resources_read_with_variables_of_the_uri() -> None:
    names = ["file:///etc/passwd", "file:///home/me/notes", "https://x.example/a", "s3://b/k"]
    assert visible(RESOURCES, names, kind=ListKind.RESOURCES) == {
        "file:///home/me/notes",
        "https://x.example/a",
    }


def test_resource_templates_are_judged_with_the_uri_unknown() -> None:
    # A template names many URIs: it is shown when some read could be allowed, whatever the
    # policies think of its literal text. One without variables is the URI it names.
    names = ["file:///etc/{name}", "s3://{bucket}/{key}", "file:///etc/passwd", "s3://b/k"]
    assert visible(RESOURCES, names, kind=ListKind.RESOURCE_TEMPLATES) == {
        "file:///etc/{name}",
        "s3://{bucket}/{key}",
    }
    deny_reads = policy_yaml("no-reads", [DENY], ["mcp.Method == 'resources/read'"])
    assert visible(policy_set(deny_reads, RESOURCES), names, kind=ListKind.RESOURCE_TEMPLATES) == (
        set()
    )


def test_duplicate_names_get_the_same_answer() -> None:
    list_filter_answer = visible(ALLOW_READS, ["search", "deploy", "search"])
    assert list_filter_answer == {"search"}


def test_a_big_list_keeps_exactly_the_allowed_tools() -> None:
    names = [f"tool_{i}" for i in range(300)]
    allowed = policy_yaml(
        "even-tools",
        [f"int(mcp.ToolCall.Name.substring(5)) % 2 == 0 ? {ALLOW} : null"],
        ["mcp.Method == 'tools/call'"],
    )
    assert visible(allowed, names) == {f"tool_{i}" for i in range(0, 300, 2)}


def test_the_engine_agrees_on_every_example_shape() -> None:
    # The answers above, held against the engine for concrete calls.
    policies = policy_set(
        ALLOW_READS,
        policy_yaml(
            "no-force",
            [f'mcp.GetBoolArgument("force", false) ? {DENY} : null'],
            ["mcp.Method == 'tools/call'"],
        ),
    )
    engine = Engine(policies, EngineOptions())
    argument_sets = [None, {}, {"force": True}, {"force": "no"}, {"force": [1]}]
    shown = visible(policies, TOOLS)
    for tool in TOOLS:
        assert usable(engine, tool, argument_sets) == (tool in shown), tool


EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


def test_a_long_list_costs_a_few_cel_calls_not_one_per_entry(monkeypatch) -> None:
    import authz_server.listing.filter as listing_filter

    calls = []
    evaluate = listing_filter.evaluate

    def counted(program, act):  # type: ignore[no-untyped-def]
        calls.append(program)
        return evaluate(program, act)

    monkeypatch.setattr(listing_filter, "evaluate", counted)
    policies = load_directory(EXAMPLES)
    names = [f"tool_{i}" for i in range(300)] + ["read_file", "write_file", "shell"]
    list_filter = ListFilter(policies)
    caller = ListingCaller(list_request(headers={"x-agent-id": "triage-bot"}), ANONYMOUS)
    list_filter.visible(caller, ListKind.TOOLS, names)
    assert len(calls) < 40
    calls.clear()
    ListFilter(policies, entry_programs=False).visible(caller, ListKind.TOOLS, names)
    assert len(calls) > 300  # the measure: entry by entry, every entry costs calls


def test_filtering_lists_of_new_names_keeps_no_memory() -> None:
    # cel-expr-python keeps the arguments and results of every call from CEL into Python
    # (tests/policy/test_call_leak.py, whose control shows the measure sees it). A denial
    # naming the tool (agent-allow-list: "agent ... may not call <name>") is built for every
    # entry; it must be built natively, not by the envoy builders.
    policies = load_directory(EXAMPLES)
    list_filter = ListFilter(policies)
    caller = ListingCaller(list_request(headers={"x-agent-id": "triage-bot"}), ANONYMOUS)
    counter = itertools.count()
    name_length, per_list, runs = 1_000, 10, 400

    def run() -> object:
        names = [f"t{next(counter):08d}-" + "n" * name_length for _ in range(per_list)]
        verdicts = list_filter.visible(caller, ListKind.TOOLS, names)
        assert not any(verdicts)
        return verdicts

    leaks = _leaks(run, runs)
    # One copy of each name kept would be name_length * per_list * runs bytes.
    assert kept_bytes(leaks) < name_length * runs // 4, leaks


# A failure that does not depend on the call, meeting an argument: the analysis follows what CEL
# makes of each value the argument's condition can take (true, false, an error).
FAILING = 'object.attributes.request.http.headers["x-absent"] == "1"'  # no such header: fails
CLAIMED = "mcp.ToolCall.Name in identity.Claims.tools"  # no such claim: fails


@pytest.mark.parametrize("failure", ["Fail", "Ignore"])
def test_a_failure_anded_with_an_argument_can_never_allow(failure: str) -> None:
    # error && (argument) is false or an error, never true: no call of deploy is allowed.
    gated = policy_yaml(
        "gated",
        [f'({FAILING} && mcp.GetStringArgument("env", "") == "dev") ? {ALLOW} : null'],
        ["mcp.ToolCall.Name == 'deploy'"],
        failure=failure,
    )
    assert visible(gated, TOOLS) == set()
    engine = Engine(policy_set(gated))
    assert not usable(engine, "deploy", [None, {"env": "dev"}, {"env": "prod"}, {"env": [1]}])


def test_a_failure_ored_with_an_argument_leaves_a_call_allowed() -> None:
    # error || (argument) is true when the argument's condition is: deploy with env=dev.
    gated = policy_yaml(
        "gated",
        [f'({FAILING} || mcp.GetStringArgument("env", "") == "dev") ? {ALLOW} : null'],
        ["mcp.ToolCall.Name == 'deploy'"],
    )
    assert visible(gated, TOOLS) == {"deploy"}
    assert usable(Engine(policy_set(gated)), "deploy", [{"env": "dev"}])


def test_a_claim_the_caller_lacks_anded_with_an_argument_hides_the_tool() -> None:
    # The anonymous caller has no tools claim: the match condition is false or an error.
    claimed = policy_yaml(
        "claimed",
        [ALLOW],
        [f'({CLAIMED}) && mcp.GetBoolArgument("confirm", false)'],
    )
    assert visible(claimed, TOOLS, identity=ANONYMOUS) == set()
