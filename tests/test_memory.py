"""The one peak-memory measure: the peak during a block, and its growth over what the block began with."""

import sys

import pytest
import torch

from seqarch.memory import PeakMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resettable peak RSS is Linux's")
def test_cpu_growth_is_the_block_s_own_allocation_and_peak_includes_the_process():
    held = torch.ones(8_000_000)  # 32 MB held before the block: in the peak, not in the growth
    with PeakMemory("cpu") as memory:
        work = torch.ones(25_000_000)  # 100 MB
        del work
    assert 90e6 <= memory.growth_bytes <= 160e6
    assert memory.peak_bytes >= memory.growth_bytes + held.numel() * 4
    with PeakMemory("cpu") as small:
        torch.ones(1_000).sum()
    assert small.growth_bytes < 20e6  # the earlier 100 MB peak was reset, not carried over
