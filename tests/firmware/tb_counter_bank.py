"""cocotb testbench: :class:`mozi.firmware.counter_bank.CounterBank` against a reference count.

Random increments (bursts of full-scale ones that reach saturation, quiet stretches), random
clears and reads of random counters. Every read must be answered within ``count`` clocks with
the saturated sum of its counter's increments presented before the answer's clock and after
its last clear; a counter not cleared by ``clear`` keeps counting through it. Run through
``tests/firmware/test_counter_bank.py``; the seed is printed.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from mozi.sim.cocotb_runner import test_params

from tests.hdl.streams import start_clock

P = test_params()
WIDTHS = P["increments"]
CLEARED = P["cleared"]
WIDTH = P["width"]
COUNT = max(len(WIDTHS), 3)
MAX = (1 << WIDTH) - 1


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def test_counts_clears_and_reads(dut):
    """Every answer equals the reference count of its counter at the answer's snapshot."""
    seed = cocotb.RANDOM_SEED
    cocotb.log.info("rng seed %d", seed)
    rng = random.Random(seed)
    start_clock(dut)
    dut.rst.value = 1
    dut.clear.value = 0
    dut.rd_req.value = 0
    for k in range(len(WIDTHS)):
        getattr(dut, f"inc{k}").value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    incs: list[list[int]] = [[] for _ in WIDTHS]    # presented in cycle n
    clears: list[int] = []                          # cycles with clear high
    # the first read comes in the first clock out of reset, for the last counter: the worst
    # case of the "within count clocks" promise
    reading, asked_at, index = True, 0, len(WIDTHS) - 1
    dut.rd_index.value = index
    answers, cycle = 0, 0
    mode = "dense"
    saturated = set()
    while cycle < 20000:
        await RisingEdge(dut.clk)
        # ---- drive this cycle's inputs ------------------------------------------------
        if rng.random() < 0.002:
            mode = rng.choice(["dense", "full", "quiet", "sparse"])
        for k, w in enumerate(WIDTHS):
            top = (1 << w) - 1
            v = {"dense": rng.randint(0, top), "full": top, "quiet": 0,
                 "sparse": top if rng.random() < 0.05 else 0}[mode]
            getattr(dut, f"inc{k}").value = v
            incs[k].append(v)
        clear = mode != "full" and rng.random() < 0.003    # full stretches saturate
        dut.clear.value = int(clear)
        if clear:
            clears.append(cycle)
        if not reading and rng.random() < 0.2:
            reading, asked_at, index = True, cycle, rng.randrange(len(WIDTHS))
            dut.rd_index.value = index
        dut.rd_req.value = int(reading)
        # ---- check this cycle's outputs -----------------------------------------------
        await ReadOnly()
        valid = int(dut.rd_valid.value)
        if valid:
            assert reading, f"cycle {cycle}: rd_valid without a request"
            got = int(dut.rd_value.value)
            start = max([c for c in clears if c < cycle], default=-1) if CLEARED[index] else -1
            want = min(MAX, sum(incs[index][start + 1:cycle]))
            assert got == want, f"cycle {cycle}: counter {index} read {got}, expected {want}"
            assert cycle - asked_at < COUNT, f"cycle {cycle}: answer after {cycle - asked_at}"
            if want == MAX:
                saturated.add(index)
            answers += 1
        elif reading:
            assert cycle - asked_at < COUNT - 1, f"cycle {cycle}: no answer for counter {index}"
        cycle += 1
        if valid:
            reading = False
    cocotb.log.info("%d answers, %d clears, saturated counters %s", answers, len(clears),
                    sorted(saturated))
    assert answers > 1000 and saturated, "the stimulus did not exercise reads or saturation"
