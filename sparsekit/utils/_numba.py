"""One decorator for every numba kernel: on-disk caching and a note when compilation starts.

Numba compiles a kernel the first time it meets a new combination of argument types. With
``cache=True`` the machine code is written next to the module (``__pycache__``, or numba's user
cache directory when that is read-only), so only the very first fit after installing or upgrading
pays for it. That first compilation takes seconds, so a one-line note goes to stderr when it starts,
once per process. Set ``SPARSEKIT_QUIET=1`` to silence it.
"""

from __future__ import annotations

import os
import sys
import weakref

import numba
from numba.core import event

__all__ = ["jit"]

COMPILE_MESSAGE = (
    "sparsekit: compiling numba kernels for this input type; a one-time cost of a few seconds "
    "(cached on disk for later runs)"
)

_KERNELS: weakref.WeakSet = weakref.WeakSet()
_announced = False


def jit(*args, **options):
    """Compile a function with ``numba.njit``, caching on disk by default.

    Use it as ``@jit`` or ``@jit(parallel=True)``; the options are those of :func:`numba.njit`, and
    ``cache`` defaults to True. The returned dispatcher is registered so that the first compilation
    of any sparsekit kernel in a process prints :data:`COMPILE_MESSAGE` to stderr.
    """
    options.setdefault("cache", True)
    if args and callable(args[0]) and len(args) == 1:
        return _register(numba.njit(**options)(args[0]))
    if args:
        raise TypeError("jit takes the function or keyword options only, e.g. @jit(parallel=True)")

    def decorate(func):
        return _register(numba.njit(**options)(func))

    return decorate


def _register(dispatcher):
    _KERNELS.add(dispatcher)
    return dispatcher


class _CompileNotice(event.Listener):
    """Prints the note when numba starts compiling (not loading from cache) one of our kernels."""

    def on_start(self, ev):
        global _announced
        if _announced or ev.data.get("dispatcher") not in _KERNELS:
            return
        _announced = True
        if os.environ.get("SPARSEKIT_QUIET", "") not in ("", "0"):
            return
        print(COMPILE_MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


event.register("numba:compile", _CompileNotice())
