"""Policy files to a validated, compiled :class:`PolicySet`, or every reason why not.

Accepted documents: ``policies.kyverno.io`` ``v1``/``v1beta1``/``v1alpha1`` ``ValidatingPolicy``
with ``spec.evaluation.mode: Envoy``, and ``PolicyException``. Documents of ``kind: PolicyTest``
belong to the test runner and are skipped. Anything else, an unknown field, a duplicate name or
an expression that does not compile fails the whole load: a half-loaded set would enforce less
than its author wrote.

Fields of Kyverno's shared CRD that only matter for Kubernetes admission (``matchConstraints``,
``auditAnnotations``, ``webhookConfiguration``, ``autogen``, ``evaluation.admission``,
``evaluation.background``) and ``validations[].message``/``messageExpression``/``reason`` are
accepted and ignored, as Kyverno's authz server does, so its policies load unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz_server.cel import (
    CelCompileError,
    CelEvaluationError,
    CostLimits,
    Program,
    activation,
    compile_expression,
    evaluate,
    new_env,
    shared_env,
)
from authz_server.cel.env import DYN, RESPONSE_TYPE, constants
from authz_server.policy import combined
from authz_server.policy.documents import (
    Document,
    PathKey,
    field_name,
    find_files,
    parse_documents,
    read_documents,
)
from authz_server.policy.errors import PolicyIssue, PolicyLoadError
from authz_server.policy.model import (
    Exception_,
    Expression,
    FailurePolicy,
    Policy,
    PolicySet,
    Source,
)

GROUP = "policies.kyverno.io"
VERSIONS = frozenset({"v1", "v1beta1", "v1alpha1"})
POLICY_KIND = "ValidatingPolicy"
EXCEPTION_KIND = "PolicyException"
TEST_KIND = "PolicyTest"
MODE = "Envoy"

_TOP_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_METADATA_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
_POLICY_SPEC_FIELDS = frozenset(
    {
        "evaluation",
        "failurePolicy",
        "matchConditions",
        "variables",
        "validations",
        "validationActions",
        "matchConstraints",
        "auditAnnotations",
        "webhookConfiguration",
        "autogen",
    }
)
_EVALUATION_FIELDS = frozenset({"mode", "admission", "background"})
_NAMED_EXPRESSION_FIELDS = frozenset({"name", "expression"})
_VALIDATION_FIELDS = frozenset({"expression", "message", "messageExpression", "reason"})
_EXCEPTION_SPEC_FIELDS = frozenset({"evaluationMode", "policyRefs", "matchConditions"})
_POLICY_REF_FIELDS = frozenset({"name", "kind"})
_ACTIONS = frozenset({"Deny", "Audit", "Warn"})
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """Load-time choices; ``cost`` bounds nested iteration (see ``authz_server.cel.analysis``)."""

    cost: CostLimits = field(default_factory=CostLimits)


def load_directory(path: str | Path, options: CompileOptions | None = None) -> PolicySet:
    """Load every policy file under ``path`` (or the file ``path``).

    Raises :class:`PolicyLoadError` listing every problem found. A directory without any
    policy yields an empty set; whether that is acceptable is the caller's decision.
    """
    root = Path(path)
    if not root.exists():
        raise PolicyLoadError([PolicyIssue(str(path), "no such file or directory")])
    documents: list[Document] = []
    issues: list[PolicyIssue] = []
    files = find_files(root)
    for file in files:
        docs, problems = read_documents(file, _display(file, root))
        documents += docs
        issues += problems
    return _build(documents, issues, tuple(str(f) for f in files), options or CompileOptions())


def load_text(
    text: str, name: str = "<policy>", options: CompileOptions | None = None
) -> PolicySet:
    """Load policies from YAML text (tests, the playground-style ``check`` of one file)."""
    documents, issues = parse_documents(text, name)
    return _build(documents, issues, (name,), options or CompileOptions())


def _display(file: Path, root: Path) -> str:
    if root.is_file():
        return str(file)
    try:
        return str(root / file.relative_to(root))
    except ValueError:
        return str(file)


def _build(
    documents: list[Document],
    issues: list[PolicyIssue],
    files: tuple[str, ...],
    options: CompileOptions,
) -> PolicySet:
    policies: dict[str, tuple[Document, Mapping[str, Any]]] = {}
    exceptions: dict[str, tuple[Document, Mapping[str, Any]]] = {}
    for document in documents:
        checker = _Checker(document)
        kind = checker.header()
        if kind is None:
            issues += checker.issues
            continue
        name = checker.name()
        if kind == POLICY_KIND:
            checker.policy_spec()
        else:
            checker.exception_spec()
        issues += checker.issues
        if checker.issues or name is None:
            continue
        target = policies if kind == POLICY_KIND else exceptions
        if name in target:
            first = target[name][0]
            issues.append(
                checker.issue(
                    ("metadata", "name"),
                    f"duplicate {kind} name {name!r} (first defined in {first.file}, "
                    f"document {first.index})",
                )
            )
            continue
        target[name] = (document, document.data)
    by_policy: dict[str, list[tuple[str, Document, Mapping[str, Any]]]] = {}
    for name, (document, data) in sorted(exceptions.items()):
        for i, ref in enumerate(data["spec"].get("policyRefs") or []):
            if ref["name"] not in policies:
                issues.append(
                    _Checker(document).issue(
                        ("spec", "policyRefs", i, "name"),
                        f"exception {name!r} refers to unknown policy {ref['name']!r}",
                        policy=name,
                    )
                )
                continue
            by_policy.setdefault(ref["name"], []).append((name, document, data))
    compiled = []
    for name, (document, data) in sorted(policies.items()):
        policy, problems = _compile_policy(name, document, data, by_policy.get(name, []), options)
        issues += problems
        if policy is not None:
            compiled.append(policy)
    if issues:
        raise PolicyLoadError(issues)
    return combined.with_fast_paths(
        PolicySet(policies=tuple(compiled), exceptions=tuple(sorted(exceptions)), files=files)
    )


class _Checker:
    """Schema checks for one document; collects issues instead of stopping at the first."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.issues: list[PolicyIssue] = []
        self.policy = ""

    def issue(self, path: PathKey, message: str, policy: str | None = None) -> PolicyIssue:
        line, column = self.document.position(path)
        return PolicyIssue(
            self.document.file,
            message,
            document_index=self.document.index,
            policy=self.policy if policy is None else policy,
            field=field_name(path),
            line=line,
            column=column,
        )

    def fail(self, path: PathKey, message: str) -> None:
        self.issues.append(self.issue(path, message))

    def header(self) -> str | None:
        data = self.document.data
        if not isinstance(data, dict):
            self.fail((), "a policy document must be a mapping")
            return None
        kind = data.get("kind")
        if kind == TEST_KIND:
            return None
        api = data.get("apiVersion")
        group, _, version = str(api).partition("/")
        if group != GROUP or version not in VERSIONS:
            self.fail(
                ("apiVersion",),
                f"unsupported apiVersion {api!r} (expected {GROUP}/v1, v1beta1 or v1alpha1)",
            )
            return None
        if kind not in (POLICY_KIND, EXCEPTION_KIND):
            self.fail(
                ("kind",), f"unsupported kind {kind!r} (expected {POLICY_KIND} or {EXCEPTION_KIND})"
            )
            return None
        self.unknown((), data, _TOP_FIELDS)
        return str(kind)

    def name(self) -> str | None:
        metadata = self.document.data.get("metadata")
        if not isinstance(metadata, dict):
            self.fail(("metadata",), "metadata must be a mapping with a name")
            return None
        self.unknown(("metadata",), metadata, _METADATA_FIELDS)
        name = metadata.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.fail(("metadata", "name"), f"invalid or missing name {name!r}")
            return None
        self.policy = name
        return name

    def unknown(self, path: PathKey, value: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for key in value:
            if key not in allowed:
                self.fail(
                    (*path, key),
                    f"unknown field {key!r}; allowed here: {', '.join(sorted(allowed))}",
                )

    def mapping(self, path: PathKey, value: Any, allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping")
            return {}
        self.unknown(path, value, allowed)
        return value

    def sequence(self, path: PathKey, value: Any) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        return value

    def expressions(self, path: PathKey, value: Any, allowed: frozenset[str], named: bool) -> None:
        names: set[str] = set()
        for i, item in enumerate(self.sequence(path, value)):
            entry = self.mapping((*path, i), item, allowed)
            if not isinstance(entry.get("expression"), str) or not entry["expression"].strip():
                self.fail((*path, i, "expression"), "expression is required and must be a string")
            if named:
                name = entry.get("name")
                if not isinstance(name, str) or not name:
                    self.fail((*path, i, "name"), "name is required")
                elif name in names:
                    self.fail((*path, i, "name"), f"duplicate name {name!r}")
                names.add(str(name))

    def policy_spec(self) -> None:
        spec = self.mapping(("spec",), self.document.data.get("spec"), _POLICY_SPEC_FIELDS)
        evaluation = self.mapping(
            ("spec", "evaluation"), spec.get("evaluation"), _EVALUATION_FIELDS
        )
        mode = evaluation.get("mode")
        if mode != MODE:
            shown = "absent (Kubernetes)" if mode is None else repr(mode)
            self.fail(
                ("spec", "evaluation", "mode") if mode is not None else ("spec",),
                f"spec.evaluation.mode is {shown}; this server evaluates only mode {MODE!r}",
            )
        failure = spec.get("failurePolicy", "Fail")
        if failure not in ("Fail", "Ignore"):
            self.fail(
                ("spec", "failurePolicy"), f"failurePolicy must be Fail or Ignore, not {failure!r}"
            )
        for i, action in enumerate(
            self.sequence(("spec", "validationActions"), spec.get("validationActions"))
        ):
            if action not in _ACTIONS:
                self.fail(("spec", "validationActions", i), f"unknown validation action {action!r}")
        self.expressions(
            ("spec", "matchConditions"), spec.get("matchConditions"), _NAMED_EXPRESSION_FIELDS, True
        )
        self.expressions(
            ("spec", "variables"), spec.get("variables"), _NAMED_EXPRESSION_FIELDS, True
        )
        for i, item in enumerate(self.sequence(("spec", "variables"), spec.get("variables"))):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name and not _VARIABLE_NAME.fullmatch(name):
                self.fail(
                    ("spec", "variables", i, "name"), f"variable name {name!r} is not an identifier"
                )
        self.expressions(
            ("spec", "validations"), spec.get("validations"), _VALIDATION_FIELDS, False
        )

    def exception_spec(self) -> None:
        spec = self.mapping(("spec",), self.document.data.get("spec"), _EXCEPTION_SPEC_FIELDS)
        mode = spec.get("evaluationMode", MODE)
        if mode != MODE:
            self.fail(("spec", "evaluationMode"), f"evaluationMode must be {MODE!r}, not {mode!r}")
        refs = self.sequence(("spec", "policyRefs"), spec.get("policyRefs"))
        if not refs:
            self.fail(("spec", "policyRefs"), "policyRefs must name at least one policy")
        for i, ref in enumerate(refs):
            entry = self.mapping(("spec", "policyRefs", i), ref, _POLICY_REF_FIELDS)
            if not isinstance(entry.get("name"), str):
                self.fail(("spec", "policyRefs", i, "name"), "name is required")
            if entry.get("kind", POLICY_KIND) != POLICY_KIND:
                self.fail(("spec", "policyRefs", i, "kind"), f"kind must be {POLICY_KIND}")
        self.expressions(
            ("spec", "matchConditions"), spec.get("matchConditions"), _NAMED_EXPRESSION_FIELDS, True
        )


class _Compiler:
    """Compiles one policy's expressions, collecting every problem."""

    def __init__(self, name: str, document: Document, options: CompileOptions) -> None:
        self.name = name
        self.document = document
        self.options = options
        self.issues: list[PolicyIssue] = []

    def compile(
        self, env: Any, path: PathKey, source: str, document: Document | None = None
    ) -> Program | None:
        document = document or self.document
        try:
            return compile_expression(env, source, self.options.cost)
        except CelCompileError as exc:
            for issue in exc.issues:
                self.report(path, issue.message, issue.line, issue.column, source, document)
            return None

    def report(
        self,
        path: PathKey,
        message: str,
        expr_line: int = 0,
        expr_column: int = 0,
        source: str = "",
        document: Document | None = None,
    ) -> None:
        document = document or self.document
        line, column = document.expression_position(path, expr_line, expr_column)
        self.issues.append(
            PolicyIssue(
                document.file,
                message,
                document_index=document.index,
                policy=self.name,
                field=field_name(path),
                line=line,
                column=column,
                expression_line=expr_line,
                expression_column=expr_column,
                snippet=_snippet(source, expr_line, expr_column),
            )
        )


def _snippet(source: str, line: int, column: int) -> str:
    if not source or line <= 0:
        return ""
    lines = source.splitlines() or [""]
    if line > len(lines):
        return ""
    text = lines[line - 1]
    return f"    | {text}\n    | {' ' * max(column - 1, 0)}^"


def _compile_policy(
    name: str,
    document: Document,
    data: Mapping[str, Any],
    exceptions: Iterable[tuple[str, Document, Mapping[str, Any]]],
    options: CompileOptions,
) -> tuple[Policy | None, list[PolicyIssue]]:
    spec = data["spec"]
    compiler = _Compiler(name, document, options)
    base = shared_env()

    conditions = []
    for i, item in enumerate(spec.get("matchConditions") or []):
        path = ("spec", "matchConditions", i, "expression")
        program = compiler.compile(base, path, item["expression"])
        if program is not None:
            if program.result_type_name != "BOOL":
                compiler.report(
                    path,
                    f"a match condition must evaluate to bool, not {program.result_type_name}",
                )
            conditions.append(Expression(item["name"], _field(path), program))

    # Each variable sees only the variables declared before it, with their compiled types.
    types: dict[str, Any] = {}
    variables: list[Expression] = []
    env = base
    variable_ok = True
    for i, item in enumerate(spec.get("variables") or []):
        path = ("spec", "variables", i, "expression")
        program = compiler.compile(env, path, item["expression"])
        if program is None:
            variable_ok = False
            types[item["name"]] = DYN
        else:
            types[item["name"]] = program.variable_type
            variables.append(
                Expression(item["name"], _field(path), program, _needs(program, variables))
            )
        env = new_env(types)
    # Compiled again in the policy's final environment, so that one activation serves all of
    # the policy's expressions (an activation must come from the compiling environment).
    variables = [
        dataclasses.replace(v, program=_recompile(env, v.program, options)) for v in variables
    ]

    validations = []
    for i, item in enumerate(spec.get("validations") or []):
        path = ("spec", "validations", i, "expression")
        program = compiler.compile(env, path, item["expression"])
        if program is None:
            continue
        result = program.result_type_name
        # dyn (a variable holding a response) is checked when evaluated.
        if result not in (RESPONSE_TYPE, "NULL", "DYN"):
            compiler.report(
                path,
                f"a validation must evaluate to {RESPONSE_TYPE} or null, not {result}",
            )
        validations.append(
            Expression(f"validations[{i}]", _field(path), program, _needs(program, variables))
        )

    compiled_exceptions = []
    for exception_name, exception_doc, exception_data in exceptions:
        exception_conditions = []
        for i, item in enumerate(exception_data["spec"].get("matchConditions") or []):
            path = ("spec", "matchConditions", i, "expression")
            program = compiler.compile(env, path, item["expression"], exception_doc)
            if program is None:
                continue
            if program.result_type_name != "BOOL":
                compiler.report(
                    path,
                    f"an exception condition must evaluate to bool, not {program.result_type_name}",
                    document=exception_doc,
                )
            exception_conditions.append(
                Expression(item["name"], _field(path), program, _needs(program, variables))
            )
        compiled_exceptions.append(
            Exception_(
                exception_name,
                Source(exception_doc.file, exception_doc.index),
                tuple(exception_conditions),
            )
        )

    if compiler.issues or not variable_ok:
        return None, compiler.issues
    actions = spec.get("validationActions") or ["Deny"]
    return (
        Policy(
            name=name,
            source=Source(document.file, document.index),
            failure_policy=FailurePolicy(spec.get("failurePolicy", "Fail")),
            match_conditions=tuple(conditions),
            variables=tuple(variables),
            validations=tuple(validations),
            exceptions=tuple(compiled_exceptions),
            audit="Deny" not in actions,
            methods=_methods(conditions),
            preset=_preset(variables),
        ),
        [],
    )


def _preset(variables: list[Expression]) -> dict[int, object]:
    """Evaluate once the variables that read neither the request nor other variables (literal
    allow-lists, maps of agents to tools ...). One that fails is left to fail per request."""
    values: dict[int, object] = {}
    data = dict(constants())
    for index, variable in enumerate(variables):
        if not variable.program.constant:
            continue
        try:
            values[index] = evaluate(variable.program, activation(data, variable.program.env))
        except CelEvaluationError:
            continue
    return values


def _recompile(env: Any, program: Program, options: CompileOptions) -> Program:
    return compile_expression(env, program.source, options.cost)


def _field(path: PathKey) -> str:
    return field_name(path)


def _needs(program: Program, variables: list[Expression]) -> tuple[int, ...]:
    index = {v.name: i for i, v in enumerate(variables)}
    needed: set[int] = set()
    for name in program.variables:
        if name in index:
            needed.add(index[name])
            needed.update(variables[index[name]].needs)
    return tuple(sorted(needed))


def _methods(conditions: list[Expression]) -> frozenset[str] | None:
    # Every condition must hold, so the methods a policy applies to are the intersection.
    methods: frozenset[str] | None = None
    for condition in conditions:
        guard = condition.program.methods
        if guard is not None:
            methods = guard if methods is None else methods & guard
    return methods
