"""The allocator's settings: freed buffers are reused, not handed back and faulted in again."""

import subprocess
import sys

import pytest

_SCRIPT = """
import resource, sys
import torch
from cnnvis.core.memory import keep_freed_memory
on = sys.argv[1] == "on"
if on:
    assert keep_freed_memory()
for _ in range(10):  # 48 MB: over the most glibc's mmap threshold ever rises to (32 MB)
    x = torch.ones(12 << 20)  # the heap settles after a few (an aligned request is a little larger
    del x                     # than the chunk freed before it)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(12 << 20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True, capture_output=True, text=True)
        return int(out.stdout.strip())

    pages = 20 * (48 << 20) // 4096  # what 20 fresh 48 MB buffers cost in 4 KB page faults
    default, kept = faults("off"), faults("on")
    assert default > pages // 2, default  # each buffer came fresh from the system
    assert kept < pages // 20, kept  # the same memory, reused


@pytest.mark.slow
def test_the_command_line_turns_it_on():
    out = subprocess.run([sys.executable, "-c", "import cnnvis.core.memory as m; from cnnvis.cli import main;"
                          "main(['models'], standalone_mode=False); print(m._done)"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == ("True" if sys.platform.startswith("linux") else "False")
