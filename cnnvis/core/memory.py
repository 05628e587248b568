"""The C allocator's settings for long runs of same-sized tensors.

A step of gradient ascent allocates and frees the same large buffers (activations, their gradients)
hundreds of times. With glibc's defaults, every buffer over 128 KB to 32 MB is a fresh ``mmap`` that
the kernel fills with zeroed pages on first touch and takes back on ``free``: the main job spent 300 s
of system time (110 million page faults) doing only that. :func:`keep_freed_memory` asks the allocator
to serve large buffers from its heap and to keep what is freed for the next step, as a long-running
program should: ``cnnvis maximize`` on 8 units of a 224 px layer went from 42.6 s to 15.8 s (system time
36 s to 2 s) at the same peak memory (see docs/performance.md).

The ``cnnvis`` command calls it once at start-up (worker processes are forked and inherit it). A
notebook or script may call it too; it changes only how this process's memory is recycled, never a number.
"""

import ctypes
import ctypes.util
import functools
import sys

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: Freed memory at the top of the heap is returned to the system only beyond this much.
TRIM_THRESHOLD = 1 << 30
#: Extra memory asked for each time the heap grows, so a growing run does not ask at every step.
TOP_PAD = 64 << 20

#: Pixels per batch of a pass without gradients (statistics, health, examples): 32 images of 96 x 96. A batch
#: of 32 crops at 224 px through efficientnet-lite0 held 0.8 GB of activations; 5 at a time hold 0.13 GB and
#: cost the same per image on a CPU.
PASS_PIXELS = 32 * 96 * 96

_done = None


def release_freed_memory() -> bool:
    """Hand the memory the allocator keeps back to the system (``malloc_trim``), between phases that need
    different buffers: before forking workers (a forked process counts every page it shares) and between
    a worker's jobs. Returns whether the C library could (glibc only).

    Example:
        >>> release_freed_memory() in (True, False)
        True
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library (loaded once), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def images_per_batch(size, most: int = 32, pixels: int = PASS_PIXELS) -> int:
    """How many images of ``size`` (height, width) a pass without gradients takes at once: at most ``most``,
    and at most ``pixels`` pixels in all (never fewer than one image).

    Example:
        >>> images_per_batch((224, 224)), images_per_batch((112, 112)), images_per_batch((32, 32))
        (5, 23, 32)
    """
    h, w = (int(s) for s in size)
    return max(1, min(most, pixels // max(1, h * w)))


def keep_freed_memory() -> bool:
    """Serve large buffers from the heap and keep freed memory for reuse (glibc only; elsewhere, and
    when the C library says no, nothing changes). Returns whether the settings are in effect.

    Example:
        >>> keep_freed_memory() == keep_freed_memory()  # idempotent
        True
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)  # musl and other C libraries have none
    if mallopt is None:
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in
                ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    return _done
