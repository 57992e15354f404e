"""The offline commands: ``check``, ``validate`` and ``test``.

``validate`` checks policies of both evaluation modes; ``check`` and ``test`` judge Envoy
CheckRequests, so they exercise the Envoy-mode policies only.

They run the same decision path as the server, without gRPC, so what they print is what the
server would answer: ``check --policies`` verifies the request's credentials under the set's
``Authentication`` document (with the real clock; a DPoP proof is claimed in memory) before the
policies see it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from authz_server.decision import Decision
from authz_server.envoy import response_from_decision
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.policy.engine import Combine, Default, EngineOptions
from authz_server.policy.errors import PolicyLoadError
from authz_server.policy.loader import load_directory
from authz_server.policy.offline import DecisionPath
from authz_server.policy.testing import TestFileError, check_request_from_json, run_tests

EXIT_ALLOW, EXIT_DENY, EXIT_ERROR = 0, 1, 2


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if args.command == "validate":
        return validate(args.directory, out, err)
    if args.command == "test":
        return run_tests(args.directory, out)
    return check(args, out, err)


def validate(directory: Path, out: TextIO, err: TextIO) -> int:
    if not directory.is_dir():
        err.write(f"authz-server validate: {directory} is not a directory\n")
        return EXIT_ERROR
    try:
        policies = load_directory(directory)
    except PolicyLoadError as exc:
        err.write(exc.format() + "\n")
        return 1
    if not len(policies):
        err.write(f"no ValidatingPolicy documents found under {directory}\n")
        return 1
    out.write(f"ok: {len(policies)} policies in {directory}\n")
    # By name across both modes; HTTP-mode ones (the HTTP authorizer's) are marked.
    everything = [*policies.policies, *policies.http_set.policies]
    for policy in sorted(everything, key=lambda p: p.name):
        mark = "" if policy.mode == "Envoy" else f" ({policy.mode} mode)"
        out.write(f"  {policy.name}{mark}\n")
    return 0


def check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if (args.policies is None) == (args.server is None):
        err.write("authz-server check: give either --policies DIR or --server HOST:PORT\n")
        return EXIT_ERROR
    try:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
        check_request = check_request_from_json(text)
        if args.server:
            return _check_remote(args.server, check_request, out)
        policies = load_directory(args.policies)
    except (OSError, TestFileError, PolicyLoadError, grpc.RpcError) as exc:
        err.write(f"authz-server check: {_describe_error(exc)}\n")
        return EXIT_ERROR
    if not policies.policies:
        err.write(f"authz-server check: no Envoy-mode policies found in {args.policies}\n")
        return EXIT_ERROR
    options = EngineOptions(
        combine=Combine(args.combine),
        default_decision=Default(args.default_decision),
        decode_failures_to_policies=args.decode_failures_to_policies,
    )
    with DecisionPath(policies, options, decompress=args.decode_content_encoding) as path:
        decision = path.decide(check_request)
    json.dump(describe(decision), out, indent=2)
    out.write("\n")
    return EXIT_ALLOW if decision.allowed else EXIT_DENY


def _check_remote(server: str, check_request: Any, out: TextIO) -> int:
    """Ask a running server, exactly as Envoy would, and print what it answered."""
    with grpc.insecure_channel(server) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        response = stub.Check(check_request, timeout=10)
    json.dump(
        {
            "allowed": response.status.code == 0,
            "check_response": json_format.MessageToDict(response, preserving_proto_field_name=True),
        },
        out,
        indent=2,
    )
    out.write("\n")
    return EXIT_ALLOW if response.status.code == 0 else EXIT_DENY


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"the server did not answer: {exc.code().name}: {exc.details()}"
    return str(exc)


def describe(decision: Decision) -> dict[str, Any]:
    """The decision as JSON: the verdict, who made it, and the CheckResponse Envoy would get."""
    return {
        "allowed": decision.allowed,
        "decided_by": str(decision.decided_by),
        "policy": decision.policy,
        "validation_index": decision.validation_index,
        "reason": decision.reason,
        "http_status": decision.http_status if not decision.allowed else 200,
        "dry_run": [
            {
                "policy": d.policy,
                "allowed": d.allowed,
                "http_status": d.http_status,
                "reason": d.reason,
            }
            for d in decision.dry_run
        ],
        "check_response": json_format.MessageToDict(
            response_from_decision(decision), preserving_proto_field_name=True
        ),
    }
