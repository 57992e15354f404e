"""Work around a reference-counting bug in cel-expr-python 0.1.3.

Converting a CEL ``null`` back to Python (``Value.value()``/``plain_value()``, also for a null
inside a returned map or list) releases a reference to ``None`` it never took. On Python 3.11,
where ``None`` is an ordinary reference-counted object, a few thousand evaluations that return
or carry a null drive its count to zero and the interpreter aborts ("deallocating None"). Python
3.12 made ``None`` immortal for exactly this class of bug; on older versions this module gives
``None`` a reference count so large that no realistic number of stolen references reaches zero.
(Python functions called from CEL that return ``None`` leak one reference instead, harmlessly.)
Found by this project's benchmark; see tests/cel/test_none_refcount.py.
"""

from __future__ import annotations

import ctypes
import sys

_HEADROOM = 1 << 50


def protect_none() -> None:
    if sys.version_info >= (3, 12):
        return
    refcount = ctypes.c_ssize_t.from_address(id(None))
    if refcount.value < _HEADROOM:
        refcount.value += _HEADROOM
