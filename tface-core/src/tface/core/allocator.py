"""Keep freed memory in the process on glibc, so large CPU tensors are not page-faulted in on every step.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
gives it back with ``munmap`` when freed. A CPU training step allocates and frees many activations that
large (MobileFaceNet at batch 32: 25–51 MiB each), so each step faults all of those pages in again and
the kernel zeroes every one of them: on a 2-core machine a MobileFaceNet step ran 1.2× and an evaluation
pass 2.6× faster once freed blocks stayed in the heap (see ``docs/training.md``, "Speed on a CPU"). The
PyTorch CPU tuning guide reaches the same end by preloading jemalloc or tcmalloc; this needs no extra
library.

:func:`keep_freed_memory` is called by the commands that own their process (``tface run``, ``tface
eval``), never on import: a library must not change its host's allocator. The price is that the process
keeps its peak heap until it exits; the heap grows over the first steps (freed blocks get split by small
objects) and then stays put: a MobileFaceNet run's peak RSS did not move after its first 200 steps.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV", "keep_freed_memory"]

#: ``TFACE_MALLOC=system`` leaves glibc's defaults alone (for comparison, or beside a preloaded allocator).
ENV = "TFACE_MALLOC"

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free memory at the top of the heap beyond this is returned to the system (glibc's default is 128 KiB).
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Serve all allocations from the heap and keep up to 1 GiB of freed memory; True when applied.

    Does nothing (False) outside Linux/glibc, or when ``TFACE_MALLOC=system``. Affects blocks allocated
    afterwards; processes forked later (DataLoader workers) inherit it.
    """
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (musl has mallopt as a no-op stub, but no gnu_get_libc_version)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
