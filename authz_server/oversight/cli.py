"""The operator's commands: ``revoke``, ``revocations [remove ID]``, ``approvals``, ``approve``,
``reject``. They act on the state store directly (``--state`` or ``AUTHZ_STATE``), so they work
with every server down, or from a laptop holding the Redis URL.

Exit status: 0 done; 1 no such revocation or approval, or the approval is not pending; 2 a usage
error or a store that cannot be used (the message never contains the store's password).
Approval fields come from agents (tool names, arguments): text output escapes every character a
terminal could act on, and ``--json`` escapes everything outside ASCII.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import sys
import time
from typing import Any, TextIO

from authz_server.oversight.approvals import Approval, Approvals
from authz_server.oversight.errors import (
    ApprovalNotFound,
    ApprovalNotPending,
    OversightError,
    RevocationError,
)
from authz_server.oversight.revocations import Revocation, Revocations, parse_duration
from authz_server.state import StoreError, StoreUnavailable, StoreUrlError, open_store

COMMANDS = ("revoke", "revocations", "approvals", "approve", "reject")
EXIT_OK, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2
ARGUMENTS_SHOWN = 500  # characters of an approval's arguments in the text listing


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except RevocationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_duration.__name__ = "duration"


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _add_state(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    parser.add_argument(
        "--state",
        metavar="URL",
        # A nested command leaves the value its parent parsed alone unless given itself.
        default=argparse.SUPPRESS if nested else (os.environ.get("AUTHZ_STATE") or None),
        help="the state store: sqlite:///PATH or redis://[user:pass@]host:port/db "
        "(env AUTHZ_STATE; default the SQLite file of the state directory)",
    )


def add_parsers(commands: Any) -> None:
    """Add the oversight commands to the top-level sub-command set."""
    revoke = commands.add_parser(
        "revoke", help="stop an agent at once on every server sharing the store; prints the id"
    )
    selector = revoke.add_mutually_exclusive_group(required=True)
    selector.add_argument("--subject", help="the verified token subject (sub)")
    selector.add_argument("--client-id", help="the OAuth client id (client_id / azp)")
    selector.add_argument("--spiffe-id", help="the SPIFFE ID of the client certificate")
    selector.add_argument("--key-thumbprint", help="the DPoP key's RFC 7638 thumbprint")
    selector.add_argument("--token-id", help="one token, by its jti")
    selector.add_argument("--everyone", action="store_true", help="every caller")
    revoke.add_argument("--issuer", help="with --subject: only this issuer's subject")
    revoke.add_argument(
        "--tool",
        dest="tools",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="only calls of these tools (repeatable; default every request)",
    )
    revoke.add_argument(
        "--for",
        dest="duration",
        type=_duration,
        metavar="DURATION",
        help="end it after this long: 90 (seconds), 30m, 2h, 7d, 1h30m (default until removed)",
    )
    revoke.add_argument("--reason", required=True, help="why; the agent is told this reason")
    revoke.add_argument("--by", default=_user(), help="who revokes (default the user name)")
    _add_state(revoke)

    revocations = commands.add_parser("revocations", help="list revocations, or remove one")
    revocations.add_argument("--json", action="store_true", help="print a JSON array")
    _add_state(revocations)
    actions = revocations.add_subparsers(dest="revocations_action", metavar="ACTION")
    remove = actions.add_parser("remove", help="end a revocation now")
    remove.add_argument("id", metavar="ID")
    _add_state(remove, nested=True)

    approvals = commands.add_parser("approvals", help="list pending approvals")
    approvals.add_argument("--json", action="store_true", help="print a JSON array")
    approvals.add_argument(
        "--all", action="store_true", help="also approved, rejected and used ones"
    )
    _add_state(approvals)

    approve = commands.add_parser("approve", help="let one call of a pending approval through")
    approve.add_argument("id", metavar="ID")
    approve.add_argument("--by", default=_user(), help="who approves (default the user name)")
    _add_state(approve)

    reject = commands.add_parser("reject", help="refuse a pending approval")
    reject.add_argument("id", metavar="ID")
    reject.add_argument("--by", default=_user(), help="who rejects (default the user name)")
    reject.add_argument("--reason", default="", help="told to the agent")
    _add_state(reject)


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run one oversight command; the exit status."""
    try:
        store = open_store(args.state)
    except StoreUrlError as exc:
        err.write(f"authz-server: --state: {exc}\n")
        return EXIT_ERROR
    try:
        return _COMMANDS[args.command](store, args, out, err)
    except StoreUnavailable as exc:
        err.write(f"authz-server {args.command}: the state store is unavailable: {exc}\n")
        return EXIT_ERROR
    except (OversightError, StoreError) as exc:
        err.write(f"authz-server {args.command}: {exc}\n")
        return EXIT_ERROR
    finally:
        store.close()


