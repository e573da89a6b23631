"""Keep freed memory inside the process (glibc malloc), so per-step temporaries do not page-fault every step.

Each energy+forces evaluation allocates and frees a few tens of MB of pair-sized temporaries. With glibc's default
settings the top of the heap is handed back to the operating system after every evaluation and touched again at
the next one: on a 768-atom water box that costs about 2,600 page faults and 3-4 ms per step (a quarter of it).
:func:`retain_freed_memory` raises the trim and mmap thresholds once per process (the same as setting
``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_``); the price is that memory freed after a peak stays with
the process. Set ``AIIDA_MLFF_MALLOPT=0`` to leave malloc alone. Elsewhere than Linux/glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ['retain_freed_memory']

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 512 * 1024 * 1024  # bytes of free heap top kept before giving memory back
MMAP_THRESHOLD = 32 * 1024 * 1024  # allocations up to this size come from the heap (glibc's largest allowed)

_state: dict[str, bool] = {}


def retain_freed_memory() -> bool:
    """Set glibc's malloc trim and mmap thresholds once per process; return whether they are set."""
    if 'done' in _state:
        return _state['done']
    done = False
    if os.environ.get('AIIDA_MLFF_MALLOPT', '1') != '0' and platform.system() == 'Linux':
        try:
            if platform.libc_ver()[0] == 'glibc':
                libc = ctypes.CDLL(None)
                done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
        except (OSError, AttributeError):
            done = False
    _state['done'] = done
    return done
