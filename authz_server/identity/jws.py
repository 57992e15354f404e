"""Compact JWS parsing, strictly: the shape checks that run before any key or signature work.

RFC 8725bis: a compact JWS is three base64url segments joined by dots, nothing else. JSON inside
is parsed strictly too: a duplicate member name, a non-finite number or a non-object is refused
(RFC 7515 §4 lets a parser reject duplicates; accepting them would let two parsers disagree on
which value counts).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from authz_server.identity.errors import IdentityError

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


class JwsFormatError(IdentityError):
    """Not a well-formed compact JWS (the message names the defect, never the content)."""


@dataclass(frozen=True, slots=True)
class CompactJws:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def is_compact(text: str) -> bool:
    """True for three non-empty base64url segments joined by dots (the J1 character set)."""
    return _COMPACT.fullmatch(text) is not None


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# For a segment of length 4n+2 (4n+3), the last character carries 4 (2) unused bits, which
# must be zero: otherwise several strings decode to the same bytes, and a token could be
# altered without touching its signature.
_SPARE_BITS = {2: 0b1111, 3: 0b11}


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded, canonical base64url, refusing any character outside the alphabet."""
    rest = len(segment) % 4
    if rest == 1 or _SEGMENT.fullmatch(segment) is None:
        raise JwsFormatError("invalid base64url")
    if rest and _ALPHABET.index(segment[-1]) & _SPARE_BITS[rest]:
        raise JwsFormatError("non-canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JwsFormatError("invalid base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JwsFormatError("duplicate JSON member")
    return result


def _no_constant(_name: str) -> Any:
    raise JwsFormatError("non-finite JSON number")


def json_object(data: bytes) -> dict[str, Any]:
    """Parse a JSON object strictly (UTF-8, no duplicate members, no NaN/Infinity)."""
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except JwsFormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JwsFormatError("invalid JSON") from None
    if not isinstance(value, dict):
        raise JwsFormatError("not a JSON object")
    return value


def parse(text: str) -> CompactJws:
    """Split and decode a compact JWS; no signature is checked here."""
    if not is_compact(text):
        raise JwsFormatError("not a compact JWS")
    header_b64, payload_b64, signature_b64 = text.split(".")
    header = json_object(b64url_decode(header_b64))
    payload = json_object(b64url_decode(payload_b64))
    signature = b64url_decode(signature_b64)
    return CompactJws(
        header=header,
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )


def is_number(value: Any) -> bool:
    """A JSON number usable as a NumericDate: int or finite float, never a bool."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value == value and abs(value) != float("inf")
    )
