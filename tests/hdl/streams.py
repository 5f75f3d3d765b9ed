"""Stream drivers and monitors shared by the cocotb testbenches.

Amaranth flattens a ``stream.Signature`` port ``x`` to ``x__valid``, ``x__ready`` and
``x__payload``; these helpers drive and watch such ports with random gaps and backpressure.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge


def start_clock(dut) -> None:
    """A 100 MHz clock on ``clk``, and a 200 MHz one on ``sample_clk`` if the top has it
    (the receiver's tagger, at twice the rate of the rest as on the iCEBreaker)."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    if hasattr(dut, "sample_clk"):
        cocotb.start_soon(Clock(dut.sample_clk, 5, unit="ns").start())


async def reset(dut, sources: tuple[str, ...], sinks: tuple[str, ...], clocks: int = 2) -> None:
    """Hold ``rst`` for ``clocks`` clocks with every stream idle (called at a rising edge)."""
    dut.rst.value = 1
    for name in sources:
        getattr(dut, f"{name}__valid").value = 0
    for name in sinks:
        getattr(dut, f"{name}__ready").value = 0
    await ClockCycles(dut.clk, clocks)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def drive(dut, name: str, words: list[int], rng: random.Random, p_valid: float) -> None:
    """Source for stream ``name``: each word waits a random gap, then is held until taken."""
    valid = getattr(dut, f"{name}__valid")
    payload = getattr(dut, f"{name}__payload")
    ready = getattr(dut, f"{name}__ready")
    for word in words:
        while rng.random() >= p_valid:
            valid.value = 0
            await RisingEdge(dut.clk)
        valid.value = 1
        payload.value = word
        while True:
            await ReadOnly()
            taken = bool(ready.value)
            await RisingEdge(dut.clk)
            if taken:
                break
    valid.value = 0


async def monitor(dut, name: str, got: list[int], rng: random.Random, p_ready: float) -> None:
    """Sink for stream ``name`` with random backpressure; appends every transferred payload."""
    valid = getattr(dut, f"{name}__valid")
    payload = getattr(dut, f"{name}__payload")
    ready = getattr(dut, f"{name}__ready")
    while True:
        ready.value = int(rng.random() < p_ready)
        await ReadOnly()
        if valid.value and ready.value:
            got.append(int(payload.value))
        await RisingEdge(dut.clk)
