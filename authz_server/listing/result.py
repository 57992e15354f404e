"""Remove hidden entries from a list result (decoded JSON), keeping everything else."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from authz_server.errors import AuthzServerError
from authz_server.listing.kinds import ListKind


class MalformedList(AuthzServerError, ValueError):
    """The result is not an object, or its entries are not a list: it cannot be filtered."""


def filter_result(
    result: Mapping[str, Any],
    kind: ListKind,
    keep: Callable[[Sequence[str]], tuple[bool, ...]],
) -> tuple[dict[str, Any], int]:
    """``result`` (the JSON-RPC ``result`` of a list response) without the entries ``keep``
    refuses, and how many were removed. Other fields (``nextCursor``, ``_meta``, ``ttlMs`` ...)
    and the order of the kept entries are unchanged. An entry without a string name cannot be
    judged and is removed (it names nothing a client could call). A result without the entries
    field lists nothing and comes back unchanged.
    """
    if not isinstance(result, Mapping):
        raise MalformedList(f"a {kind.method} result must be an object")
    entries = result.get(kind.entries)
    if entries is None:
        return dict(result), 0
    if not isinstance(entries, list):
        raise MalformedList(f"{kind.entries} of a {kind.method} result must be a list")
    named = [
        entry
        for entry in entries
        if isinstance(entry, Mapping) and isinstance(entry.get(kind.name_key), str)
    ]
    verdicts = keep([entry[kind.name_key] for entry in named])
    if len(verdicts) != len(named):
        raise MalformedList("the filter judged a different number of entries")  # a defect
    kept = [entry for entry, visible in zip(named, verdicts, strict=True) if visible]
    filtered = dict(result)
    filtered[kind.entries] = kept
    return filtered, len(entries) - len(kept)