def _revoke(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    revocation = Revocations(store).add(
        subject=args.subject or "",
        issuer=args.issuer or "",
        client_id=args.client_id or "",
        spiffe_id=args.spiffe_id or "",
        key_thumbprint=args.key_thumbprint or "",
        token_id=args.token_id or "",
        everyone=args.everyone,
        tools=args.tools,
        for_seconds=args.duration,
        reason=args.reason,
        by=args.by,
    )
    out.write(f"{revocation.id}\n")
    return EXIT_OK


def _revocations(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    revocations = Revocations(store)
    if args.revocations_action == "remove":
        if revocations.remove(args.id):
            out.write(f"removed {_safe(args.id)}\n")
            return EXIT_OK
        err.write(f"authz-server revocations remove: no active revocation {_safe(args.id)}\n")
        return EXIT_NOT_FOUND
    found = revocations.list()
    if args.json:
        _json(out, [r.to_json() for r in found])
        return EXIT_OK
    if not found:
        out.write("no active revocations\n")
        return EXIT_OK
    now = time.time()
    rows = [("ID", "SELECTOR", "TOOLS", "ENDS", "BY", "REASON")]
    rows += [
        (
            r.id,
            _selector(r),
            ",".join(r.tools) or "all",
            "when removed" if r.expires is None else _when(r.expires, now),
            r.created_by or "-",
            r.reason,
        )
        for r in found
    ]
    _table(out, rows)
    return EXIT_OK


def _approvals(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    found = Approvals(store).list(None if args.all else "pending")
    if args.json:
        _json(out, [a.to_json() for a in found])
        return EXIT_OK
    if not found:
        out.write("no pending approvals\n" if not args.all else "no approvals\n")
        return EXIT_OK
    now = time.time()
    for approval in found:
        _describe(out, approval, now)
    return EXIT_OK


def _approve(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _decide(store, args, out, err, "approved")


def _reject(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _decide(store, args, out, err, "rejected")


def _decide(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO, to: str) -> int:
    approvals = Approvals(store)
    try:
        if to == "approved":
            approval = approvals.approve(args.id, by=args.by)
        else:
            approval = approvals.reject(args.id, by=args.by, reason=args.reason)
    except (ApprovalNotFound, ApprovalNotPending) as exc:
        err.write(f"authz-server {args.command}: {_safe(str(exc))}\n")
        return EXIT_NOT_FOUND
    out.write(f"{to} {approval.id}: {_safe(approval.mcp_method)} {_safe(approval.target)}\n")
    return EXIT_OK


_COMMANDS = {
    "revoke": _revoke,
    "revocations": _revocations,
    "approvals": _approvals,
    "approve": _approve,
    "reject": _reject,
}


def _safe(text: str) -> str:
    """``text`` with every character a terminal could act on (escapes, C1 controls, line
    breaks, bidirectional overrides) written as a ``\\x..``/``\\u....`` escape."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _json(out: TextIO, value: Any) -> None:
    json.dump(value, out, indent=2, ensure_ascii=True)
    out.write("\n")


def _selector(revocation: Revocation) -> str:
    name, value = revocation.selector
    if name == "everyone":
        return "everyone"
    issuer = f" (issuer {revocation.issuer})" if revocation.issuer else ""
    return f"{name}={value}{issuer}"


def _when(at: float, now: float) -> str:
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    left = at - now
    return f"{stamp} ({'in ' + _span(left) if left >= 0 else _span(-left) + ' ago'})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _table(out: TextIO, rows: list[tuple[str, ...]]) -> None:
    rows = [tuple(_safe(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def _describe(out: TextIO, approval: Approval, now: float) -> None:
    caller = ", ".join(f"{k} {v}" for k, v in approval.caller.items() if v) or "unauthenticated"
    arguments = json.dumps(approval.to_json()["arguments"], ensure_ascii=True)
    if len(arguments) > ARGUMENTS_SHOWN:
        arguments = arguments[:ARGUMENTS_SHOWN] + f"... ({len(arguments)} characters; --json)"
    lines = [
        f"{approval.id}  {approval.state}  requested {_span(max(0.0, now - approval.created))} "
        f"ago, expires {_when(approval.expires, now)}",
        f"  caller     {caller}",
        f"  call       {approval.mcp_method} {approval.target}",
        f"  arguments  {arguments}",
        f"  reason     {approval.reason}",
    ]
    if approval.decided_by or approval.decision_reason:
        lines.append(f"  decided    by {approval.decided_by} {approval.decision_reason}".rstrip())
    out.write("".join(_safe(line) + "\n" for line in lines))
