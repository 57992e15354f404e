"""Masking of credentials before anything reaches an audit line or a metric label.

Two independent nets, because either alone misses cases: a key that names a secret masks its
whole value whatever it looks like (``{"password": "hunter2"}``), and a value that looks like a
credential is masked wherever it appears, under any key or inside free text (``"Bearer abc..."``,
a JWT, a GitHub token pasted into an issue body). Over-masking costs a little audit detail;
under-masking leaks a credential into log storage that many more people can read, so the rules
lean towards masking.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MASK = "[REDACTED]"

# Matched against the key lower-cased with everything but letters and digits removed, so that
# api_key, API-Key and apiKey are one name.
_SECRET_KEY_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "apikey",
    "accesskey",
    "privatekey",
    "signingkey",
    "encryptionkey",
    "sshkey",
    "masterkey",
    "authorization",
    "cookie",
    "authkey",
    "credential",
    "session",
    "dpop",
    "bearer",
    "jwt",
    "signature",
    "csrf",
    "xsrf",
)
_SECRET_KEYS_EXACT = frozenset({"auth", "pwd", "pat", "pin", "key", "otp", "totp", "hotp"})
_NON_ALNUM = re.compile(r"[^a-z0-9]")

_TOKEN68 = r"[A-Za-z0-9._~+/=-]"
_TOKEN_PREFIXES = (
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "gldt-",
    "glrt-",
    "glptt-",
    "glcbt-",
    "glsoat-",
    "glft-",
    "sk-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "xox",
    "xapp-",
    "akia",
    "asia",
    "abia",
    "acca",
    "aiza",
    "ya29.",
    "hf_",
    "npm_",
    "pypi-",
    "shpat_",
    "shpca_",
    "shppa_",
    "shpss_",
    "_v1_",
    "sg.",
    "glsa_",
    "lin_api_",
    "atatt",
)


@dataclass(frozen=True, slots=True)
class _Rule:
    # Lower-case substrings one of which every match contains: a substring test is far cheaper
    # than a regex search, so a rule's pattern only runs when one of them is present.
    triggers: tuple[str, ...]
    pattern: re.Pattern[str]
    replacement: str


_RULES: tuple[_Rule, ...] = (
    # PEM private keys, also when the END line was cut off.
    _Rule(
        ("private key",),
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        MASK,
    ),
    # Header lines pasted into text: everything after the colon.
    _Rule(
        ("authorization", "cookie", "dpop", "api-key", "auth-token"),
        re.compile(
            r"(?im)\b((?:proxy-)?authorization|(?:set-)?cookie|dpop|x-api-key|api-key|x-auth-token)"
            r"(\s*:\s*)[^\r\n]*"
        ),
        rf"\1\2{MASK}",
    ),
    # HTTP authentication schemes.
    _Rule(
        ("bearer", "dpop"), re.compile(rf"(?i)\b(bearer|dpop)(\s+){_TOKEN68}{{8,}}"), rf"\1\2{MASK}"
    ),
    _Rule(("basic",), re.compile(r"\b(Basic)(\s+)[A-Za-z0-9+/]{8,}={0,2}"), rf"\1\2{MASK}"),
    _Rule(
        ("digest", "negotiate", "ntlm"),
        re.compile(r"\b(Digest|Negotiate|NTLM)(\s+)[^\r\n]{8,}"),
        rf"\1\2{MASK}",
    ),
    # JWS (three parts) and JWE (five parts).
    _Rule(
        ("eyj",),
        re.compile(
            r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"
        ),
        MASK,
    ),
    # Well-known token formats, by their published prefixes.
    _Rule(
        _TOKEN_PREFIXES,
        re.compile(
            r"\b(?:"
            r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
            r"|gl(?:pat|dt|rt|ptt|cbt|soat|ft)-[A-Za-z0-9_-]{16,}"
            r"|sk-[A-Za-z0-9_-]{16,}|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}"
            r"|xox[abposre]-[A-Za-z0-9-]{20,}|xapp-[A-Za-z0-9-]{20,}"
            r"|(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}"
            r"|AIza[A-Za-z0-9_-]{35,}|ya29\.[A-Za-z0-9_-]{20,}"
            r"|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{30,}|pypi-[A-Za-z0-9_-]{40,}"
            r"|shp(?:at|ca|pa|ss)_[A-Fa-f0-9]{32}|do[opr]_v1_[a-f0-9]{40,}"
            r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}|glsa_[A-Za-z0-9_]{20,}"
            r"|lin_api_[A-Za-z0-9]{20,}|ATATT[A-Za-z0-9_=-]{20,}"
            r")"
        ),
        MASK,
    ),
    # Passwords in URLs: scheme://user:password@host.
    _Rule(("://",), re.compile(r"(://[^/\s:@]*:)[^/\s@]+@"), rf"\1{MASK}@"),
    # Credentials in query strings (?access_token=..., &key=..., &X-Amz-Signature=...).
    _Rule(
        (
            "token=",
            "secret=",
            "key=",
            "password=",
            "passwd=",
            "pwd=",
            "sig=",
            "signature=",
            "code=",
            "auth=",
            "x-amz-",
            "x-goog-",
        ),
        re.compile(
            r"(?i)([?&;](?:[a-z0-9_.-]*token|[a-z0-9_.-]*secret|api[_-]?key|key|password|passwd|pwd"
            r"|sig|signature|code|auth|x-amz-[a-z-]+|x-goog-[a-z-]+)=)[^&#\s]+"
        ),
        rf"\1{MASK}",
    ),
    # Assignments in free text: password=..., "token": "...", client_secret: ...
    _Rule(
        (
            "password",
            "passwd",
            "pwd",
            "secret",
            "token",
            "api_key",
            "api-key",
            "apikey",
            "private_key",
            "private-key",
            "privatekey",
        ),
        re.compile(
            r"(?i)((?:password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key)"
            r"\"?\s*[=:]\s*\"?)[^\s\"',;&}]+"
        ),
        rf"\1{MASK}",
    ),
)
# A cut through a long token-like word leaves a prefix no rule recognises any more; it is masked
# when it mixes letters and digits, as generated credentials do and words and paths rarely do.
_CUT_WORD = re.compile(rf"{_TOKEN68}{{12,}}\Z")
_LETTER_AND_DIGIT = re.compile(r"[A-Za-z].*[0-9]|[0-9].*[A-Za-z]")
# Text this far past the length limit is still masked, so a credential that starts before the
# cut is seen whole by the rules; the rest of a long value is never scanned.
_LOOKAHEAD = 512


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a credential (its value is masked whatever it looks like)."""
    name = _NON_ALNUM.sub("", key.lower())
    return name in _SECRET_KEYS_EXACT or any(part in name for part in _SECRET_KEY_PARTS)


