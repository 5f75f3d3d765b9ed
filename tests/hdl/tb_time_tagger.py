"""cocotb testbench: TimeTagger against :func:`mozi.sim.model.tag_edges`.

Driver (one sample word per clock on ``pins``) → monitor (handshakes on ``o``) → model
(``tag_edges`` on the same samples) → in-order checker. The checker allows the RTL to drop
events only when the output backs up, and requires every delivered event's ``lost`` field to
equal the number of model events missing just before it (saturating), and ``lost_count`` to
equal the total missing. Run through ``tests/hdl/test_time_tagger.py``.
"""

import itertools
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from mozi.hdl.layouts import LOST_WIDTH
from mozi.sim.cocotb_runner import test_params
from mozi.sim.model import tag_edges

P = test_params()
CHANNELS = P.get("channels", 4)
PHASES = P.get("phases", 1)
TS_WIDTH = P.get("timestamp_width", 48)
#: With a period, the output side runs on its own clock ``read_clk`` (``o_domain="read"``).
READ_PERIOD = P.get("read_period")
#: Words the FIFO holds (an AsyncEventFIFO: its memory and the output register).
FIFO_DEPTH = P.get("fifo_depth", 256) + (1 if READ_PERIOD else 0)
LOST_COUNT_WIDTH = P.get("lost_count_width", 32)
LOST_MAX = (1 << LOST_WIDTH) - 1
#: The output side is slower than the tagger: dense events overflow even an always-ready sink.
SLOW_READER = READ_PERIOD is not None and READ_PERIOD > 10


def ref_tag_edges(samples: np.ndarray, dead_time: int) -> list[tuple[int, int]]:
    """The model's event sequence as ``(timestamp, mask)`` pairs."""
    ts, masks = tag_edges(samples, phases=PHASES, dead_time=dead_time, width=TS_WIDTH)
    return list(zip(ts.tolist(), masks.tolist(), strict=True))


def encode(samples: np.ndarray) -> list[int]:
    """Sample array (cycles, channels, phases) → one ``pins`` word per clock."""
    weights = 1 << np.arange(CHANNELS * PHASES, dtype=np.uint64)
    flat = samples.reshape(samples.shape[0], CHANNELS * PHASES).astype(np.uint64)
    return [int(w) for w in (flat * weights).sum(axis=1)]


def check_delivered(expected, got, lost_count: int) -> int:
    """In-order check of the delivered events against the model; returns events dropped.

    ``got`` holds ``(timestamp, mask, lost)``; ``lost`` must be exactly the number of model
    events skipped just before that event (at least ``LOST_MAX`` when it reads ``LOST_MAX``).
    """
    j = 0
    for n, (ts, mask, lost) in enumerate(got):
        if lost < LOST_MAX:
            j += lost
            assert j < len(expected), f"delivered event {n} {(ts, mask, lost)} beyond the model"
            assert expected[j] == (ts, mask), \
                f"event {n}: got {(ts, mask)} with lost={lost}, model has {expected[j]} at {j}"
        else:
            j += LOST_MAX
            while j < len(expected) and expected[j] != (ts, mask):
                j += 1
            assert j < len(expected), f"saturated event {n} {(ts, mask)} not in the model"
        j += 1
    dropped = len(expected) - len(got)
    assert lost_count == min(dropped, (1 << LOST_COUNT_WIDTH) - 1), \
        f"lost_count {lost_count}, but {dropped} events are missing"
    return dropped


