"""Keep freed memory in the process instead of handing it back to the kernel.

A training process allocates the same large buffers every step: the received batch, the
concatenated [pos; neg], activations, gradients. glibc's defaults serve blocks from about
128 KiB up with fresh mmap()s (the threshold adapts, but only upwards, one size at a time)
and give the top of the heap back once 128 KiB of it is free, so such a loop page-faults
on fresh, zeroed pages every step: ~300 faults per step of a 1000x1000 layer on one CPU
thread here. Raising both thresholds once per process keeps those pages mapped and reused
(the advice CPU PyTorch tuning guides give, via jemalloc or tcmalloc; here with glibc's
own knobs, so nothing extra to install). No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20   # blocks below this come from the heap (glibc's own maximum)
TRIM_THRESHOLD = 256 << 20  # free heap top kept before any is returned to the kernel


@functools.cache  # once per process: every LayerTrainer calls it
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