def mask_text(text: str) -> str:
    """Replace every credential-shaped part of ``text`` with ``[REDACTED]``."""
    # Every rule needs 16 characters, or whitespace, ':' or '=' to match: most short values
    # (methods, hosts, tool names, ids) skip the rules entirely.
    if len(text) < 16 and "=" not in text and ":" not in text and len(text.split()) < 2:
        return text
    lower = text.lower()
    for rule in _RULES:
        for trigger in rule.triggers:
            if trigger in lower:
                text = rule.pattern.sub(rule.replacement, text)
                break
    return text


def looks_secret(text: str) -> bool:
    """Whether ``text`` contains anything :func:`mask_text` would mask."""
    return mask_text(text) != text


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one audit line readable and cheap, whatever the request carried."""

    max_value_length: int = 256
    max_items: int = 64
    max_depth: int = 8


@dataclass(frozen=True, slots=True)
class Clipped:
    """A string cut to the part the redactor reads of it (the length limit plus the look-ahead)
    and the length it had: all an audit line needs of a long value."""

    head: str
    length: int


Text = str | Clipped

# Estimated memory, in bytes, of what a clipped value holds (CPython object sizes, rounded up):
# the audit queue is bounded by it.
STR_SIZE = 56
_CONTAINER = 64
_ENTRY = 104
_ITEM = 8
_SCALAR = 32
_ATOMS = (int, bool, type(None))


def text_size(value: Text) -> int:
    """Estimated memory of a (clipped) string: CPython stores up to 4 bytes a character."""
    if type(value) is Clipped:
        return _SCALAR + text_size(value.head)
    return STR_SIZE + (len(value) if value.isascii() else 4 * len(value))


class Clipper:
    """Cuts values to what :class:`Redactor` will read of them, without masking.

    The audit log clips on the thread that made the decision, so that its queue holds no more
    of a request than the line will show (a body of a few KiB can decode to megabytes of
    arguments); the writer thread masks later (:meth:`Redactor.masked`). The cuts are exactly
    the redactor's: items, depth, and strings beyond the length limit plus the look-ahead. A
    clipped key whose full name marks a secret has its value masked here already, since the
    writer sees only the key's head. Stateless, so any thread may use it.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.keep = limits.max_value_length + _LOOKAHEAD

    def cut(self, value: str) -> Clipped:
        """``value`` (longer than :attr:`keep`) clipped."""
        return Clipped(value[: self.keep], len(value))

    def text(self, value: str) -> Text:
        return value if len(value) <= self.keep else Clipped(value[: self.keep], len(value))

    def value(self, value: Any) -> tuple[Any, int]:
        """The clipped value and its estimated memory in bytes."""
        size = [0]
        return self._value(value, 0, size), size[0]

    def _value(self, value: Any, depth: int, size: list[int]) -> Any:
        kind = type(value)
        if kind is str:
            if len(value) <= self.keep:
                size[0] += STR_SIZE + (len(value) if value.isascii() else 4 * len(value))
                return value
            clipped = Clipped(value[: self.keep], len(value))
            size[0] += text_size(clipped)
            return clipped
        if kind is dict and depth < self.limits.max_depth:
            return self._mapping(value, depth, size)
        if kind is list and depth < self.limits.max_depth:
            return self._list(value, depth, size)
        if kind in _ATOMS or isinstance(value, bool | int | float):
            # Non-finite floats stay floats: the writer prints them, and exempts numbers under
            # "tokens" keys from masking as it does any number.
            size[0] += _SCALAR
            return value
        if isinstance(value, str):
            return self._value(str(value), depth, size)
        if depth >= self.limits.max_depth:
            return "[...]"
        if isinstance(value, Mapping):
            return self._mapping(value, depth, size)
        if isinstance(value, list | tuple):
            return self._list(value, depth, size)
        return self._value(str(value), depth, size)

    # The two container walks take short strings and atoms inline: an argument map of a few
    # plain values is then one call, not one per value.

    def _mapping(self, value: Mapping[Any, Any], depth: int, size: list[int]) -> dict[Text, Any]:
        keep, most = self.keep, self.limits.max_items
        out: dict[Text, Any] = {}
        used = _CONTAINER + _ENTRY * (len(value) if len(value) <= most else most + 1)
        for index, (key, item) in enumerate(value.items()):
            if index == most:
                out["..."] = f"[{len(value) - most} more]"
                break
            name = key if type(key) is str else str(key)
            if len(name) > keep:
                clipped = Clipped(name[:keep], len(name))
                used += text_size(clipped)
                # The writer sees only the head: judge the full name here.
                out[clipped] = MASK if _masks(name, item) else self._value(item, depth + 1, size)
                continue
            used += STR_SIZE + (len(name) if name.isascii() else 4 * len(name))
            kind = type(item)
            if kind is str and len(item) <= keep:
                used += STR_SIZE + (len(item) if item.isascii() else 4 * len(item))
                out[name] = item
            elif kind in _ATOMS:
                used += _SCALAR
                out[name] = item
            else:
                out[name] = self._value(item, depth + 1, size)
        size[0] += used
        return out

    def _list(self, value: list[Any] | tuple[Any, ...], depth: int, size: list[int]) -> list[Any]:
        keep, most = self.keep, self.limits.max_items
        items: list[Any] = []
        used = _CONTAINER + _ITEM * (len(value) if len(value) <= most else most + 1)
        for item in value[:most]:
            kind = type(item)
            if kind is str and len(item) <= keep:
                used += STR_SIZE + (len(item) if item.isascii() else 4 * len(item))
                items.append(item)
            elif kind in _ATOMS:
                used += _SCALAR
                items.append(item)
            else:
                items.append(self._value(item, depth + 1, size))
        if len(value) > most:
            items.append(f"[{len(value) - most} more]")
        size[0] += used
        return items


