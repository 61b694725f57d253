"""The server process's own settings: its garbage collector and its allocator.

Both are set once, after start-up and before serving; neither changes what the server answers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import platform

log = logging.getLogger(__name__)

GC_THRESHOLD = 20_000  # net allocations between young-generation collections (default 700)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks up to this size come from the heap and are reused, never mapped afresh...
MMAP_THRESHOLD = 32 * 1024 * 1024
# ...and up to this much free memory at the heap's top stays with the process.
TRIM_THRESHOLD = 64 * 1024 * 1024


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off what start-up built, and run it less often.

    What start-up built (modules, the ORM's metadata, protobuf descriptors, compiled
    statements) lives as long as the process; ``gc.freeze`` takes it out of every later
    collection. Ingest allocates a few objects per point, most freed at once by reference
    counting, so the default threshold (a collection per 700 net allocations) runs collections
    that find nothing: 8% of the server's time in a fleet's many small messages.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse the large blocks a call frees instead of returning them.

    A 100,000-point history page passes through a few buffers of 1-2.4 MB (the chunks' bytes,
    the columns, the response). By default each is a fresh ``mmap`` (or heap the next free
    trims away), whose every page faults in zeroed on first touch: 1,800 page faults a page,
    a fifth of the server's CPU for it. Fixed thresholds keep such blocks in the heap for the
    next call. False where the C library is not glibc (nothing is changed).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    done: bool = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("mallopt refused the allocator's thresholds; large calls fault more pages")
    return done
