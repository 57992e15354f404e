"""List filtering: which entries of ``tools/list``, ``prompts/list``, ``resources/list`` and
``resources/templates/list`` results a caller is shown (those some call of theirs could use)."""

from authz_server.listing.filter import ListFilter, ListingCaller
from authz_server.listing.kinds import ListKind
from authz_server.listing.result import MalformedList, filter_result

__all__ = ["ListFilter", "ListKind", "ListingCaller", "MalformedList", "filter_result"]
