"""URL normalisation for comparing a DPoP proof's ``htu`` with the request (RFC 9449 §4.3 item 9).

RFC 9449 asks for RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalisation: lower-case
scheme and host, upper-case percent-encoding hex digits, decode percent-encoded unreserved
characters, remove dot segments, drop the default port, an empty path becomes ``/``. Query and
fragment are dropped, as the RFC ignores them.
"""

from __future__ import annotations

import re

_DEFAULT_PORT = {"http": 80, "https": 443}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:\?[^#]*)?(?:#.*)?", re.S)
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]@]+)(?::(\d*))?")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters a path may hold as they are (RFC 3986 pchar and "/"); anything else is malformed.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
MAX_URL = 8192


def _percent(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4, on the segment list.
    output: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    result = "/".join(output)
    return result if result.startswith("/") else "/" + result


def normalize_url(url: str) -> str | None:
    """``scheme://host[:port]/path`` normalised, without query and fragment; None for anything
    that is not an absolute http(s) URL with a host and a well-formed path."""
    if len(url) > MAX_URL:
        return None
    match = _URL.fullmatch(url)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme not in _DEFAULT_PORT:
        return None
    host_port = _HOST_PORT.fullmatch(match.group(2))
    if host_port is None:
        return None
    host = _PERCENT.sub(_percent, host_port.group(1)).lower()
    port = host_port.group(2)
    authority = host
    if port:
        number = int(port)
        if number > 65535:
            return None
        if number != _DEFAULT_PORT[scheme]:
            authority = f"{host}:{number}"
    path = match.group(3)
    if _PATH.fullmatch(path) is None or "%" in _PERCENT.sub("", path):
        return None
    path = _remove_dot_segments(_PERCENT.sub(_percent, path)) if path else "/"
    return f"{scheme}://{authority}{path}"
