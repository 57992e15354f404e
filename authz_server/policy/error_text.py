"""What a policy's runtime error may say: the class of the error, never a value.

CEL's messages quote values (``Key not found in map : "<key>"``), and a function implemented in
Python reports its exception text, often a ``repr()`` of its arguments (a password, a JWT's
``kid``, a duplicate JSON key). The redactor cannot recognise a secret in that quoting, and the
reason travels to the client, the audit line and the log. So an error's message is reduced to
one of a fixed set of classes before anything sees it: the text a client reads is chosen here,
never copied from the error.
"""

from __future__ import annotations

import re

from authz_server.mcp.message import FailureReason

EVALUATION_ERROR = "evaluation error"

# In order; the first pattern found anywhere in the message names its class.
_CLASSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), name)
    for pattern, name in (
        (r"key not found|no such key", "no such key"),
        (r"no matching overload", "no matching overload"),
        (r"\b(divide|division|modulus|modulo) by zero", "division by zero"),
        (r"overflow", "overflow"),
        (r"index error|index out of (range|bounds)", "index out of range"),
        (r"no such field", "no such field"),
        (r"no value with name|undeclared reference", "unbound name"),
        (r"cannot convert|conversion (error|failed)", "conversion failed"),
        (r"regular expression", "invalid regular expression"),
        (r"base64", "invalid base64"),
    )
)

# Functions of this project's CEL libraries prefix their errors with their name. Their own
# phrases below are fixed texts (no values); anything else they say becomes ``failed`` (or the
# function's generic phrase).
_LIBRARY = re.compile(
    r"^(jwt\.Decode|jwks\.Parse|jwks\.Fetch|jwks|json\.Unmarshal|mcp\.[A-Za-z]+): (.*)$", re.S
)
_FIXED_PHRASES: dict[str, frozenset[str]] = {
    "jwt.Decode": frozenset(
        {
            "malformed token",
            "bad signature",
            "algorithm not allowed",
            "no matching key",
            "invalid token",
        }
    ),
    "jwks": frozenset({"invalid key set", "symmetric (oct) keys are not accepted in a key set"}),
    "jwks.Parse": frozenset({"invalid key set", 'expected a JWK set, {"keys": [...]}'}),
    "mcp.Parse": frozenset({"empty body", "a batch is not one JSON-RPC request"}),
}
_GENERIC_PHRASES = {
    "jwt.Decode": "invalid token",
    "jwks": "invalid key set",
    "jwks.Parse": "invalid key set",
    "json.Unmarshal": "invalid JSON",
}
_FAILURE_REASONS = frozenset(str(reason) for reason in FailureReason)
# The typed getters' one phrase names the target type, never the argument's value.
_GETTER = re.compile(r"mcp\.Get[A-Za-z]*Argument")
_NOT_FETCHED = re.compile(r"keys for \S+ not fetched yet")
_NOT_CONVERTED = re.compile(
    r"the argument does not convert to (list\()?(string|int|double|bool|path)\)?"
)


def error_class(message: str) -> str:
    """The class of a CEL evaluation error (``no such key``, ``jwt.Decode: bad signature`` ...),
    from its message; the result holds no text of the message beyond the fixed phrases above."""
    library = _LIBRARY.match(message.strip())
    if library is not None:
        return _library_class(library.group(1), library.group(2).strip())
    for pattern, name in _CLASSES:
        if pattern.search(message):
            return name
    return EVALUATION_ERROR


def _library_class(function: str, detail: str) -> str:
    while detail.startswith(function + ":"):  # a wrapper repeats the function's prefix
        detail = detail[len(function) + 1 :].strip()
    if detail in _FIXED_PHRASES.get(function, ()):
        return f"{function}: {detail}"
    if _GETTER.fullmatch(function) and _NOT_CONVERTED.fullmatch(detail):
        return f"{function}: {detail}"
    if function == "jwks.Fetch" and _NOT_FETCHED.fullmatch(detail):
        return f"{function}: keys not fetched yet"  # the URL is in /readyz, not in every denial
    if function == "mcp.Parse":
        # The decoder's failure reason is an enum value; its detail may quote the body.
        reason = detail.split(":", 1)[0].strip()
        if reason in _FAILURE_REASONS:
            return f"{function}: {reason}"
    return f"{function}: {_GENERIC_PHRASES.get(function, 'failed')}"
