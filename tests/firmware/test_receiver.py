"""ReceiverCores end to end: the composed reference, and the cocotb suite under Verilator.

Two parameter sets (one Verilator build each): the receiver as synthesised (DDR pins, 48-bit
timestamps and slots, 16 fractional bits), and plain pins with narrow widths so that timestamps
and slots wrap within the test.
"""

import numpy as np
import pytest
from mozi.firmware.receiver import ReceiverCores
from mozi.sim.cocotb_runner import run_cocotb

from tests.firmware import tb_receiver as tb

PARAMS = [
    {"phases": 2},
    {"phases": 1, "timestamp_width": 14, "slot_width": 11, "frac_bits": 6, "period_width": 14},
]


@pytest.mark.cocotb
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"p{p['phases']}")
def test_receiver_chain_rtl(params):
    run_cocotb(ReceiverCores(**params), "tests.firmware.tb_receiver", params=params)


def _samples(clicks, cycles):
    levels = np.zeros((cycles * tb.PHASES, tb.CHANNELS), np.uint8)
    for tick, ch in clicks:
        levels[tick, ch] = 1
    return tb.to_samples(levels)


def test_reference_hand_worked():
    """Period 5 ticks, slot 0 at tick 2, window [1, 4) ticks; DDR pins (the tb defaults)."""
    assert (tb.PHASES, tb.FRAC) == (2, 16)
    regs = tb.Regs(period=5 << 16, offset=2 << 16, window_start=1 << 16, window_end=4 << 16)
    # H at 1 (before slot 0), H at 3 and V at 4 (slot 0, two clocks: merged), D at 10
    # (slot 1, residue 3), A at 12 (slot 2, residue 0: out of the window)
    ref = tb.ref_receiver(_samples([(1, 0), (3, 0), (4, 1), (10, 2), (12, 3)], 10), regs)
    assert ref.timestamps.tolist() == [1, 3, 4, 10, 12]
    assert ref.slots.tolist() == [0, 0, 0, 1, 2]
    assert ref.in_window.tolist() == [False, True, True, True, False]
    assert ref.merged_slots.tolist() == [0, 1]
    assert ref.merged_masks.tolist() == [0b0011, 0b0100]
    # slot 0: both Z detectors → Z, random value bit (1); slot 1: D → X, 0. One word each.
    assert ref.detections([0b01, 0b10, 0b11]) == [(0, 0, 1, 1, 0), (1, 1, 0, 0, 0)]
    assert ref.detections([0b10, 0b11]) == [(0, 0, 0, 1, 0), (1, 1, 0, 0, 0)]


def test_encode_matches_pin_order():
    """``pins`` bit ``ch * phases + p``: channel-major, phase 0 earliest."""
    samples = _samples([(0, 0), (3, 1), (4, 3)], 3)
    assert tb.encode(samples) == [0b0000_0001, 0b0000_1000, 0b0100_0000]


def test_overflow_checker_rejects_unexplained_loss():
    """The overflow checker fails a missing in-window event that ``lost`` does not explain."""
    regs = tb.Regs(period=5 << 16, offset=0, window_start=0, window_end=4 << 16)
    ref = tb.ref_receiver(_samples([(1, 0), (6, 1), (11, 2)], 8), regs)
    assert ref.slots.tolist() == [0, 1, 2] and ref.in_window.all()
    rand = [0, 0, 0]
    ok = tb.Result(got=[(0, 0, 0, 0, 0), (2, 1, 0, 0, 1)], rand_taken=2, lost_count=1,
                   rejected_count=0, dropped_count=0)
    assert tb.check_overflow(ref, ok, rand) == 1
    bad = tb.Result(got=[(0, 0, 0, 0, 0), (2, 1, 0, 0, 0)], rand_taken=2, lost_count=1,
                    rejected_count=0, dropped_count=0)
    with pytest.raises(AssertionError, match="lost=0"):
        tb.check_overflow(ref, bad, rand)
