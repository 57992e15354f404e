"""SPIFFE ID syntax (spiffe/spiffe ``standards/SPIFFE-ID.md`` §2).

``spiffe://<trust domain><path>``: the scheme compares case-insensitively; the trust domain holds
only lowercase letters, digits, ``.``, ``-`` and ``_`` (no port, no userinfo, no percent-encoding,
at most 255 bytes); the path is ``/``-separated segments of ``[A-Za-z0-9._-]``, none empty, ``.``
or ``..``, no trailing ``/``; no query or fragment; at most 2048 bytes in all. A workload's ID
(what a peer presents) has a non-empty path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ID = 2048
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PREFIX = "spiffe://"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_PREFIX}{self.trust_domain}{self.path}"


def valid_trust_domain(name: str) -> bool:
    return len(name) <= MAX_TRUST_DOMAIN and _TRUST_DOMAIN.fullmatch(name) is not None


def is_spiffe_uri(text: str) -> bool:
    return text[: len(_PREFIX)].lower() == _PREFIX


def parse_spiffe_id(text: str) -> SpiffeId | None:
    """The workload SPIFFE ID in ``text``, or None when it breaks a rule of §2."""
    if len(text.encode("utf-8")) > MAX_ID or not is_spiffe_uri(text):
        return None
    rest = text[len(_PREFIX) :]
    slash = rest.find("/")
    if slash <= 0:
        return None
    domain, path = rest[:slash], rest[slash:]
    if not valid_trust_domain(domain):
        return None
    segments = path[1:].split("/")
    for segment in segments:
        if _SEGMENT.fullmatch(segment) is None or segment in (".", ".."):
            return None
    return SpiffeId(domain, path)
