"""The server process's allocator settings: large blocks freed by one call serve the next."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# As a history call does, 50 times: four 2 MiB buffers at once, every byte written (so every
# page is touched), then all freed. Prints the minor page faults that took; with the argument
# "keep", after keep_freed_memory.
_FAULTS = """
import resource, sys
from simtrack.server.runtime import keep_freed_memory
if sys.argv[1:] == ["keep"]:
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    buffers = [bytearray(b"x") * (2 * 1024 * 1024) for _ in range(4)]
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(*args: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, *args], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_large_blocks_are_reused_instead_of_faulted_in_afresh() -> None:
    default, kept = _faults(), _faults("keep")
    # By default the freed blocks go back to the system (unmapped, or trimmed off the heap's
    # top), so each round faults its 2,048 pages in afresh.
    assert default > 40 * 2048
    # Kept: the first round's pages serve the other 49.
    assert kept < 3 * 1024
