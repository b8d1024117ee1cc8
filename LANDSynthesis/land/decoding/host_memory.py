"""The C heap under torch's CPU tensors (glibc): give freed memory back, or keep it for reuse.

glibc serves every allocation over 128 KiB–32 MiB (all of a 3D network's activations) with a fresh ``mmap``
and returns it with ``munmap`` when freed, so each denoising step touches gigabytes of new pages; in a
virtual machine a new page can cost more than the arithmetic done on it (this VM: 0.2–1.4 GiB/s first
touch against ~20 GiB/s on reused memory). :func:`reuse_freed_memory` keeps freed memory in the heap for
the next step while it is active (`land benchmark --config paper --size 256`: 15.0 → 13.6 s per step, peak
RSS 3.18 → 3.28 GB), then gives it back. :func:`release_freed_memory` returns freed heap memory to the OS
now (the streaming decoder calls it between large slabs to stay within its memory budget). Elsewhere
(macOS, Windows, musl) both do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

__all__ = ["CPU_OVERHEAD_BYTES", "DEFAULT_CPU_MAX_MEMORY", "release_freed_memory", "reuse_freed_memory"]

# the host memory budget of decoding, shared by the tiled (.tiled) and the streamed (.streamed) decoder
DEFAULT_CPU_MAX_MEMORY = 2 * 1024**3
"""Default ``max_memory`` (bytes) of :func:`land.decoding.tiled.decode_tiled` on CPU."""
CPU_OVERHEAD_BYTES = 512 * 1024**2
"""Fixed allowance on CPU for the interpreter, libtorch/MONAI and allocator slack (part of ``max_memory``)."""
_TRIM_MIN_BYTES = 32 * 1024**2  # return freed heap memory to the OS after tiles at least this large

# mallopt parameters (glibc malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = 2**31 - 1  # the largest trim threshold mallopt takes (2 GiB of free heap top)


def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist: glibc
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_LIBC = _load_glibc()
_lock = threading.Lock()
_depth = 0


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, inflating the resident size)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[None]:
    """While active, large allocations come from the heap and freed memory stays there for the next one
    (no fresh pages per denoising step); on exit the defaults return and the freed memory goes back to the
    OS. Nests; process-wide (the ``land`` commands run it in their own process)."""
    global _depth
    if not enabled or _LIBC is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _LIBC.malloc_trim(0)