class TaggerBench:
    """Clock, reset, pin driver, ready driver and output monitor for one TimeTagger."""

    def __init__(self, dut):
        self.dut = dut
        self.got: list[tuple[int, int, int]] = []
        self._monitor = None
        self._ready = None
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        if READ_PERIOD:
            cocotb.start_soon(Clock(dut.read_clk, READ_PERIOD, unit="ns").start())
        #: the clock of ``o`` and ``lost_count``
        self.o_clk = dut.read_clk if READ_PERIOD else dut.clk

    def decode(self, value: int) -> tuple[int, int, int]:
        ts = value & ((1 << TS_WIDTH) - 1)
        mask = (value >> TS_WIDTH) & ((1 << CHANNELS) - 1)
        return ts, mask, value >> (TS_WIDTH + CHANNELS)

    async def monitor(self):
        dut = self.dut
        while True:
            await RisingEdge(self.o_clk)
            await ReadOnly()
            if dut.o__valid.value == 1 and dut.o__ready.value == 1:
                self.got.append(self.decode(dut.o__payload.value.to_unsigned()))

    async def drive_ready(self, pattern):
        for r in pattern:
            await RisingEdge(self.o_clk)
            self.dut.o__ready.value = r

    async def reset(self, dead_time: int) -> None:
        """Hold reset for a few clocks; returns right after a rising edge, reset still high."""
        dut = self.dut
        self.stop()
        self.got = []
        dut.rst.value = 1
        if READ_PERIOD:
            dut.read_rst.value = 1
        dut.pins.value = 0
        dut.o__ready.value = 0
        dut.dead_time.value = dead_time
        if READ_PERIOD:          # both sides reset together, the read side leaving first
            await ClockCycles(dut.read_clk, 8)
            dut.read_rst.value = 0
            await ClockCycles(self.o_clk, 4)   # dead_time through its synchroniser
        await ClockCycles(dut.clk, 3)

    async def set_ready(self) -> None:
        """``o.ready`` high from the next edge of its clock (where the monitor expects it to
        change) on; at once with one clock, which has just had an edge."""
        if READ_PERIOD:
            await RisingEdge(self.o_clk)
        self.dut.o__ready.value = 1

    def start(self, ready_pattern) -> None:
        self._monitor = cocotb.start_soon(self.monitor())
        self._ready = cocotb.start_soon(self.drive_ready(ready_pattern))

    def stop(self) -> None:
        for task in (self._ready, self._monitor):
            if task is not None and not task.done():
                task.cancel()
        self._ready = self._monitor = None

    async def run(self, samples: np.ndarray, dead_time: int, ready_pattern) -> int:
        """Reset, drive ``samples`` (cycle 0 = first clock out of reset), drain the FIFO.

        Returns ``lost_count`` after the drain.
        """
        dut = self.dut
        await self.reset(dead_time)
        self.start(ready_pattern)
        words = encode(samples)
        dut.rst.value = 0
        for n, w in enumerate(words):
            if n:
                await RisingEdge(dut.clk)
            dut.pins.value = w
        await RisingEdge(dut.clk)
        dut.pins.value = 0
        self._ready.cancel()
        await self.set_ready()
        await ClockCycles(self.o_clk, FIFO_DEPTH + 16)
        await ReadOnly()
        assert dut.o__valid.value == 0, "FIFO did not drain"
        lost_count = dut.lost_count.value.to_unsigned()
        await RisingEdge(self.o_clk)
        self.stop()
        return lost_count


def random_samples(rng: np.random.Generator, cycles: int, density: float) -> np.ndarray:
    """Random pin levels with runs, so edges land on every phase and clock boundary."""
    levels = (rng.random((cycles * PHASES, CHANNELS)) < density).astype(np.uint8)
    hold = rng.random((cycles * PHASES, CHANNELS)) < 0.3
    for n in range(1, levels.shape[0]):  # sticky levels: long pulses as well as short
        levels[n] = np.where(hold[n], levels[n - 1], levels[n])
    return levels.reshape(cycles, PHASES, CHANNELS).transpose(0, 2, 1).copy()


