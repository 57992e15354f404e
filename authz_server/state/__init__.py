"""The state store: the memory shared by every worker and replica (replay cache, revocations,
approvals, counters). ``open_store(url)`` gives a :class:`Store`; :class:`Mirror` keeps a local
snapshot of one kind for per-request checks. See ``docs/state.md``."""

from authz_server.state.errors import StoreError, StoreUnavailable, StoreUrlError, StoreValueError
from authz_server.state.factory import open_store
from authz_server.state.mirror import Mirror, MirrorStale, Snapshot
from authz_server.state.store import Health, Record, Store
from authz_server.state.url import STATE_DIR_VARIABLE, StoreUrl, default_url, parse_url, state_dir

__all__ = [
    "STATE_DIR_VARIABLE",
    "Health",
    "Mirror",
    "MirrorStale",
    "Record",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoreUrl",
    "StoreUrlError",
    "StoreValueError",
    "default_url",
    "open_store",
    "parse_url",
    "state_dir",
]
