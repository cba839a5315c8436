"""Handing freed heap back to the kernel after a big xDS response.

A 10,000-service CDS or EDS response is tens of MB on the wire and several times that while decoded;
once it is handled, glibc keeps the freed chunks in its heaps (it trims only the top of the main
heap), so the pod's RSS would stay at the peak. `malloc_trim(0)` returns whole free pages. Elsewhere
than glibc it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

BIG_BYTES = 4 * 1024 * 1024  # below this a response or document is too small for trimming to matter


def is_big(response) -> bool:
    return response.ByteSize() >= BIG_BYTES


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return free heap pages to the kernel; True when the C library could do it."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
