"""Open the store a ``--state`` URL names."""

from __future__ import annotations

from authz_server.state.store import Store
from authz_server.state.url import default_url, parse_url


def open_store(url: str | None = None) -> Store:
    """The store for ``url`` (``None``: :func:`default_url`). Validates the URL at once
    (:class:`StoreUrlError`) but connects on first use, so a store that is down shows as
    :class:`StoreUnavailable` on operations and in :meth:`Store.health`, not here."""
    parsed = parse_url(url if url is not None else default_url())
    if parsed.scheme == "sqlite":
        from authz_server.state.sqlite_store import SqliteStore

        return SqliteStore(parsed)
    # Imported only when used: a single-host deployment never loads the Redis client.
    from authz_server.state.redis_store import RedisStore

    return RedisStore(parsed)