def _masks(key: str, value: Any) -> bool:
    """Whether the value under ``key`` is masked whatever it holds."""
    # Counts such as max_tokens are not credentials; a credential is never a bare number.
    if isinstance(value, int | float) and not isinstance(value, bool) and "tokens" in key:
        return False
    return is_secret_key(key)


class Redactor:
    """Masks and bounds values for the audit log.

    Hosts, user agents, policy and tool names and argument keys repeat from line to line, so
    short strings are memoised; the memo is bounded and lives as long as the audit log. Not
    thread-safe: one writer thread owns it.
    """

    _MEMO_SIZE = 4096
    _MEMO_MAX_LENGTH = 128

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.clipper = Clipper(limits)
        self._texts: dict[str, str] = {}
        self._keys: dict[str, bool] = {}

    def text(self, value: Text) -> str:
        """Mask, then truncate: masking first so that a cut cannot hide a secret from the rules."""
        if isinstance(value, Clipped):
            return self._text(value.head, value.length)
        if len(value) > self._MEMO_MAX_LENGTH:
            return self._text(value, len(value))
        done = self._texts.get(value)
        if done is None:
            if len(self._texts) >= self._MEMO_SIZE:
                self._texts.clear()
            done = self._texts[value] = self._text(value, len(value))
        return done

    def value(self, value: Any) -> Any:
        """A JSON-safe copy of ``value`` with secrets masked and sizes bounded."""
        return self.masked(self.clipper.value(value)[0])

    def masked(self, clipped: Any) -> Any:
        """A value :class:`Clipper` cut, masked: what :meth:`value` gives for the original."""
        kind = type(clipped)
        if kind is str or kind is Clipped:
            return self.text(clipped)
        if kind is dict:
            out: dict[str, Any] = {}
            for key, item in clipped.items():
                # A clipped key was judged on its full name by the clipper.
                secret = type(key) is str and self._masks(key, item)
                out[self.text(key)] = MASK if secret else self.masked(item)
            return out
        if kind is list:
            return [self.masked(item) for item in clipped]
        if isinstance(clipped, float) and not math.isfinite(clipped):
            return str(clipped)
        return clipped

    def _masks(self, key: str, value: Any) -> bool:
        if isinstance(value, int | float) and not isinstance(value, bool) and "tokens" in key:
            return False
        secret = self._keys.get(key)
        if secret is None:
            if len(self._keys) >= self._MEMO_SIZE:
                self._keys.clear()
            secret = self._keys[key] = is_secret_key(key)
        return secret

    def _text(self, value: str, length: int) -> str:
        limit = self.limits.max_value_length
        if length <= limit:
            return mask_text(value)
        masked = mask_text(value[: limit + _LOOKAHEAD])
        if len(masked) <= limit:
            return masked
        start = masked.rfind(MASK, 0, limit)
        if start >= 0 and start + len(MASK) > limit:
            limit = start + len(MASK)
        kept = masked[:limit]
        cut = _CUT_WORD.search(kept)
        if cut is not None and _LETTER_AND_DIGIT.search(cut.group()):
            kept = kept[: cut.start()] + MASK
        return f"{kept}...[{length} chars]"
