"""``authz-server test``: run policy test files and report pass/fail, like ``kyverno test``.

A test file is any ``*.yaml``/``*.yml`` document of ``kind: PolicyTest`` (the policy loader skips
these documents, so tests can sit next to the policies they test)::

    apiVersion: authz-server/v1alpha1
    kind: PolicyTest
    metadata:
      name: github
    spec:
      policies: .                  # optional; relative to this file; default: its directory
      options:                     # optional engine options
        combine: deny-overrides    # or first-match
        defaultDecision: deny      # or allow
      now: "2026-12-01T00:00:00Z"  # optional clock for token and proof times (see below)
      cases:
      - name: merging is refused
        request:                   # shorthand, all keys optional
          method: POST             # default POST when there is a body, else GET
          path: /mcp               # default /mcp
          headers: {authorization: "Bearer abc"}
          tool: merge_pull_request # a tools/call with these arguments (id 1) ...
          arguments: {owner: octo}
          # mcp: {jsonrpc: "2.0", id: 1, method: tools/list}   ... or any JSON-RPC body as YAML
          # body: '{"jsonrpc": "2.0", ...}'                      ... or a raw body
          certificate: |           # optional client certificate PEM (source.certificate)
            -----BEGIN CERTIFICATE-----
            ...
          principal: spiffe://example.org/agent   # optional source.principal
        # checkRequest: {...}      # instead of request: a CheckRequest in Envoy's proto-JSON form
        # identity: {Authenticated: true, Method: bearer, Subject: alice, Scopes: [tools:read]}
        #                          # optional: the caller as given, instead of verifying one
        expect:
          decision: deny           # required: allow or deny
          status: 403              # optional HTTP status of a denial
          policy: github-no-merge  # optional deciding policy
          headers: {content-type: application/json}   # optional, subset match
          bodyContains: reserved   # optional substring of the denial body
          approval: true           # optional: the answer is approval.Require (true), is not
                                   # (false), or is with exactly this reason (a string)

The identity stage runs as on the server, with the ``Authentication`` document of the set under
test: tokens and DPoP proofs go in ``request.headers`` (``authorization: "DPoP <token>"``,
``dpop: <proof>``), a client certificate in ``request.certificate`` (URL-encoded into
``source.certificate`` as Envoy sends it), and a failed credential under ``required: true`` is
answered 401 with its ``WWW-Authenticate`` challenge before the policies. A DPoP proof is single
use within one test file: a case that replays one is refused ``dpop_replayed``. ``spec.now``
(RFC 3339 with a zone, or Unix seconds) pins the clock that token and proof times are checked
against, so recorded tokens keep passing; without it the clock is the real one.

A case's ``identity`` skips verification: the policies see exactly the identity given, in
design.md's field names (``Authenticated``, ``Method``, ``Issuer``, ``Subject``, ``ClientID``,
``Audiences``, ``Scopes``, ``Claims``, ``Actor``, ``SPIFFEID``, ``CertificateThumbprint``,
``KeyThumbprint``, ``Error``); fields not given are empty. It is taken as the result of
verification, so under ``required: true`` an unauthenticated one is refused 401 before the
policies, as the server would refuse it. ``Authenticated: false`` (the default) means ``Error``
(default ``missing``) and nothing else: the server never hands the policies half a verification.

The runner has no approval store: a policy's ``approval.Require("reason")`` is reported as what
the server answers before anyone approved, a denial (``decision: deny``, status 403, the body's
message ``approval required: reason``). ``expect.approval`` tells it from a denial whose text
merely says so.

Exit status of :func:`run_tests`: 0 when every case passes, 1 when one fails, 2 when a test file
or the policies it names cannot be loaded. A file under the directory that is not valid YAML, a
PolicyTest with a field this runner does not know, without cases, with an ``identity`` or ``now``
that cannot be read, or whose ``policies`` path holds no policy is such an error, reported with
the file's name: a test that cannot run never passes silently.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import yaml
from google.protobuf import json_format

from authz_server.decision import Decision
from authz_server.envoy.adapter import CheckRequest, request_from_check
from authz_server.identity.model import Identity, Method, Reason, freeze
from authz_server.policy.documents import find_files
from authz_server.policy.engine import Combine, Default, Engine, EngineOptions
from authz_server.policy.errors import PolicyError, PolicyLoadError
from authz_server.policy.loader import load_directory
from authz_server.policy.offline import DecisionPath, decode_request
from authz_server.policy.schema import TEST_KIND

TEST_API_VERSION = "authz-server/v1alpha1"
_DOCUMENT_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec"})
_SPEC_FIELDS = frozenset({"policies", "options", "now", "cases"})
_OPTION_FIELDS = frozenset({"combine", "defaultDecision"})
_CASE_FIELDS = frozenset({"name", "request", "checkRequest", "identity", "expect"})
_REQUEST_FIELDS = frozenset(
    {
        "method", "path", "host", "headers", "tool", "arguments", "mcp", "body",
        "certificate", "principal",
    }
)  # fmt: skip
# A case's ``identity``: design.md's field names -> Identity's attributes.
_IDENTITY_FIELDS = {
    "Authenticated": "authenticated",
    "Method": "method",
    "Issuer": "issuer",
    "Subject": "subject",
    "ClientID": "client_id",
    "Audiences": "audiences",
    "Scopes": "scopes",
    "Claims": "claims",
    "Actor": "actor",
    "SPIFFEID": "spiffe_id",
    "CertificateThumbprint": "certificate_thumbprint",
    "KeyThumbprint": "key_thumbprint",
    "Error": "error",
}
_LIST_FIELDS = frozenset({"Audiences", "Scopes"})
_EXPECT_FIELDS = frozenset({"decision", "status", "policy", "headers", "bodyContains", "approval"})


class TestFileError(PolicyError):
    """A test file that cannot be run as written."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    test: str
    case: str
    passed: bool
    problems: tuple[str, ...] = ()