def edge_case_samples() -> np.ndarray:
    """Hand-picked cycles: phase and clock boundaries, all-clicks, held levels, double edges."""
    C, Q = CHANNELS, PHASES
    rows = []

    def row(levels):
        rows.append(np.array(levels, np.uint8).reshape(C, Q))

    zero = [[0] * Q for _ in range(C)]
    one = [[1] * Q for _ in range(C)]
    row(one)                                  # cycle 0: every channel rises at phase 0
    row(one)                                  # held high: no edge
    row(zero)
    last_only = [[0] * (Q - 1) + [1] for _ in range(C)]
    row(last_only)                            # every channel rises at the last phase
    # channel 0 stays high across the boundary (no edge); the others fall and one rises late
    r = [[1] * Q] + [[0] * Q for _ in range(C - 1)]
    r[-1] = [0] * (Q - 1) + [1]
    row(r)
    row([[0] * Q for _ in range(C)])
    # staggered: channel ch rises at phase (ch % Q); earliest is phase 0
    row([[1 if p >= ch % Q else 0 for p in range(Q)] for ch in range(C)])
    row(zero)
    # only late channels: earliest is the smallest of their phases
    row([[1 if (ch >= C // 2 and p >= (Q - 1 - ch % Q)) else 0 for p in range(Q)]
         for ch in range(C)])
    row(zero)
    if Q > 1:
        # two rising edges of one channel in one clock (0101…): only the first counts
        row([[p % 2 for p in range(Q)] for _ in range(C)])
        row([[(p + 1) % 2 for p in range(Q)] for _ in range(C)])  # edge at phase 0 again
    # a falling edge at the boundary followed by a rise at phase 0 of the next clock
    row(one)
    row(zero)
    row([[1] * Q] + [[0] * Q for _ in range(C - 1)])
    for _ in range(4):
        row(zero)
    return np.stack(rows)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_edge_cases(dut):
    """Hand-picked boundary cases with an always-ready sink: exact model sequence, no loss."""
    bench = TaggerBench(dut)
    samples = edge_case_samples()
    expected = ref_tag_edges(samples, 0)
    lost_count = await bench.run(samples, 0, itertools.repeat(1))
    assert [(t, m) for t, m, _ in bench.got] == expected
    assert all(lost == 0 for *_, lost in bench.got)
    assert lost_count == 0
    # hand-worked anchors independent of the model
    full = (1 << CHANNELS) - 1
    assert expected[0] == (0, full)                        # cycle 0, phase 0, all clicks
    assert expected[1] == (3 * PHASES + PHASES - 1, full)   # cycle 3, last phase


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_dead_time(dut):
    """Dead time around phase and clock multiples, dense random edges, always-ready sink
    (no loss unless the output side's clock is slower)."""
    bench = TaggerBench(dut)
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    for dead_time in (1, PHASES - 1, PHASES, PHASES + 1, 2 * PHASES + 1, 37):
        samples = random_samples(rng, 300, 0.5)
        expected = ref_tag_edges(samples, dead_time)
        lost_count = await bench.run(samples, dead_time, itertools.repeat(1))
        if SLOW_READER:       # events come faster than the output side takes them
            check_delivered(expected, bench.got, lost_count)
        else:
            assert [(t, m, lost) for t, m, lost in bench.got] == \
                [(t, m, 0) for t, m in expected], f"dead_time={dead_time}"
            assert lost_count == 0
        if dead_time > 2:  # rising edges of one channel are >= 2 ticks apart anyway
            assert expected != ref_tag_edges(samples, 0), "dead time not exercised"


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def test_backpressure_drops(dut):
    """Random stimulus, random stalls hard enough to overflow the FIFO: drops are counted."""
    bench = TaggerBench(dut)
    rng = np.random.default_rng(cocotb.RANDOM_SEED + 1)
    pyrng = random.Random(cocotb.RANDOM_SEED)
    total_dropped = 0
    for density, p_ready in ((0.3, 0.5), (0.5, 0.2), (0.2, 0.9)):
        samples = random_samples(rng, 1000, density)
        dead_time = pyrng.choice([0, 0, 3, PHASES + 2])
        expected = ref_tag_edges(samples, dead_time)
        # bursts of stall and of flow, so the FIFO both fills and empties
        pattern = itertools.chain.from_iterable(
            [int(pyrng.random() < p_ready)] * pyrng.randint(1, 3 * FIFO_DEPTH)
            for _ in itertools.count())
        lost_count = await bench.run(samples, dead_time, pattern)
        dropped = check_delivered(expected, bench.got, lost_count)
        total_dropped += dropped
        dut._log.info("density %.1f p_ready %.1f: %d events, %d dropped",
                      density, p_ready, len(expected), dropped)
    assert total_dropped > 0, "the overflow path was not exercised"


@cocotb.test(timeout_time=200, timeout_unit="ms", skip=PHASES < 2 or TS_WIDTH < 24)
async def test_lost_saturation(dut):
    """More than 2**LOST_WIDTH drops in a row: ``lost`` saturates, ``lost_count`` does not."""
    bench = TaggerBench(dut)
    stalled, flowing = LOST_MAX + 300, 64
    cycles = stalled + flowing
    samples = np.zeros((cycles, CHANNELS, PHASES), np.uint8)
    samples[:, 0, PHASES - 1] = 1       # channel 0 rises at the last phase of every clock
    expected = ref_tag_edges(samples, 0)
    assert len(expected) == cycles
    dut = bench.dut
    await bench.reset(0)
    bench._monitor = cocotb.start_soon(bench.monitor())
    dut.rst.value = 0
    dut.pins.value = encode(samples[:1])[0]      # the same word every clock
    await ClockCycles(dut.clk, stalled)
    cocotb.start_soon(bench.set_ready())
    await ClockCycles(dut.clk, flowing)
    dut.pins.value = 0
    await ClockCycles(bench.o_clk, FIFO_DEPTH + 16)
    await ReadOnly()
    lost_count = dut.lost_count.value.to_unsigned()
    await RisingEdge(bench.o_clk)
    bench.stop()
    got = bench.got
    assert [lost for *_, lost in got].count(LOST_MAX) == 1
    assert got[FIFO_DEPTH][2] == LOST_MAX
    dropped = check_delivered(expected, got, lost_count)
    assert dropped > LOST_MAX


@cocotb.test(timeout_time=200, timeout_unit="ms", skip=TS_WIDTH > 12)
async def test_counter_wrap(dut):
    """Run past two wraps of the timestamp: events keep the model's wrapped timestamps."""
    bench = TaggerBench(dut)
    rng = np.random.default_rng(cocotb.RANDOM_SEED + 2)
    cycles = (2 << TS_WIDTH) // PHASES + 100
    samples = random_samples(rng, cycles, 0.05)
    expected = ref_tag_edges(samples, 1)
    ts = [t for t, _ in expected]
    assert any(b < a for a, b in itertools.pairwise(ts)), "no wrap in the vector"
    lost_count = await bench.run(samples, 1, itertools.repeat(1))
    assert [(t, m) for t, m, _ in bench.got] == expected
    assert lost_count == 0
