"""Command line: ``authz-server serve | check | validate | test``, and the operator's
``revoke | revocations | approvals | approve | reject`` (``oversight/cli.py``).

Every ``serve`` flag also reads an ``AUTHZ_*`` environment variable (the flag wins), so the same
image runs from a Kubernetes manifest, a systemd unit or a shell. A variable that does not hold a
number where one is expected is a usage error naming the variable (exit 2), and only for the
command that reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz_server import __version__
from authz_server.config import (
    DEFAULT_DISPATCH,
    DISPATCH_MODES,
    Address,
    ConfigError,
    ServeConfig,
)

log = logging.getLogger("authz_server")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AUTHZ_{name}", default)


def _env_flag(name: str) -> bool:
    return _env(name, "").strip().lower() in ("1", "true", "yes", "on")


def seconds(text: str) -> float:
    """A duration in seconds: a finite number (``inf`` would overflow the gRPC options)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


seconds.__name__ = "seconds"  # argparse names the type in its error: "invalid seconds value"


@dataclass(frozen=True)
class _FromEnvironment:
    """A default read from ``AUTHZ_<name>``, converted once the command is known, so that a bad
    value fails only the command that uses it, with an error naming the variable."""

    variable: str
    text: str
    convert: Callable[[str], Any]


def _env_number(name: str, convert: Callable[[str], Any], default: Any) -> Any:
    text = os.environ.get(f"AUTHZ_{name}", "")
    if not text:
        return default
    return _FromEnvironment(f"AUTHZ_{name}", text, convert)


def _resolve_environment(args: argparse.Namespace) -> str | None:
    """Convert the defaults read from the environment; the error for the first bad one."""
    for dest, value in vars(args).items():
        if isinstance(value, _FromEnvironment):
            try:
                setattr(args, dest, value.convert(value.text))
            except ValueError:
                kind = getattr(value.convert, "__name__", "number")
                return f"{value.variable}: invalid {kind} value {value.text!r}"
    return None