def check_request_from_shorthand(request: Mapping[str, Any]) -> Any:
    """Build a CheckRequest as Envoy would send it for the shorthand request of a test case."""
    unknown = set(request) - _REQUEST_FIELDS
    if unknown:
        raise TestFileError(f"unknown request fields: {', '.join(sorted(unknown))}")
    body = ""
    if "tool" in request:
        payload: Any = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": request["tool"], "arguments": request.get("arguments") or {}},
        }
        body = json.dumps(payload)
    elif "mcp" in request:
        body = json.dumps(request["mcp"])
    elif "body" in request:
        body = str(request["body"])
    method = str(request.get("method") or ("POST" if body else "GET")).upper()
    path = str(request.get("path") or "/mcp")
    host = str(request.get("host") or "mcp.example")
    headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
    headers.setdefault(":method", method)
    headers.setdefault(":path", path)
    headers.setdefault(":authority", host)
    headers.setdefault(":scheme", "https")
    if body:
        headers.setdefault("content-type", "application/json")
        headers.setdefault("accept", "application/json, text/event-stream")
        headers.setdefault("content-length", str(len(body.encode())))
    message = CheckRequest()
    http = message.attributes.request.http
    http.method, http.path, http.host, http.scheme = method, path, host, "https"
    http.protocol = "HTTP/1.1"
    http.headers.update(headers)
    http.body = body
    http.size = len(body.encode())
    source = message.attributes.source
    for field in ("certificate", "principal"):
        if field in request and not isinstance(request[field], str):
            raise TestFileError(f"request.{field} must be a string")
    if request.get("certificate"):
        # Envoy's include_peer_certificate: the leaf's PEM, URL-encoded.
        source.certificate = quote(request["certificate"], safe="")
    if request.get("principal"):
        source.principal = request["principal"]
    return message


