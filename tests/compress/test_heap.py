"""fix_mmap_threshold: freed large tensors leave the process's resident set at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Free one 8 MB tensor (glibc then raises its threshold past 8 MB), allocate 8 MB tensors with a
# small one kept after each (as a computation's results are), free the large ones: how much goes back?
_PROBE = textwrap.dedent("""
    import sys, torch
    from compress.heap import fix_mmap_threshold
    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold()
    def rss():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
    for _ in range(3):
        t = torch.ones(2 << 20); del t  # an 8 MB block mapped and freed: glibc raises its threshold past it
    batch, kept = [], []
    for _ in range(24):  # 192 MB
        batch.append(torch.ones(2 << 20))
        kept.append(torch.ones(64 << 8))  # 64 kB
    before = rss()
    del batch
    print(before - rss())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's mallopt")
def test_freed_tensors_are_returned_only_with_the_fixed_threshold() -> None:
    freed = {}
    for mode in ("default", "fixed"):
        done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        freed[mode] = int(done.stdout.split()[-1])
    assert freed["fixed"] > 180_000  # kB: all 192 MB went back
    assert freed["default"] < freed["fixed"] - 100_000  # glibc's default keeps most of it in the heap
