"""cocotb testbench: StreamRegister and SkidBuffer — every word once, in order, at full rate.

Random words through random valid gaps and random backpressure (several densities), a run at
full rate on both sides (one word per clock after one clock of latency), and the difference
between the two: the skid buffer's ``i.ready`` does not follow ``o.ready`` within a clock (it
is a flip-flop), the stream register's does. The seed is printed by cocotb.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, Timer
from mozi.sim.cocotb_runner import test_params

from tests.hdl.streams import drive, monitor, reset, start_clock

WIDTH = 8
SKID = test_params()["kind"] == "skid"


async def _run(dut, rng: random.Random, n: int, p_valid: float, p_ready: float) -> list[int]:
    words = [rng.randrange(1 << WIDTH) for _ in range(n)]
    got: list[int] = []
    sink = cocotb.start_soon(monitor(dut, "o", got, rng, p_ready))
    await drive(dut, "i", words, rng, p_valid)
    for _ in range(10 * n + 20):
        if len(got) == n:
            break
        await RisingEdge(dut.clk)
    await ClockCycles(dut.clk, 5)
    sink.cancel()
    assert got == words, f"p_valid {p_valid} p_ready {p_ready}: {len(got)} of {n} words, " \
        "or out of order"
    return got


@cocotb.test()
async def test_random_stalls(dut):
    rng = random.Random(cocotb.RANDOM_SEED)
    start_clock(dut)
    await reset(dut, ("i",), ("o",))
    for p_valid, p_ready in ((0.5, 0.5), (0.9, 0.3), (0.3, 0.9), (1.0, 0.5), (0.5, 1.0)):
        await _run(dut, rng, 400, p_valid, p_ready)


@cocotb.test()
async def test_full_rate(dut):
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    start_clock(dut)
    await reset(dut, ("i",), ("o",))
    dut.o__ready.value = 1
    words = [rng.randrange(1 << WIDTH) for _ in range(100)]
    got = []
    start = cocotb.utils.get_sim_time("ns")

    async def sink():
        while True:
            await ReadOnly()
            if dut.o__valid.value:
                got.append(int(dut.o__payload.value))
            await RisingEdge(dut.clk)
    task = cocotb.start_soon(sink())
    for w in words:
        dut.i__valid.value = 1
        dut.i__payload.value = w
        await ReadOnly()
        assert dut.i__ready.value == 1, "not ready while the output flows"
        await RisingEdge(dut.clk)
    dut.i__valid.value = 0
    await ClockCycles(dut.clk, 3)
    task.cancel()
    clocks = (cocotb.utils.get_sim_time("ns") - start) // 10
    assert got == words
    assert clocks <= len(words) + 4


@cocotb.test()
async def test_ready_path(dut):
    """Stall the output holding what the register can hold, then raise o.ready: the skid
    buffer's i.ready stays low until the next edge, the stream register's rises at once."""
    start_clock(dut)
    await reset(dut, ("i",), ("o",))
    dut.o__ready.value = 0
    dut.i__valid.value = 1
    for w in (1, 2) if SKID else (1,):
        dut.i__payload.value = w
        await RisingEdge(dut.clk)
    dut.i__valid.value = 0
    await ReadOnly()
    assert dut.i__ready.value == 0, "full"
    await Timer(2, unit="ns")
    dut.o__ready.value = 1
    await Timer(1, unit="ns")
    if SKID:
        assert dut.i__ready.value == 0, "i.ready followed o.ready within the clock"
        await RisingEdge(dut.clk)
        await ReadOnly()
    assert dut.i__ready.value == 1