def check_request_from_json(data: Mapping[str, Any] | str) -> Any:
    """Parse Envoy's proto-JSON form of a CheckRequest."""
    message = CheckRequest()
    try:
        if isinstance(data, str):
            json_format.Parse(data, message)
        else:
            json_format.ParseDict(dict(data), message)
    except json_format.ParseError as exc:
        raise TestFileError(f"invalid CheckRequest: {exc}") from None
    return message


def decide(engine: Engine, check_request: Any, *, decompress: bool = False) -> Decision:
    """The decoder and the policies, for an anonymous caller (no identity stage: see
    :class:`~authz_server.policy.offline.DecisionPath` for the whole path)."""
    request = request_from_check(check_request)
    return engine.check(request, decode_request(request, decompress))


def parse_now(value: Any) -> float:
    """``spec.now``: RFC 3339 with a zone (YAML may hand it over as a datetime already) or Unix
    seconds -> Unix seconds."""
    if isinstance(value, bool):
        raise TestFileError("spec.now must be an RFC 3339 time or Unix seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise TestFileError(
                f"spec.now: {value!r} is not an RFC 3339 time (2026-12-01T00:00:00Z)"
            ) from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise TestFileError("spec.now needs a time zone (Z or +hh:mm)")
        return value.timestamp()
    raise TestFileError("spec.now must be an RFC 3339 time or Unix seconds")


def _clock(now: Any) -> Callable[[], float]:
    """The run's clock: the real one, or ``spec.now`` for every case."""
    if now is None:
        return time.time
    fixed = parse_now(now)
    return lambda: fixed


