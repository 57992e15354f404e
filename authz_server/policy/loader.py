"""Policy files to a validated, compiled :class:`PolicySet`, or every reason why not.

A directory may hold policies of both evaluation modes: the Envoy-mode ones become the set's
``policies`` (the gRPC transports judge with them), the HTTP-mode ones its ``http`` set (the HTTP
authorizer's). Names are unique across both, as in a Kubernetes cluster, and an exception must
be of the mode of every policy it names.

Reading (:mod:`~authz_server.policy.documents`), schema checks (:mod:`~authz_server.policy.schema`)
and compilation (:mod:`~authz_server.policy.compiler`) each collect every problem they find;
anything wrong anywhere fails the whole load: a half-loaded set would enforce less than its author
wrote. Exceptions are matched to the policies they name here, the set's ``Authentication``
document (at most one) is validated by the identity stage's parser, and the fast path
(:mod:`~authz_server.policy.combined`) is built once the set is complete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from authz_server.identity import (
    AuthenticationConfig,
    AuthenticationConfigError,
    parse_authentication,
)
from authz_server.identity.errors import JwksFetchError
from authz_server.identity.jwks import load_key_set, read_source
from authz_server.policy import combined
from authz_server.policy.compiler import CompileOptions, compile_policy
from authz_server.policy.documents import Document, find_files, parse_documents, read_documents
from authz_server.policy.errors import PolicyIssue, PolicyLoadError
from authz_server.policy.model import PolicySet
from authz_server.policy.schema import (
    AUTHENTICATION_KIND,
    HTTP_MODE,
    POLICY_KIND,
    Checker,
    exception_mode,
    policy_mode,
)


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
    authentication: AuthenticationConfig | None = None
    authentication_at: Document | None = None
    for document in documents:
        checker = Checker(document)
        kind = checker.header()
        if kind is None:
            issues += checker.issues
            continue
        name = checker.name()
        if kind == AUTHENTICATION_KIND:
            if authentication_at is not None:
                checker.fail(
                    ("kind",),
                    f"a policy set holds at most one {AUTHENTICATION_KIND} document (the first is "
                    f"in {authentication_at.file}, document {authentication_at.index})",
                )
            else:
                authentication_at = document
                authentication = _authentication(checker)
            issues += checker.issues
            continue
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
                    Checker(document).issue(
                        ("spec", "policyRefs", i, "name"),
                        f"exception {name!r} refers to unknown policy {ref['name']!r}",
                        policy=name,
                    )
                )
                continue
            mode, wanted = exception_mode(data), policy_mode(policies[ref["name"]][1])
            if mode != wanted:
                # An exception of the wrong mode would silently never apply.
                issues.append(
                    Checker(document).issue(
                        ("spec", "evaluationMode") if "evaluationMode" in data["spec"] else (
                            "spec", "policyRefs", i, "name"
                        ),
                        f"exception {name!r} has evaluationMode {mode!r} but policy "
                        f"{ref['name']!r} is of mode {wanted!r}",
                        policy=name,
                    )
                )  # fmt: skip
                continue
            by_policy.setdefault(ref["name"], []).append((name, document, data))
    compiled = []
    for name, (document, data) in sorted(policies.items()):
        policy, problems = compile_policy(name, document, data, by_policy.get(name, []), options)
        issues += problems
        if policy is not None:
            compiled.append(policy)
    if issues:
        raise PolicyLoadError(issues)
    http = tuple(p for p in compiled if p.mode == HTTP_MODE)
    return combined.with_fast_paths(
        PolicySet(
            policies=tuple(p for p in compiled if p.mode != HTTP_MODE),
            exceptions=tuple(sorted(exceptions)),
            files=files,
            authentication=authentication,
            # The HTTP authorizer's policies, a set of their own.
            http=combined.with_fast_paths(PolicySet(policies=http)) if http else None,
        )
    )


_INDEX = re.compile(r"\[(\d+)\]")


def _path(field: str) -> tuple[str | int, ...]:
    """``spec.issuers[0].jwks.uri`` -> ``("spec", "issuers", 0, "jwks", "uri")``."""
    path: list[str | int] = []
    for part in field.split("."):
        name, _, rest = part.partition("[")
        path.append(name)
        path += [int(i) for i in _INDEX.findall("[" + rest)] if rest else []
    return tuple(path)


def _authentication(checker: Checker) -> AuthenticationConfig | None:
    """Parse the document's spec, reporting each problem at its field; a ``jwks.file`` is read
    now too, so that ``validate`` catches a missing or unusable key file (the server re-reads it
    in the background afterwards)."""
    document = checker.document
    try:
        config = parse_authentication(
            document.data.get("spec"), base_dir=Path(document.file).parent
        )
    except AuthenticationConfigError as exc:
        for issue in exc.issues:
            checker.fail(_path(issue.field), issue.message)
        return None
    for i, issuer in enumerate(config.issuers.values()):
        if not issuer.jwks.file:
            continue
        try:
            load_key_set(read_source(issuer.jwks), time.time())
        except JwksFetchError as exc:
            checker.fail(("spec", "issuers", i, "jwks", "file"), str(exc))
    return config
