"""The admin page's HTML: a login form, and the approvals and revocations with their forms.

Server-rendered, no JavaScript, no asset from anywhere: the one stylesheet is inline and allowed
by its hash in the Content-Security-Policy (:data:`CSP`), so nothing else can run or load even if
an escape were missed. Every value that reaches the HTML goes through :func:`_e` first: tool
arguments, reasons and caller names are chosen by agents and callers, never trusted as markup.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from collections.abc import Iterable
from typing import Any

from authz_server.oversight.approvals import Approval
from authz_server.oversight.revocations import SELECTORS, Revocation

# Longest rendering of one approval's arguments; the rest is cut with a note (the API has all).
MAX_ARGUMENTS_SHOWN = 8000

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem 2rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;padding:.4rem}
tr+tr td{border-top:1px solid #eee}pre{margin:0;max-height:16rem;overflow:auto;white-space:pre-wrap;
word-break:break-all;background:#f6f6f6;padding:.3rem}form.inline{display:inline}
.flash{padding:.5rem;background:#e7f5e7}.error{padding:.5rem;background:#fbe3e3}
.focus{outline:2px solid #c80}label{display:block;margin:.3rem 0}
header{display:flex;justify-content:space-between;align-items:center}.muted{color:#666}
"""
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def age(seconds: float) -> str:
    """A short human age: ``40 s``, ``12 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def login(message: str = "", approval: str = "") -> str:
    """The login form. ``approval`` (an id already checked by the caller) comes back after
    logging in, so a link to one approval survives the login."""
    error = f'<p class="error">{_e(message)}</p>' if message else ""
    keep = f'<input type="hidden" name="approval" value="{_e(approval)}">' if approval else ""
    return _document(
        "authz-server admin: log in",
        "<h1>authz-server admin</h1>"
        f"{error}"
        '<form method="post" action="/login">'
        '<label>Admin token <input type="password" name="token" autocomplete="off" '
        "required autofocus></label>"
        '<label>Your name (recorded with your decisions) <input name="name" maxlength="64">'
        "</label>"
        f"{keep}"
        '<button type="submit">Log in</button></form>',
    )


def message(title: str, text: str) -> str:
    """A page that only says something (refusals, errors), with a way back."""
    return _document(
        f"authz-server admin: {title}",
        f'<h1>{_e(title)}</h1><p>{_e(text)}</p><p><a href="/">Back to the admin page</a></p>',
    )


def _caller(approval: Approval) -> str:
    parts = [
        f"{_e(name)}: {_e(value)}"
        for name, value in approval.caller.items()
        if value and name != "method"
    ]
    method = approval.caller.get("method", "")
    if method:
        parts.append(f'<span class="muted">({_e(method)})</span>')
    return "<br>".join(parts) or '<span class="muted">anonymous</span>'


def _arguments(approval: Approval) -> str:
    text = json.dumps(approval.to_json()["arguments"], indent=2, ensure_ascii=False, sort_keys=True)
    if len(text) > MAX_ARGUMENTS_SHOWN:
        rest = len(text) - MAX_ARGUMENTS_SHOWN
        text = f"{text[:MAX_ARGUMENTS_SHOWN]}\n… ({rest} more characters)"
    return f"<pre>{_e(text)}</pre>"


def _approval_row(approval: Approval, csrf: str, now: float, focus: str) -> str:
    base = f"/approvals/{_e(approval.id)}"
    if approval.state == "pending":
        actions = (
            f'<form class="inline" method="post" action="{base}/approve">{_csrf(csrf)}'
            '<button type="submit" name="approve">Approve</button></form> '
            f'<form class="inline" method="post" action="{base}/reject">{_csrf(csrf)}'
            '<input name="reason" placeholder="reason (told to the agent)" maxlength="1024"> '
            '<button type="submit" name="reject">Reject</button></form>'
        )
    else:
        by = f" by {_e(approval.decided_by)}" if approval.decided_by else ""
        actions = f"{_e(approval.state)}{by}"
    target = f"{_e(approval.target)}"
    if approval.mcp_method != "tools/call":
        target += f' <span class="muted">({_e(approval.mcp_method)})</span>'
    mark = ' class="focus"' if approval.id == focus else ""
    return (
        f'<tr id="approval-{_e(approval.id)}"{mark} data-id="{_e(approval.id)}">'
        f"<td>{_caller(approval)}</td><td>{target}</td><td>{_arguments(approval)}</td>"
        f"<td>{_e(approval.reason)}</td><td>{age(now - approval.created)}</td>"
        f"<td>{actions}</td></tr>"
    )


def _approvals(approvals: Iterable[Approval], csrf: str, now: float, focus: str) -> str:
    rows = "".join(_approval_row(a, csrf, now, focus) for a in approvals)
    if not rows:
        return '<p class="muted" id="no-approvals">No approval is waiting.</p>'
    return (
        '<table id="approvals"><tr><th>Caller</th><th>Tool</th><th>Arguments</th>'
        f"<th>Policy's reason</th><th>Age</th><th></th></tr>{rows}</table>"
    )


def _revocation_row(revocation: Revocation, csrf: str, now: float) -> str:
    field, value = revocation.selector
    who = f"{_e(field)}: {_e(value)}" if value else "everyone"
    if revocation.issuer:
        who += f'<br><span class="muted">issuer: {_e(revocation.issuer)}</span>'
    tools = ", ".join(_e(t) for t in revocation.tools) or "every request"
    ends = "when removed" if revocation.expires is None else f"in {age(revocation.expires - now)}"
    return (
        f'<tr id="revocation-{_e(revocation.id)}" data-id="{_e(revocation.id)}">'
        f"<td>{who}</td><td>{tools}</td><td>{_e(revocation.reason)}</td>"
        f"<td>{ends}</td><td>{_e(revocation.created_by)}</td>"
        f'<td><form method="post" action="/revocations/{_e(revocation.id)}/end">'
        f'{_csrf(csrf)}<button type="submit" name="end">End</button></form></td></tr>'
    )


def _revocations(revocations: Iterable[Revocation], csrf: str, now: float) -> str:
    rows = "".join(_revocation_row(r, csrf, now) for r in revocations)
    if not rows:
        return '<p class="muted" id="no-revocations">No revocation is active.</p>'
    return (
        '<table id="revocations"><tr><th>Stops</th><th>Tools</th><th>Reason</th><th>Ends</th>'
        f"<th>By</th><th></th></tr>{rows}</table>"
    )


def _add_revocation(csrf: str) -> str:
    options = "".join(f'<option value="{s}">{s}</option>' for s in (*SELECTORS, "everyone"))
    return (
        '<form id="add-revocation" method="post" action="/revocations">'
        f"{_csrf(csrf)}"
        f'<label>Stop <select name="selector">{options}</select> '
        '<input name="value" placeholder="value (not for everyone)" size="40"></label>'
        '<label>Issuer (only with subject) <input name="issuer" size="40"></label>'
        "<label>Only these tools (comma separated; empty: every request) "
        '<input name="tools" size="40"></label>'
        '<label>For (30m, 2h, 7d; empty: until ended) <input name="for" size="8"></label>'
        '<label>Reason <input name="reason" required size="60" maxlength="1024"></label>'
        '<button type="submit" name="revoke">Revoke</button></form>'
    )


def dashboard(
    *,
    csrf: str,
    name: str,
    approvals: Iterable[Approval],
    revocations: Iterable[Revocation],
    flash: str = "",
    error: str = "",
    focus: Approval | None = None,
    now: float | None = None,
) -> str:
    """The page of a logged-in person. ``focus``: the approval a link pointed at, shown first
    whatever its state."""
    now = time.time() if now is None else now
    notes = ""
    if flash:
        notes += f'<p class="flash" id="flash">{_e(flash)}</p>'
    if error:
        notes += f'<p class="error" id="error">{_e(error)}</p>'
    focused = ""
    if focus is not None:
        focused = (
            f"<h2>The approval you were sent to</h2>{_approvals([focus], csrf, now, focus.id)}"
        )
        approvals = [a for a in approvals if a.id != focus.id]
    return _document(
        "authz-server admin",
        "<header><h1>authz-server admin</h1>"
        f'<form method="post" action="/logout">{_csrf(csrf)}'
        f'<span class="muted">{_e(name)}</span> '
        '<button type="submit" name="logout">Log out</button></form></header>'
        f"{notes}{focused}"
        f"<h2>Pending approvals</h2>{_approvals(approvals, csrf, now, '')}"
        f"<h2>Active revocations</h2>{_revocations(revocations, csrf, now)}"
        f"<h2>Add a revocation</h2>{_add_revocation(csrf)}",
    )
