"""The process heap: a glibc setting that keeps freed memory, and a page-fault counter.

torch's CPU tensors are plain ``malloc`` s. By default glibc hands large freed blocks back to
the OS (``mmap`` for blocks over a threshold that adapts up to 32 MiB, and heap trimming), and
the next allocation page-faults on every 4 KiB page it touches. How much of that happens
depends on the heap's layout and changes from process to process, and can cost a pipeline a
large share of its time (docs/benchmarks.md, "Why two heaps").
"""

from __future__ import annotations

import ctypes

__all__ = ["STEADY_HEAP_BYTES", "minor_faults", "one_arena", "steady_heap", "trim_heap"]

# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
STEADY_HEAP_BYTES = 1 << 30


def minor_faults() -> int | None:
    """Minor page faults of this process so far (first touches of fresh memory pages), or None
    where ``getrusage`` does not count them (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def steady_heap() -> bool:
    """Make glibc's malloc keep freed memory in the process: blocks up to 1 GiB come from the
    heap instead of fresh ``mmap`` s, and the heap top is not trimmed below 1 GiB free. Freed
    tensors' pages are then reused without page faults. Returns False where the C library is
    not glibc (nothing changed).

    Process-wide and permanent (``mallopt`` has no "undo"); the resident size stays near its
    peak instead of shrinking between allocations. ``efficientdet benchmark`` applies it
    (``--malloc steady``, its default) so that no backend's time depends on page faults; the
    other commands and the Python API leave glibc's policy alone (our own training did not get
    faster with it, and its peak memory grew; docs/benchmarks.md).
    """
    return _mallopt((_M_MMAP_THRESHOLD, STEADY_HEAP_BYTES), (_M_TRIM_THRESHOLD, STEADY_HEAP_BYTES))


def one_arena() -> bool:
    """Make every thread allocate from glibc's main arena (``M_ARENA_MAX`` = 1); call it before
    starting threads. Returns False where the C library is not glibc (nothing changed).

    With :func:`steady_heap` alone, a thread other than the main one allocates from its own
    arena, whose heaps are at most 64 MiB: larger blocks (a batch's activations) still come from
    fresh ``mmap`` s and page-fault on every use. ``efficientdet serve`` runs the network on a
    worker thread, so it applies both (measured in docs/serving.md).
    """
    return _mallopt((_M_ARENA_MAX, 1))


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's ``mallopt(param, value)`` for each setting; False where not glibc or refused."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(bool(mallopt(param, value)) for param, value in settings)


def trim_heap() -> None:
    """Give freed heap memory back to the OS now (glibc's ``malloc_trim``; nothing elsewhere),
    so that the resident size counts live memory only."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (musl, macOS and Windows lack its functions)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError, TypeError):
        return None

