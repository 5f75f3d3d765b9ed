"""cocotb testbench: ``_EventFIFO`` and ``SyncFIFOBuffered`` in lockstep (see
``tests/hdl/test_event_fifo.py``). The seed is printed."""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from mozi.sim.cocotb_runner import test_params

from tests.hdl.streams import start_clock

DEPTH = test_params()["depth"]


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def test_lockstep(dut):
    """Random enables in phases (fill, drain, both, idle): the two FIFOs never differ."""
    rng = random.Random(cocotb.RANDOM_SEED)
    cocotb.log.info("rng seed %d", cocotb.RANDOM_SEED)
    start_clock(dut)
    dut.rst.value = 1
    dut.w_en.value = dut.r_en.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    p_w = p_r = 0.5
    levels = set()
    level = 0
    for cycle in range(40000):
        await RisingEdge(dut.clk)
        if rng.random() < 0.01:
            p_w, p_r = rng.choice([(0.9, 0.1), (0.1, 0.9), (0.5, 0.5), (1.0, 1.0), (0.0, 0.0)])
        w, r = rng.random() < p_w, rng.random() < p_r
        dut.w_en.value, dut.r_en.value = int(w), int(r)
        dut.w_data.value = rng.randrange(1 << 8)
        await ReadOnly()
        a_w, a_r = int(dut.a_w_rdy.value), int(dut.a_r_rdy.value)
        b_w, b_r = int(dut.b_w_rdy.value), int(dut.b_r_rdy.value)
        assert a_r == b_r, f"cycle {cycle}: r_rdy {a_r}, SyncFIFOBuffered's {b_r}"
        if a_r:
            assert int(dut.a_r_data.value) == int(dut.b_r_data.value), \
                f"cycle {cycle}: r_data differs"
        assert a_w >= b_w, f"cycle {cycle}: refuses a write SyncFIFOBuffered takes"
        assert a_w == (level < DEPTH), f"cycle {cycle}: w_rdy {a_w} holding {level} words"
        level += (w and a_w and b_w) - (r and a_r)
        levels.add(level)
    cocotb.log.info("depth %d: levels visited %s", DEPTH, sorted(levels))
    assert levels == set(range(DEPTH + 1)), f"not every level visited: {sorted(levels)}"