def _json_value(where: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TestFileError(f"{where}: key {key!r} is not a string")
            _json_value(f"{where}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_value(f"{where}[{i}]", item)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise TestFileError(f"{where}: {type(value).__name__} is not a JSON value")


def identity_from_fields(fields: Any) -> Identity:
    """A case's ``identity``: design.md's fields -> the :class:`Identity` the policies get.

    Only identities the server could produce: an authenticated one has no ``Error``; an
    unauthenticated one has an ``Error`` (default ``missing``) and nothing else."""
    if not isinstance(fields, Mapping):
        raise TestFileError("identity must be a mapping")
    unknown = sorted(map(str, set(fields) - set(_IDENTITY_FIELDS)))
    if unknown:
        raise TestFileError(
            f"identity: unknown fields {', '.join(unknown)} (known: {', '.join(_IDENTITY_FIELDS)})"
        )
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "Authenticated":
            if not isinstance(value, bool):
                raise TestFileError("identity.Authenticated must be true or false")
        elif name in _LIST_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TestFileError(f"identity.{name} must be a list of strings")
            value = tuple(value)
        elif name == "Claims":
            if not isinstance(value, Mapping):
                raise TestFileError("identity.Claims must be a mapping")
            _json_value("identity.Claims", value)
            value = freeze(dict(value))
        elif not isinstance(value, str):
            raise TestFileError(f"identity.{name} must be a string")
        values[_IDENTITY_FIELDS[name]] = value
    try:
        values["method"] = Method(values.get("method", ""))
    except ValueError:
        choices = ", ".join(m.value for m in Method if m.value)
        raise TestFileError(f"identity.Method must be one of {choices}") from None
    error = values.get("error")
    if values.get("authenticated"):
        if error:
            raise TestFileError("identity: Authenticated is true, so Error must be empty")
        return Identity(**values)
    if set(values) - {"authenticated", "error", "method"} or values["method"]:
        raise TestFileError(
            "identity: Authenticated is false, so only Error may be given "
            "(the server never passes half a verification to the policies)"
        )
    if error is None:
        error = Reason.MISSING
    try:
        return Identity.failure(Reason(error))
    except ValueError:
        choices = ", ".join(r.value for r in Reason)
        raise TestFileError(
            f"identity.Error of an unauthenticated identity must be one of {choices}"
        ) from None


def _expectations(decision: Decision, expect: Mapping[str, Any]) -> list[str]:
    unknown = set(expect) - _EXPECT_FIELDS
    if unknown:
        raise TestFileError(f"unknown expect fields: {', '.join(sorted(unknown))}")
    wanted = expect.get("decision")
    if wanted not in ("allow", "deny"):
        raise TestFileError("expect.decision must be allow or deny")
    got = "allow" if decision.allowed else "deny"
    problems = []
    if got != wanted:
        problems.append(
            f"decision: expected {wanted}, got {got} ({decision.reason or 'no reason'})"
        )
    if "status" in expect and not decision.allowed and decision.http_status != expect["status"]:
        problems.append(f"status: expected {expect['status']}, got {decision.http_status}")
    if "policy" in expect and decision.policy != expect["policy"]:
        problems.append(f"policy: expected {expect['policy']!r}, got {decision.policy!r}")
    have = {h.key.lower(): h.value for h in decision.headers}
    for key, value in (expect.get("headers") or {}).items():
        if have.get(str(key).lower()) != str(value):
            problems.append(f"header {key}: expected {value!r}, got {have.get(str(key).lower())!r}")
    if "bodyContains" in expect and str(expect["bodyContains"]) not in decision.body:
        problems.append(
            f"body: expected to contain {expect['bodyContains']!r}, got {decision.body!r}"
        )
    if "approval" in expect:
        problems += _approval_problems(decision, expect["approval"])
    return problems


def _approval_problems(decision: Decision, wanted: Any) -> list[str]:
    """``expect.approval``: true (the answer is ``approval.Require``), false (it is not), or the
    reason the policy gave."""
    if not isinstance(wanted, bool | str) or wanted == "":
        raise TestFileError("expect.approval must be true, false or the approval's reason")
    got = decision.approval
    if wanted is False:
        return [f"approval: expected none, got approval.Require({got!r})"] if got else []
    if not got:
        return [f"approval: expected approval.Require, got {decision.reason or 'no reason'}"]
    if isinstance(wanted, str) and got != wanted:
        return [f"approval: expected reason {wanted!r}, got {got!r}"]
    return []


def _options(spec: Mapping[str, Any]) -> EngineOptions:
    options = spec.get("options") or {}
    _known_fields("options", options, _OPTION_FIELDS)
    try:
        return EngineOptions(
            combine=Combine(options.get("combine", Combine.DENY_OVERRIDES)),
            default_decision=Default(options.get("defaultDecision", Default.DENY)),
        )
    except ValueError as exc:
        raise TestFileError(f"invalid options: {exc}") from None


def _known_fields(where: str, value: Any, known: frozenset[str]) -> None:
    if not isinstance(value, Mapping):
        raise TestFileError(f"{where} must be a mapping")
    unknown = set(value) - known
    if unknown:
        raise TestFileError(f"unknown {where} fields: {', '.join(sorted(map(str, unknown)))}")


def _spec(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The spec of a PolicyTest document, once its shape is one this runner reads whole."""
    _known_fields("PolicyTest", document, _DOCUMENT_FIELDS)
    if document.get("apiVersion") != TEST_API_VERSION:
        raise TestFileError(
            f"unsupported apiVersion {document.get('apiVersion')!r} (expected {TEST_API_VERSION})"
        )
    if not isinstance(document.get("metadata") or {}, Mapping):
        raise TestFileError("metadata must be a mapping")
    spec = document.get("spec")
    _known_fields("spec", spec, _SPEC_FIELDS)
    cases = spec.get("cases")
    if not isinstance(cases, list) or not cases:
        raise TestFileError("spec.cases must be a non-empty list of cases")
    if not all(isinstance(case, Mapping) for case in cases):
        raise TestFileError("every case must be a mapping")
    return spec


@dataclass(frozen=True, slots=True)
class CaseRun:
    """One case run: its decision, or why it could not run (``decision`` None)."""

    name: str
    case: Mapping[str, Any]
    decision: Decision | None
    problem: str = ""


def _case_name(case: Mapping[str, Any], index: int) -> str:
    return str(case.get("name") or f"case {index}")


def run_cases(file: Path, document: Mapping[str, Any]) -> list[CaseRun]:
    """Decide every case of the PolicyTest ``document`` read from ``file``, in order, through one
    :class:`DecisionPath` (so a DPoP proof replayed by a later case is refused). Raises
    :class:`TestFileError` or :class:`PolicyLoadError` when the file cannot run at all."""
    spec = _spec(document)
    clock = _clock(spec.get("now"))
    given: list[Identity | None] = []
    for i, case in enumerate(spec["cases"]):
        try:
            given.append(identity_from_fields(case["identity"]) if "identity" in case else None)
        except TestFileError as exc:
            raise TestFileError(f"case {_case_name(case, i)!r}: {exc}") from None
    policies_path = file.parent / str(spec.get("policies") or ".")
    policies = load_directory(policies_path)
    if not policies.policies:
        raise TestFileError(f"no policies in {policies_path}")
    runs = []
    with DecisionPath(policies, _options(spec), clock=clock) as path:
        for i, (case, identity) in enumerate(zip(spec["cases"], given, strict=True)):
            try:
                unknown = set(case) - _CASE_FIELDS
                if unknown:
                    raise TestFileError(f"unknown case fields: {', '.join(sorted(unknown))}")
                if "checkRequest" in case:
                    message = check_request_from_json(case["checkRequest"])
                else:
                    message = check_request_from_shorthand(case.get("request") or {})
                run = CaseRun(_case_name(case, i), case, path.decide(message, identity))
            except TestFileError as exc:
                run = CaseRun(_case_name(case, i), case, None, str(exc))
            runs.append(run)
    return runs


def _run_test(file: Path, document: Mapping[str, Any]) -> list[CaseResult]:
    runs = run_cases(file, document)
    name = str((document.get("metadata") or {}).get("name") or file.stem)
    results = []
    for run in runs:
        try:
            if run.decision is None:
                raise TestFileError(run.problem)
            problems = _expectations(run.decision, run.case.get("expect") or {})
        except TestFileError as exc:
            problems = [f"invalid case: {exc}"]
        results.append(CaseResult(str(file), name, run.name, not problems, tuple(problems)))
    return results


def _test_documents(
    root: Path,
) -> tuple[list[tuple[Path, Mapping[str, Any]]], list[tuple[Path, str]]]:
    """The PolicyTest documents under ``root``, and the files that cannot be read as YAML (a
    broken test file must not pass unnoticed; a broken policy file is an error here too)."""
    found = []
    unreadable = []
    for file in find_files(root):
        try:
            documents = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except OSError as exc:
            unreadable.append((file, f"cannot be read: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError:
            unreadable.append((file, "not UTF-8 text"))
            continue
        except yaml.YAMLError as exc:
            unreadable.append((file, _yaml_error(exc)))
            continue
        for document in documents:
            if isinstance(document, dict) and document.get("kind") == TEST_KIND:
                found.append((file, document))
    return found, unreadable


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "invalid YAML"
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def run_tests(path: str | Path, out: TextIO) -> int:
    """Run every PolicyTest under ``path``; print a report to ``out``; return the exit status."""
    root = Path(path)
    tests, unreadable = _test_documents(root) if root.exists() else ([], [])
    if not tests and not unreadable:
        out.write(f"no PolicyTest documents found under {root}\n")
        return 2
    status = 0
    passed = failed = 0
    for file, problem in unreadable:
        out.write(f"ERROR {file}: {problem}\n")
        status = 2
    for file, document in tests:
        try:
            results = _run_test(file, document)
        except (PolicyLoadError, TestFileError) as exc:
            out.write(f"ERROR {file}: {exc}\n")
            status = 2
            continue
        for result in results:
            if result.passed:
                passed += 1
                out.write(f"PASS {result.test} / {result.case}\n")
            else:
                failed += 1
                out.write(f"FAIL {result.test} / {result.case} ({result.file})\n")
                for problem in result.problems:
                    out.write(f"     {problem}\n")
    out.write(f"\n{passed} passed, {failed} failed\n")
    if failed and status == 0:
        status = 1
    return status
