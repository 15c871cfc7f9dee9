"""Process limits the router sets for itself: open files, and how the C
allocator gives memory back (cold code, once per process)."""
from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger("mcrouter.limits")

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# A buffer this large or larger gets its own mapping, returned to the kernel
# when freed.  glibc would otherwise raise this threshold after the first
# large free, and a burst of large replies would stay in the heap for good.
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 1 << 20       # free heap top beyond this goes back at once


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, so that -c clients fit
    (the common soft limit is 1024); return the limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def return_memory_promptly() -> None:
    """Make freed large buffers go back to the kernel (glibc only; a no-op
    elsewhere), so a worker's RSS returns near its baseline after a burst."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
