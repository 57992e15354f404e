"""Read-only JSON-like values, for what caches hand to many requests.

A cache that returns the same dict to every caller lets one caller's change leak into the next
request. ``types.MappingProxyType`` would forbid it, but protobuf's ``Struct.update`` and the CEL
runtime accept only real dicts, so :class:`FrozenDict` is a dict whose mutating methods raise;
JSON encoders, ``Struct.update`` and CEL read it as the dict it is. Lists become tuples where
nothing needs a list (``Struct.update`` and JSON encoders take tuples; CEL does not, so values
bound into CEL keep their lists).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn


class FrozenDict(dict[str, Any]):
    """A dict that cannot be changed after construction (copy it to change it)."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("this mapping is shared and read-only; copy it to change it")

    __setitem__ = __delitem__ = __ior__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


_SCALARS = (str, int, float, bool, bytes, type(None))


def freeze(value: Any) -> Any:
    """``value`` with every mapping a :class:`FrozenDict` and every list a tuple."""
    if isinstance(value, _SCALARS) or type(value) is FrozenDict:
        return value
    if isinstance(value, Mapping):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """A mutable copy of a value made by :func:`freeze` (scalars are returned as they are)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value