class _Parser(argparse.ArgumentParser):
    """Resolves the environment defaults of the command that was parsed; a bad one is a usage
    error on one line (exit 2). Sub-commands are parsers of this class too."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        error = _resolve_environment(parsed)
        if error is not None:
            self.exit(2, f"authz-server: {error}\n")
        return parsed, extras


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--combine",
        choices=("deny-overrides", "first-match"),
        default=_env("COMBINE", "deny-overrides"),
        help="how decisions of several policies combine (env AUTHZ_COMBINE; "
        "default deny-overrides; first-match is Kyverno's behaviour)",
    )
    parser.add_argument(
        "--default-decision",
        choices=("deny", "allow"),
        default=_env("DEFAULT_DECISION", "deny"),
        help="decision when no policy decides (env AUTHZ_DEFAULT_DECISION; default deny)",
    )
    parser.add_argument(
        "--decode-failures-to-policies",
        action="store_true",
        default=_env_flag("DECODE_FAILURES_TO_POLICIES"),
        help="hand requests whose MCP body fails to decode to the policies instead of denying "
        "them outright (env AUTHZ_DECODE_FAILURES_TO_POLICIES)",
    )
    parser.add_argument(
        "--decode-content-encoding",
        action="store_true",
        default=_env_flag("DECODE_CONTENT_ENCODING"),
        help="undo a request's Content-Encoding before judging the body; only for an upstream "
        "that decompresses request bodies itself (the MCP SDKs do not). A body that is also "
        "JSON as sent is then refused (env AUTHZ_DECODE_CONTENT_ENCODING)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="authz-server",
        description="External authorization for MCP traffic: Envoy ext_authz v3 over gRPC and "
        "a plain-HTTP authorizer, Kyverno-style CEL ValidatingPolicy rules.",
    )
    parser.add_argument("--version", action="version", version=f"authz-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve Envoy's Authorization/Check over gRPC and the HTTP authorizer"
    )
    serve.add_argument(
        "--policies",
        type=Path,
        default=_env("POLICIES", "") or None,
        required=not _env("POLICIES", ""),
        help="directory of policy YAML files, watched for changes (env AUTHZ_POLICIES)",
    )
    serve.add_argument(
        "--grpc-address",
        default=_env("GRPC_ADDRESS", "0.0.0.0:9000"),
        help="gRPC listen address (env AUTHZ_GRPC_ADDRESS; default 0.0.0.0:9000)",
    )
    serve.add_argument(
        "--http-address",
        default=_env("HTTP_ADDRESS", "0.0.0.0:9001"),
        help="address of /metrics, /healthz, /readyz "
        "(env AUTHZ_HTTP_ADDRESS; default 0.0.0.0:9001)",
    )
    serve.add_argument(
        "--http-authz-address",
        default=_env("HTTP_AUTHZ_ADDRESS", "0.0.0.0:9003"),
        help="address of the HTTP authorizer, which judges any request it receives with the "
        "HTTP-mode policies (Envoy http_service, agentgateway's HTTP protocol, Kyverno's HTTP "
        "clients); empty: off (env AUTHZ_HTTP_AUTHZ_ADDRESS; default 0.0.0.0:9003)",
    )
    serve.add_argument(
        "--http-authz-nested-request",
        action="store_true",
        default=_env_flag("HTTP_AUTHZ_NESTED_REQUEST"),
        help="the body of each request to the HTTP authorizer is the raw HTTP request to judge, "
        "as Kyverno's --nested-request (env AUTHZ_HTTP_AUTHZ_NESTED_REQUEST)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=_env_number("WORKERS", int, 1),
        help="serving processes sharing the ports (env AUTHZ_WORKERS; default 1)",
    )
    serve.add_argument(
        "--max-receive-bytes",
        type=int,
        default=_env_number("MAX_RECEIVE_BYTES", int, 8 * 1024 * 1024),
        help="largest CheckRequest accepted, body included "
        "(env AUTHZ_MAX_RECEIVE_BYTES; default 8 MiB)",
    )
    serve.add_argument(
        "--grace-period",
        type=seconds,
        default=_env_number("GRACE_PERIOD", seconds, 15.0),
        help="seconds a stopping worker keeps answering queued and in-flight checks "
        "(env AUTHZ_GRACE_PERIOD; default 15)",
    )
    serve.add_argument(
        "--max-connection-age",
        type=seconds,
        default=_env_number("MAX_CONNECTION_AGE", seconds, 10.0),
        help="seconds after which a client connection is asked (GOAWAY) to reconnect, "
        "spreading load over workers and letting a stopping worker drain; 0 never "
        "(env AUTHZ_MAX_CONNECTION_AGE; default 10)",
    )
    serve.add_argument(
        "--audit-log",
        default=_env("AUDIT_LOG", "-"),
        help="where audit lines go: - for stdout, or a file appended to "
        "(env AUTHZ_AUDIT_LOG; default -)",
    )
    serve.add_argument(
        "--audit-max-value-length",
        type=int,
        default=_env_number("AUDIT_MAX_VALUE_LENGTH", int, 256),
        help="longest argument value kept in an audit line before it is cut "
        "(env AUTHZ_AUDIT_MAX_VALUE_LENGTH; default 256)",
    )
    serve.add_argument(
        "--metrics-tool-limit",
        type=int,
        default=_env_number("METRICS_TOOL_LIMIT", int, 100),
        help="distinct tool names a worker labels in metrics before folding "
        "the rest into 'other' (env AUTHZ_METRICS_TOOL_LIMIT; default 100)",
    )
    serve.add_argument(
        "--max-worker-rss-mib",
        type=int,
        default=_env_number("MAX_WORKER_RSS_MIB", int, 512),
        help="replace a worker whose resident memory passes this many MiB, without dropping "
        "checks; 0 disables (env AUTHZ_MAX_WORKER_RSS_MIB; default 512)",
    )
    serve.add_argument(
        "--state",
        default=_env("STATE", "") or None,
        help="the state store shared by workers and replicas (DPoP replay cache): "
        "sqlite:///PATH or redis://[user:pass@]host:port/db (rediss:// for TLS) "
        "(env AUTHZ_STATE; default a SQLite file in $AUTHZ_STATE_DIR, $STATE_DIRECTORY, "
        "/var/lib/authz-server as root, else ~/.local/state/authz-server)",
    )
    serve.add_argument(
        "--admin-address",
        default=_env("ADMIN_ADDRESS", "127.0.0.1:9002"),
        help="address of the admin page and API (approvals, revocations); served only with "
        "--admin-token-file, which any address but loopback requires; empty: off "
        "(env AUTHZ_ADMIN_ADDRESS; default 127.0.0.1:9002)",
    )
    serve.add_argument(
        "--admin-token-file",
        type=Path,
        default=_env("ADMIN_TOKEN_FILE", "") or None,
        help="file holding the admin token, needed by every admin API call and to log in to "
        "the page (env AUTHZ_ADMIN_TOKEN_FILE)",
    )
    serve.add_argument(
        "--admin-public-url",
        default=_env("ADMIN_PUBLIC_URL", ""),
        help="where people reach the admin page: the base of the approval links sent to agents "
        "(env AUTHZ_ADMIN_PUBLIC_URL; default http://ADMIN_ADDRESS)",
    )
    serve.add_argument(
        "--approval-ttl",
        type=seconds,
        default=_env_number("APPROVAL_TTL", seconds, 600.0),
        help="seconds an approval lives, from the first refused call: a granted one lets one "
        "matching call through within it (env AUTHZ_APPROVAL_TTL; default 600)",
    )
    serve.add_argument(
        "--ext-proc-max-body-bytes",
        type=int,
        default=_env_number("EXT_PROC_MAX_BODY_BYTES", int, 4 * 1024 * 1024),
        help="ext_proc: the largest list response (JSON body, or one SSE event) held to be "
        "filtered (env AUTHZ_EXT_PROC_MAX_BODY_BYTES; default 4 MiB)",
    )
    serve.add_argument(
        "--ext-proc-oversize",
        default=_env("EXT_PROC_OVERSIZE", "deny"),
        choices=("deny", "pass"),
        help="ext_proc: a larger list response is refused (deny, fail closed) or passed on "
        "unfiltered (pass) (env AUTHZ_EXT_PROC_OVERSIZE; default deny)",
    )
    serve.add_argument(
        "--ext-proc-streams",
        type=int,
        default=_env_number("EXT_PROC_STREAMS", int, 128),
        help="ext_proc streams (HTTP exchanges in flight) one worker serves at once; more are "
        "refused, and the gateway fails them closed (env AUTHZ_EXT_PROC_STREAMS; default 128)",
    )
    serve.add_argument(
        "--dispatch",
        default=_env("DISPATCH", DEFAULT_DISPATCH),
        choices=DISPATCH_MODES,
        help="where a check is decided: inline on the gRPC thread that received it, or handed "
        f"to one decision thread (thread) (env AUTHZ_DISPATCH; default {DEFAULT_DISPATCH})",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
        help="log level (env AUTHZ_LOG_LEVEL; default info)",
    )
    _add_engine_options(serve)

    check = commands.add_parser("check", help="decide one CheckRequest given as proto-JSON")
    check.add_argument(
        "--policies", type=Path, help="decide offline with the policies in this directory"
    )
    check.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="instead, send the request to a running authz-server over gRPC, as Envoy does",
    )
    check.add_argument(
        "--request",
        required=True,
        help="file with a CheckRequest in Envoy's proto-JSON form; - for stdin",
    )
    _add_engine_options(check)

    validate = commands.add_parser("validate", help="load and compile every policy in DIR")
    validate.add_argument("directory", type=Path)

    test = commands.add_parser("test", help="run the policy test files in DIR")
    test.add_argument("directory", type=Path)

    from authz_server.oversight import cli as oversight_cli

    oversight_cli.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        if args.command in ("validate", "test", "check"):
            from authz_server import commands

            return commands.run(args)
        # The operator's commands load only the store: quick, and usable with no policies.
        from authz_server.oversight import cli as oversight_cli

        return oversight_cli.run(args)
    except BrokenPipeError:
        # The reader went away (`authz-server validate DIR | head`): stop quietly, and keep the
        # interpreter's final flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The settings of ``serve`` from its parsed flags (and the environment they default to)."""
    return ServeConfig(
        policies=args.policies,
        grpc_address=Address.parse(args.grpc_address),
        http_address=Address.parse(args.http_address),
        workers=args.workers,
        max_receive_bytes=args.max_receive_bytes,
        grace_period=args.grace_period,
        max_connection_age=args.max_connection_age,
        combine=args.combine,
        default_decision=args.default_decision,
        decode_failures_to_policies=args.decode_failures_to_policies,
        decode_content_encoding=args.decode_content_encoding,
        log_level=args.log_level,
        audit_log=args.audit_log,
        audit_max_value_length=args.audit_max_value_length,
        metrics_tool_limit=args.metrics_tool_limit,
        max_worker_rss_mib=args.max_worker_rss_mib,
        state=args.state,
        admin_address=Address.parse(args.admin_address) if args.admin_address else None,
        admin_token_file=args.admin_token_file,
        admin_public_url=args.admin_public_url,
        approval_ttl=args.approval_ttl,
        http_authz_address=(
            Address.parse(args.http_authz_address) if args.http_authz_address else None
        ),
        http_authz_nested_request=args.http_authz_nested_request,
        ext_proc_max_body_bytes=args.ext_proc_max_body_bytes,
        ext_proc_oversize=args.ext_proc_oversize,
        ext_proc_streams=args.ext_proc_streams,
        dispatch=args.dispatch,
        reuse_port=_env_flag("REUSE_PORT"),
    )


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = serve_config(args)
    except ConfigError as exc:
        print(f"authz-server: {exc}", file=sys.stderr)
        return 2
    if config.admin_address and config.admin_token_file:
        from authz_server.oversight.admin import AdminError, read_token

        try:
            read_token(config.admin_token_file)
        except AdminError as exc:
            print(f"authz-server: --admin-token-file: {exc}", file=sys.stderr)
            return 2
    from authz_server.state import StoreUrlError, default_url, parse_url

    try:
        parse_url(config.state if config.state is not None else default_url())
    except StoreUrlError as exc:
        print(f"authz-server: --state: {exc}", file=sys.stderr)
        return 2
    from authz_server.serve.workers import WorkerControl, supervise

    control = WorkerControl.from_environment()
    if config.supervised and not control.attached:
        return supervise(config)
    from authz_server.pipeline import PolicyAuthorizer
    from authz_server.serve.server import run

    authorizer = PolicyAuthorizer.from_config(config)
    # What exists now (modules, gRPC, protobuf descriptors: some 40,000 objects) lives as long
    # as the process. Frozen, it is out of the cyclic collector's sight, and the full
    # collections that come every few thousand checks walk only what checks and policy sets
    # allocated, instead of stalling a check for milliseconds each.
    gc.collect()
    gc.freeze()
    return asyncio.run(run(config, authorizer, control))


if __name__ == "__main__":
    sys.exit(main())
