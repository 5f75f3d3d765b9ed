"""cocotb testbench: SerialRandomInput — an external QRNG's serial bits → 64-bit words.

The generator is modelled on its own time base (not a multiple of ``sync``'s 10 ns): its bit
clock's levels last a random 20-60 ns, its data changes on the falling edge. Every complete
word reaches a sink that is always ready, in order and bit for bit (the first bit is bit 0);
with a slow sink the words that arrive are an in-order subsequence, each word lost is counted
by one ``dropped`` pulse, and the held word is never overwritten. With the pins still no
word appears. The seed is printed by cocotb.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, Timer

from tests.hdl.streams import monitor, start_clock

BITS = 64


async def _generator(dut, rng: random.Random, bits: list[int], fastest: bool) -> None:
    """Drive ``bits`` on the pins, one per bit-clock period."""
    def level_ps():
        return 20_000 + rng.randrange(0, 1_000) if fastest else rng.randrange(20_000, 60_000)
    for bit in bits:
        dut.data.value = bit                  # (on the falling edge, which was just now)
        await Timer(level_ps(), unit="ps")
        dut.bit_clk.value = 1
        await Timer(level_ps(), unit="ps")
        dut.bit_clk.value = 0


def _words(bits: list[int]) -> list[int]:
    return [sum(b << i for i, b in enumerate(bits[k:k + BITS]))
            for k in range(0, len(bits) - BITS + 1, BITS)]


async def _start(dut) -> None:
    start_clock(dut)
    dut.bit_clk.value = 0
    dut.data.value = 0
    dut.words__ready.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _count_drops(dut, drops: list[int]) -> None:
    while True:
        await RisingEdge(dut.clk)
        await ReadOnly()
        if dut.dropped.value:
            drops.append(1)


async def _run(dut, rng, n_words: int, p_ready: float, fastest: bool = False):
    bits = [rng.randrange(2) for _ in range(n_words * BITS)]
    got: list[int] = []
    drops: list[int] = []
    sink = cocotb.start_soon(monitor(dut, "words", got, rng, p_ready))
    counter = cocotb.start_soon(_count_drops(dut, drops))
    await _generator(dut, rng, bits, fastest)
    await ClockCycles(dut.clk, 8)               # the last bit through the synchroniser
    sink.cancel()
    counter.cancel()
    dut.words__ready.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    held = int(dut.words__valid.value)
    words = _words(bits)
    # the last word may still be held, not yet taken
    assert len(got) + held + len(drops) == len(words), (len(got), held, len(drops))
    it = iter(words)
    assert all(w in it for w in got), "words out of order, altered or repeated"
    if held:
        assert int(dut.words__payload.value) in words[words.index(got[-1]) + 1:] if got \
            else int(dut.words__payload.value) in words
    await RisingEdge(dut.clk)
    return words, got, drops, held


@cocotb.test()
@cocotb.parametrize(fastest=[False, True])
async def test_every_word_to_a_ready_sink(dut, fastest):
    """Random bit-clock levels, and the fastest: 2 ``sync`` clocks (plus a fraction)."""
    rng = random.Random(cocotb.RANDOM_SEED + fastest)
    await _start(dut)
    words, got, drops, held = await _run(dut, rng, 40, p_ready=1.0, fastest=fastest)
    assert got == words and not drops and not held


@cocotb.test()
async def test_slow_sink_drops_whole_words(dut):
    rng = random.Random(cocotb.RANDOM_SEED + 2)
    await _start(dut)
    # a word every ~5 us at the fastest bits; the sink takes one in ~300 clocks (3 us) at
    # random, so some words wait and some are dropped
    words, got, drops, held = await _run(dut, rng, 60, p_ready=0.003, fastest=True)
    assert drops and got, (len(drops), len(got))


@cocotb.test()
async def test_still_pins_give_no_word(dut):
    await _start(dut)
    dut.words__ready.value = 1
    dut.data.value = 1
    for _ in range(2000):
        await RisingEdge(dut.clk)
        await ReadOnly()
        assert not dut.words__valid.value and not dut.dropped.value
