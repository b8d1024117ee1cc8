"""land.decoding.host_memory: freed memory kept for reuse while denoising, given back afterwards (glibc).

Runs in a fresh interpreter: the heap of a long test session is fragmented by earlier tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from land.decoding import host_memory

pytestmark = pytest.mark.skipif(host_memory._LIBC is None, reason="glibc's allocator only")

SCRIPT = r"""
import os
import torch
from land.decoding.host_memory import release_freed_memory, reuse_freed_memory

MIB = 2**20


def rss():
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def step():  # a network step in miniature: activations made from one another, then all freed
    xs = [torch.ones(64 * MIB // 4) for _ in range(4)]
    ys = [x * 2 for x in xs]
    del xs, ys


step()  # torch's own first-use allocations happen before the baseline
release_freed_memory()
base = rss()
step()
print("default", (rss() - base) // MIB)  # glibc's default: large blocks are unmapped when freed
with reuse_freed_memory(enabled=False):
    step()
    print("disabled", (rss() - base) // MIB)
with reuse_freed_memory():
    with reuse_freed_memory():  # nests
        step()
    print("kept", (rss() - base) // MIB)  # held for the next step
    for _ in range(5):
        step()
    print("reused", (rss() - base) // MIB)  # later steps mostly reuse it instead of new pages
print("after", (rss() - base) // MIB)  # given back on exit
"""


def test_freed_memory_is_kept_inside_and_given_back_after():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    mib = {k: int(v) for k, v in (line.split() for line in result.stdout.splitlines())}
    assert mib["default"] < 64 and mib["disabled"] < 64, mib
    # one step's 512 MiB stay; five more steps reuse them: growth stays below one more step's worth
    # (fragmentation under load measured up to +256 MiB; five steps on fresh pages would add 2.5 GiB)
    assert mib["kept"] >= 448 and mib["reused"] < 2 * mib["kept"], mib
    assert mib["after"] < 64, mib  # given back on exit
