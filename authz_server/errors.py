"""The root of every error authz-server raises on purpose.

Each stage has its own branch below :class:`AuthzServerError` (``ConfigError``, ``PolicyError``,
``CelError``, ``DecodeError`` ...), so a caller can catch one stage's errors precisely, or every
deliberate error at once and still let a genuine bug (any other exception) surface as one.
"""

from __future__ import annotations


class AuthzServerError(Exception):
    """Base class of every error authz-server raises deliberately."""
