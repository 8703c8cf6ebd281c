"""Process-wide tuning of glibc's memory allocator for repeated CPU inference.

Nothing in the library calls :func:`tune_allocator` on its own: it changes the whole process, so the
entry points that own their process (the ``mobilesam`` command line and ``mobilesam serve``) apply it at
start, and an application that embeds the library decides for itself.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt() parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 512 << 20
_TRIM_THRESHOLD_BYTES = 1 << 30

_tuned = False


def tune_allocator() -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the operating system.

    What it changes, for the whole process and every library in it: glibc's mmap threshold (to 512 MB)
    and trim threshold (to 1 GB), through ``mallopt``. By default glibc serves each allocation above
    32 MB with a fresh ``mmap`` that the kernel zero-fills on first touch, so the image encoder's 16-64 MB
    activations are faulted in anew on every pass, which costs about as much as the arithmetic. With the
    higher thresholds the second and later passes reuse the memory. The price: memory freed after a pass
    stays in the process (up to the encoder's peak, about 250 MB for MobileSAM) for the next one.

    Call it once at the start of a program that embeds many images on the CPU (a batch job, a server).
    The ``mobilesam`` command line and ``mobilesam serve`` call it for you. ``MOBILESAM_MALLOC_TUNING=0``
    turns it off. Returns True when the tuning is in effect (Linux with glibc only); calling it again is
    harmless.
    """
    global _tuned
    if _tuned or os.environ.get("MOBILESAM_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no"):
        return _tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _tuned = (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
                  and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    return _tuned


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has changed this process's allocator."""
    return _tuned
