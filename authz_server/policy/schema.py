"""Schema checks for policy documents: what a ValidatingPolicy or PolicyException may contain.

Accepted documents: ``policies.kyverno.io`` ``v1``/``v1beta1``/``v1alpha1`` ``ValidatingPolicy``
with ``spec.evaluation.mode: Envoy`` (judged by the gRPC transports) or ``HTTP`` (judged by the
HTTP authorizer), and ``PolicyException`` (``evaluationMode`` the mode of the policies it names).
Documents of ``kind: PolicyTest`` belong to the test runner and are skipped. An unknown field is
an error, never ignored: a misspelt ``matchConditions`` would otherwise widen what a policy
applies to.

Fields of Kyverno's shared CRD that only matter for Kubernetes admission (``matchConstraints``,
``auditAnnotations``, ``webhookConfiguration``, ``autogen``, ``evaluation.admission``,
``evaluation.background``) and ``validations[].message``/``messageExpression``/``reason`` are
accepted and ignored, as Kyverno's authz server does, so its policies load unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from authz_server.policy.documents import Document, PathKey, field_name
from authz_server.policy.errors import PolicyIssue

GROUP = "policies.kyverno.io"
VERSIONS = frozenset({"v1", "v1beta1", "v1alpha1"})
POLICY_KIND = "ValidatingPolicy"
EXCEPTION_KIND = "PolicyException"
TEST_KIND = "PolicyTest"
# This project's own documents (the test runner's PolicyTest shares the group).
OWN_API_VERSION = "authz-server/v1alpha1"
AUTHENTICATION_KIND = "Authentication"
ENVOY_MODE = "Envoy"
HTTP_MODE = "HTTP"
MODES = (ENVOY_MODE, HTTP_MODE)

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


class Checker:
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
        if kind == AUTHENTICATION_KIND:
            if api != OWN_API_VERSION:
                self.fail(
                    ("apiVersion",),
                    f"unsupported apiVersion {api!r} for {AUTHENTICATION_KIND} "
                    f"(expected {OWN_API_VERSION})",
                )
                return None
            self.unknown((), data, _TOP_FIELDS)
            return AUTHENTICATION_KIND
        group, _, version = str(api).partition("/")
        if group != GROUP or version not in VERSIONS:
            self.fail(
                ("apiVersion",),
                f"unsupported apiVersion {api!r} (expected {GROUP}/v1, v1beta1 or v1alpha1)",
            )
            return None
        if kind not in (POLICY_KIND, EXCEPTION_KIND):
            self.fail(
                ("kind",),
                f"unsupported kind {kind!r} (expected {POLICY_KIND} or {EXCEPTION_KIND}, "
                f"or {AUTHENTICATION_KIND} with apiVersion {OWN_API_VERSION})",
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
        if mode not in MODES:
            shown = "absent (Kubernetes)" if mode is None else repr(mode)
            self.fail(
                ("spec", "evaluation", "mode") if mode is not None else ("spec",),
                f"spec.evaluation.mode is {shown}; this server evaluates mode 'Envoy' "
                "(gRPC Check, ext_proc, ExtMcp) or 'HTTP' (the HTTP authorizer)",
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
        mode = spec.get("evaluationMode", ENVOY_MODE)
        if mode not in MODES:
            self.fail(
                ("spec", "evaluationMode"),
                f"evaluationMode must be 'Envoy' or 'HTTP', not {mode!r}",
            )
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


def policy_mode(data: Mapping[str, Any]) -> str:
    """The evaluation mode of a checked ValidatingPolicy."""
    return str(data["spec"]["evaluation"]["mode"])


def exception_mode(data: Mapping[str, Any]) -> str:
    """The evaluation mode of a checked PolicyException (Envoy when absent)."""
    return str((data.get("spec") or {}).get("evaluationMode", ENVOY_MODE))
