"""The state store's errors: one branch below :class:`AuthzServerError`.

Callers distinguish two cases. :class:`StoreUnavailable` means the store could not answer (down,
unreachable, locked past the timeout, unwritable, a mirror gone stale): what needed the store is
denied with 503. Every other :class:`StoreError` is a mistake of the caller or the operator (a bad
``--state`` URL, a bad key, a value that is not JSON): it is reported, never retried.
"""

from __future__ import annotations

from authz_server.errors import AuthzServerError


class StoreError(AuthzServerError):
    """Base class of the state store's deliberate errors."""


class StoreUnavailable(StoreError):
    """The store could not be reached or could not complete the operation in time."""


class StoreUrlError(StoreError, ValueError):
    """A ``--state`` URL the store cannot use. The message never contains its password."""


class StoreValueError(StoreError, ValueError):
    """A namespace, key, state, TTL or value the store refuses; the message never quotes it."""
