"""Freed tensors given back to the system at once, not kept in the C heap (glibc only).

glibc serves a large allocation from its own ``mmap`` and unmaps it on free, but it raises that
threshold (up to 32 MB) each time such a block is freed, so that later tensors of up to 32 MB come
from the heap instead; freed heap memory goes back to the system only from the heap's top. A long
computation that allocates and frees many tensors of a few MB to 32 MB each (a calibration pass,
the SparseGPT sweep's ranking bands, 8192-wide activations) then keeps hundreds of MB of freed
heap resident: 0.4 GB of heap during a 1B-shaped level database build (``bench.memory_1b``).
Fixing the threshold stops that; ``trim`` gives back what smaller allocations left free.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
DEFAULT_THRESHOLD = 4 << 20  # above the SparseGPT sweep's per-column temporaries (up to 1 MB at 2048 rows)


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """From now on, allocations of ``threshold`` bytes or more are mapped and unmapped on free.

    Process-wide: call it once from a command's entry point, not from library code. Smaller
    allocations (the sweep's per-column temporaries, Python objects) stay on the heap, where reuse
    is fast. Returns False (and changes nothing) where the C library has no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def trim() -> None:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Cheap (milliseconds); for the points where a long computation has just freed a lot of small
    allocations, e.g. after each layer of a level database build.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
