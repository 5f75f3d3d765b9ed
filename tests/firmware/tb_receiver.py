"""cocotb testbench: the chained receiver cores against the composed golden models.

:class:`mozi.firmware.receiver.ReceiverCores` (TimeTagger → SlotAssigner → BasisDecoder) is
checked end to end, pins in, detections out, against

    ``tag_edges`` → ``assign_slots`` → ``merge_slot_events`` → ``decode_basis``

from :mod:`mozi.sim.model`, one random word per decoded event. Drivers: detector pin samples
(one word per clock, Poisson-ish clicks in and around the acceptance window of each slot, dark
counts, multi-clicks within one clock and spread over several clocks, clicks on every phase and
clock boundary), random words on ``rand`` with random gaps, random ``ready`` backpressure on
``o``, a ``flush`` strobe once the pipeline has drained. Monitors: ``o`` and ``rand``
handshakes. Checker: the detections in order, then ``lost_count``, ``rejected_count`` and
``dropped_count``.

A drift-correction case reprograms ``period`` and ``offset`` in a quiet gap between two blocks
(slot numbers continue). Without a forced stall nothing may be lost, so the output must equal
the model exactly. One case stalls ``o`` long enough to overflow the tagger FIFO; there every
tagger event lies in a slot of its own, so the delivered detections must be a subsequence of the
model's, each with an in-band ``lost`` count that explains the model events missing before it,
and the in-band counts must sum to ``lost_count`` (a drop with no later event cannot be
reported in-band: the stimulus ends with a sparse tail that enters the drained FIFO).

Run through ``tests/firmware/test_receiver.py``; the seed is printed by cocotb
(``COCOTB_RANDOM_SEED``) and replayed with ``SEED=<n>``.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from mozi.hdl.layouts import LOST_WIDTH
from mozi.sim.cocotb_runner import test_params
from mozi.sim.model import assign_slots, decode_basis, merge_slot_events, tag_edges

P = test_params()
PHASES = P.get("phases", 2)
TS_WIDTH = P.get("timestamp_width", 48)
SLOT_WIDTH = P.get("slot_width", 48)
FRAC = P.get("frac_bits", 16)
PERIOD_WIDTH = P.get("period_width", 32)
OFFSET_WIDTH = TS_WIDTH + FRAC + 1
CHANNELS = 4
FIFO_DEPTH = 256                        # the TimeTagger default used by ReceiverCores
LOST_MAX = (1 << LOST_WIDTH) - 1
SLOT_MASK = (1 << SLOT_WIDTH) - 1


# --------------------------------------------------------------------------------------------
# Registers and the composed reference model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Regs:
    """Register settings of one run; fixed point with :data:`FRAC` fractional bits."""

    period: int
    offset: int
    window_start: int
    window_end: int
    dead_time: int = 0

    @classmethod
    def from_ticks(cls, period: float, offset: float, window: tuple[float, float],
                   dead_time: int = 0) -> Regs:
        """Registers from a period and offset in ticks and a window as fractions of a slot."""
        p = round(period * (1 << FRAC))
        regs = cls(p, round(offset * (1 << FRAC)), round(window[0] * p),
                   round(window[1] * p), dead_time)
        regs.check()
        return regs

    def check(self) -> None:
        """Assert the settings fit the ports and satisfy the model's preconditions."""
        assert 0 < self.period < (1 << PERIOD_WIDTH)
        assert -(1 << (OFFSET_WIDTH - 1)) <= self.offset < (1 << (OFFSET_WIDTH - 1))
        assert 0 <= self.window_start < self.window_end <= self.period
        assert 0 <= self.dead_time < (1 << 16)

    @property
    def period_ticks(self) -> float:
        """The period in ticks."""
        return self.period / (1 << FRAC)

    @property
    def offset_ticks(self) -> float:
        """The start of slot 0 in ticks."""
        return self.offset / (1 << FRAC)


@dataclass
class Reference:
    """Every stage of the composed model for one pin-sample array."""

    timestamps: np.ndarray      # tag_edges
    masks: np.ndarray
    slots: np.ndarray           # assign_slots, per tagger event
    in_window: np.ndarray
    merged_slots: np.ndarray    # merge_slot_events
    merged_masks: np.ndarray

    def detections(self, rand: list[int]) -> list[tuple[int, int, int, int, int]]:
        """Expected ``o`` stream ``(slot, basis, bit, multi, lost)`` when nothing is lost."""
        return ref_detections(self.merged_slots, self.merged_masks, rand,
                              [0] * len(self.merged_slots))


def ref_receiver(samples: np.ndarray, regs: Regs) -> Reference:
    """``tag_edges`` → ``assign_slots`` → ``merge_slot_events`` on ``samples``."""
    ts, masks = tag_edges(samples, phases=PHASES, dead_time=regs.dead_time, width=TS_WIDTH)
    slots, ok = assign_slots(ts, period=regs.period, offset=regs.offset,
                             window_start=regs.window_start, window_end=regs.window_end,
                             frac_bits=FRAC, slot_width=SLOT_WIDTH)
    merged_slots, merged_masks = merge_slot_events(slots, masks, ok)
    return Reference(ts, masks, slots, ok, merged_slots, merged_masks)


def ref_detections(slots, masks, rand, lost) -> list[tuple[int, int, int, int, int]]:
    """``decode_basis`` on ``masks`` with the first ``len(masks)`` random words, in order."""
    n = len(masks)
    assert len(rand) >= n, "not enough random words for the events"
    valid, basis, bit, multi = decode_basis(np.asarray(masks, np.uint8),
                                            np.asarray(rand[:n], np.uint8))
    assert valid.all(), "the slot assigner never forwards an empty mask"
    return [(int(s), int(b), int(v), int(m), int(lo))
            for s, b, v, m, lo in zip(slots, basis, bit, multi, lost, strict=True)]


# --------------------------------------------------------------------------------------------
# Stimulus
# --------------------------------------------------------------------------------------------

def slot_clicks(rng: np.random.Generator, ticks: int, regs: Regs, *, p_slot: float,
                p_multi: float, p_spread: float, p_outside: float,
                late_only: bool = False) -> list[tuple[int, int]]:
    """Clicks ``(tick, channel)`` of photons detected in random slots.

    A slot carries a detection with probability ``p_slot``; it is inside the acceptance window
    except with probability ``p_outside`` (then before it or, with ``late_only``, only after
    it, so that the click stays in its own slot). With probability ``p_multi`` a second
    detector clicks too, at the same tick or (probability ``p_spread``) one or two ticks
    later, so the merge of one slot's tagger events is exercised.
    """
    per = regs.period_ticks
    ws, we = regs.window_start / regs.period, regs.window_end / regs.period
    first = max(0, math.ceil(-regs.offset_ticks / per))
    last = math.floor((ticks - 8 - regs.offset_ticks) / per)
    clicks = []
    for n in range(first, last):
        if rng.random() >= p_slot:
            continue
        start = regs.offset_ticks + n * per
        if rng.random() >= p_outside:
            frac = rng.uniform(ws, we)
        elif late_only or rng.random() < 0.5:
            frac = rng.uniform(we, 1.0)
        else:
            frac = rng.uniform(0.0, ws)
        t0 = math.floor(start + frac * per)
        chans = [int(rng.integers(CHANNELS))]
        if rng.random() < p_multi:
            chans.append(int((chans[0] + rng.integers(1, CHANNELS)) % CHANNELS))
        for k, ch in enumerate(chans):
            spread = int(rng.integers(1, 3)) if k and rng.random() < p_spread else 0
            clicks.append((t0 + spread, ch))
    return clicks


def levels_from_clicks(rng: np.random.Generator, ticks: int, clicks, *, p_dark: float = 0.0,
                       max_pulse: int = 3) -> np.ndarray:
    """Pin levels ``(ticks, channels)``: a pulse of 1..``max_pulse`` ticks per click."""
    levels = np.zeros((ticks + max_pulse, CHANNELS), np.uint8)
    dark = np.argwhere(rng.random((ticks, CHANNELS)) < p_dark)
    for t, ch in itertools.chain(clicks, ((int(t), int(c)) for t, c in dark)):
        if 0 <= t < ticks:
            levels[t:t + int(rng.integers(1, max_pulse + 1)), ch] = 1
    return levels[:ticks]


def to_samples(levels: np.ndarray) -> np.ndarray:
    """Levels ``(ticks, channels)`` → model samples ``(cycles, channels, phases)``."""
    cycles = levels.shape[0] // PHASES
    return levels[:cycles * PHASES].reshape(cycles, PHASES, CHANNELS).transpose(0, 2, 1).copy()


def encode(samples: np.ndarray) -> list[int]:
    """Samples → one ``pins`` word per clock (bit ``ch * phases + p``)."""
    weights = 1 << np.arange(CHANNELS * PHASES, dtype=np.uint64)
    flat = samples.reshape(samples.shape[0], CHANNELS * PHASES).astype(np.uint64)
    return [int(w) for w in (flat * weights).sum(axis=1)]


def boundary_clicks(base: int) -> list[tuple[int, int]]:
    """Hand-picked clicks from tick ``base`` on: phase and clock boundaries, multi-clicks."""
    q = PHASES
    c = base // q + 1                       # a clock boundary after base
    return [
        (c * q, 0),                         # H at phase 0 of a clock
        (c * q + q - 1, 1),                 # V at the last phase of the same clock
        ((c + 8) * q - 1, 2),               # D at the last phase of a clock …
        ((c + 8) * q, 3),                   # … and A at phase 0 of the next (two events)
        ((c + 20) * q + q // 2, 0),         # all four detectors at once, mid-clock
        ((c + 20) * q + q // 2, 1),
        ((c + 20) * q + q // 2, 2),
        ((c + 20) * q + q // 2, 3),
        ((c + 40) * q, 2),                  # D and A together: both X detectors
        ((c + 40) * q, 3),
        ((c + 60) * q + q - 1, 0),          # H and V on the last phase: both Z detectors
        ((c + 60) * q + q - 1, 1),
    ]


# --------------------------------------------------------------------------------------------
# Bench: drivers, monitors, drain
# --------------------------------------------------------------------------------------------

def unpack_detection(word: int) -> tuple[int, int, int, int, int]:
    """``o`` payload → ``(slot, basis, bit, multi, lost)`` (lowest field in the lowest bits)."""
    slot = word & SLOT_MASK
    word >>= SLOT_WIDTH
    return slot, word & 1, (word >> 1) & 1, (word >> 2) & 1, (word >> 3) & LOST_MAX


def stall_pattern(rng: random.Random, p_ready: float, max_run: int):
    """Endless ``ready`` levels: runs of 1..``max_run`` clocks, ready with ``p_ready``."""
    while True:
        level = int(rng.random() < p_ready)
        yield from itertools.repeat(level, rng.randint(1, max_run))


@dataclass
class Result:
    """What one run delivered: detections, random words taken and the three counters."""

    got: list[tuple[int, int, int, int, int]]
    rand_taken: int
    lost_count: int
    rejected_count: int
    dropped_count: int


class ReceiverBench:
    """Clock, reset, pin/rand/ready drivers and ``o``/``rand`` monitors of ReceiverCores."""

    def __init__(self, dut):
        self.dut = dut
        self.got: list[tuple[int, int, int, int, int]] = []
        self.rand_taken = 0
        self._tasks = []
        self._ready_task = None
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    def _stop(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        self._tasks = []
        self._ready_task = None

    async def reset(self, regs: Regs) -> None:
        """Program ``regs`` and hold reset; returns right after a rising edge, reset high."""
        dut = self.dut
        self._stop()
        self.got, self.rand_taken = [], 0
        dut.rst.value = 1
        dut.pins.value = 0
        dut.flush.value = 0
        dut.o__ready.value = 0
        dut.rand__valid.value = 0
        dut.rand__payload.value = 0
        dut.source.value = 1               # the tagger feeds the slot assigner
        dut.inject__valid.value = 0
        dut.rebase.value = 0
        self.set_regs(regs, rebase=False)
        await ClockCycles(dut.clk, 3)

    def set_regs(self, regs: Regs, *, rebase: bool = True) -> None:
        """Drive the register ports (offset as two's complement) and strobe ``rebase`` for
        one clock, as the receiver top's register block does; the slot assigner must not be
        reading them (call right after a rising edge)."""
        dut = self.dut
        if rebase:
            assert dut.config_busy.value == 0, "registers changed while the slot assigner reads"
        dut.dead_time.value = regs.dead_time
        dut.period.value = regs.period
        dut.offset.value = regs.offset & ((1 << OFFSET_WIDTH) - 1)
        dut.window_start.value = regs.window_start
        dut.window_end.value = regs.window_end
        if rebase:
            dut.rebase.value = 1

            async def end_strobe():
                await RisingEdge(dut.clk)
                dut.rebase.value = 0
            cocotb.start_soon(end_strobe())

    async def _monitor(self) -> None:
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.o__valid.value == 1 and dut.o__ready.value == 1:
                self.got.append(unpack_detection(dut.o__payload.value.to_unsigned()))
            if dut.rand__valid.value == 1 and dut.rand__ready.value == 1:
                self.rand_taken += 1

    async def _drive_rand(self, words: list[int], rng: random.Random, p_valid: float) -> None:
        """Each word after a random gap, held until the decoder takes it."""
        dut = self.dut
        for word in words:
            while rng.random() >= p_valid:
                dut.rand__valid.value = 0
                await RisingEdge(dut.clk)
            dut.rand__valid.value = 1
            dut.rand__payload.value = word
            while True:
                await ReadOnly()
                taken = dut.rand__ready.value == 1
                await RisingEdge(dut.clk)
                if taken:
                    break
        dut.rand__valid.value = 0

    async def _drive_ready(self, pattern) -> None:
        for level in pattern:
            self.dut.o__ready.value = level
            await RisingEdge(self.dut.clk)

    def _start_ready(self, pattern) -> None:
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_task.cancel()
        self._ready_task = cocotb.start_soon(self._drive_ready(pattern))
        self._tasks.append(self._ready_task)

    async def _wait(self, until, limit: int, what: str) -> None:
        """Clock until ``until()`` holds (checked in ReadOnly); returns after a rising edge."""
        for _ in range(limit):
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if until():
                await RisingEdge(self.dut.clk)
                return
        raise AssertionError(f"timed out after {limit} clocks waiting for {what}")

    async def _quiet(self, clocks: int, limit: int) -> None:
        """Wait until ``o`` has been idle (not valid) for ``clocks`` clocks in a row."""
        idle = [0]

        def check():
            idle[0] = 0 if self.dut.o__valid.value == 1 else idle[0] + 1
            return idle[0] >= clocks
        await self._wait(check, limit, f"{clocks} idle clocks on o")

    async def run(self, samples: np.ndarray, regs: Regs, rand: list[int], *,
                  ready_pattern, rng: random.Random, p_rand: float,
                  expect: int | None = None, drain_limit: int = 40_000,
                  updates: dict[int, Regs] | None = None) -> Result:
        """Reset, drive ``samples`` (cycle 0 = first clock out of reset), drain, flush.

        ``updates`` maps a cycle to the registers written on it (host drift correction).

        ``expect`` (the number of detections when nothing is lost) lets the drain wait for
        the outputs before the quiet period; the flush follows once the pipeline is idle, so
        it does not split any slot.
        """
        dut = self.dut
        await self.reset(regs)
        self._tasks.append(cocotb.start_soon(self._monitor()))
        self._tasks.append(cocotb.start_soon(self._drive_rand(rand, rng, p_rand)))
        self._start_ready(ready_pattern)
        dut.rst.value = 0
        updates = updates or {}
        for n, word in enumerate(encode(samples)):
            if n:
                await RisingEdge(dut.clk)
            dut.pins.value = word
            if n in updates:
                self.set_regs(updates[n])
        await RisingEdge(dut.clk)
        dut.pins.value = 0
        # drain with random backpressure still on: every event but the held one comes out
        if expect is not None:
            await self._wait(lambda: len(self.got) >= expect - 1, drain_limit,
                             f"{expect - 1} detections (have {len(self.got)})")
        await self._quiet(1000, drain_limit)
        dut.flush.value = 1
        await RisingEdge(dut.clk)
        dut.flush.value = 0
        self._start_ready(itertools.repeat(1))
        await self._quiet(100, 2000)
        await ReadOnly()
        result = Result(list(self.got), self.rand_taken, dut.lost_count.value.to_unsigned(),
                        dut.rejected_count.value.to_unsigned(),
                        dut.dropped_count.value.to_unsigned())
        await RisingEdge(dut.clk)
        self._stop()
        return result


def check_exact(dut, ref: Reference, res: Result, rand: list[int], label: str) -> None:
    """No loss: the detections are exactly the composed model's, and so are the counters."""
    expected = ref.detections(rand)
    assert len(res.got) == len(expected), \
        f"{label}: {len(res.got)} detections, model has {len(expected)}"
    for k, (g, e) in enumerate(zip(res.got, expected, strict=True)):
        assert g == e, f"{label}: detection {k} is {g}, model {e} (slot, basis, bit, multi, lost)"
    assert res.lost_count == 0, f"{label}: lost_count {res.lost_count} without overflow"
    n_rejected = int(np.count_nonzero(~ref.in_window))
    assert res.rejected_count == n_rejected, \
        f"{label}: rejected_count {res.rejected_count}, model rejects {n_rejected}"
    assert res.dropped_count == 0, f"{label}: dropped_count {res.dropped_count}"
    assert res.rand_taken == len(expected), \
        f"{label}: {res.rand_taken} random words taken for {len(expected)} detections"
    dut._log.info("%s: %d tagger events, %d rejected, %d detections (%d multi)", label,
                  len(ref.timestamps), n_rejected, len(expected),
                  sum(d[3] for d in expected))


def check_overflow(ref: Reference, res: Result, rand: list[int]) -> int:
    """Tagger FIFO overflow: a subsequence of the model, losses explained in-band.

    Requires every model tagger event to lie in a slot of its own (then each surviving
    in-window event is one detection); slot indices may wrap. Between two delivered detections,
    the in-band ``lost`` must be at least the model's skipped in-window events (all of which
    were dropped) and at most all the skipped events (the others were rejected). Returns the
    events lost.
    """
    slots = ref.slots.astype(np.int64)
    steps = np.diff(slots) % (1 << SLOT_WIDTH)
    assert np.all(steps > 0), "overflow stimulus must put each event in its own slot"
    prev = -1
    masks = []
    for n, (slot, *_, lost) in enumerate(res.got):
        k = prev + 1                # the first model event after the previous one in that slot
        while k < slots.size and slots[k] != slot:
            k += 1
        assert k < slots.size, f"detection {n} slot {slot} not found after model event {prev}"
        assert ref.in_window[k], f"detection {n}: slot {slot} is out of the window in the model"
        skipped = ref.in_window[prev + 1:k]
        assert int(skipped.sum()) <= lost <= skipped.size, \
            f"detection {n}: lost={lost} but the model skips {skipped.size} events " \
            f"({int(skipped.sum())} in window)"
        masks.append(int(ref.masks[k]))
        prev = k
    assert not ref.in_window[prev + 1:].any(), "in-window model events missing at the end"
    expected = ref_detections([g[0] for g in res.got], masks, rand, [g[4] for g in res.got])
    assert res.got == expected, "decoded fields differ from decode_basis on the survivors"
    in_band = sum(g[4] for g in res.got)
    assert in_band == res.lost_count, f"in-band lost {in_band} != lost_count {res.lost_count}"
    total = len(ref.timestamps)
    assert res.lost_count + res.rejected_count + len(res.got) == total, \
        f"{res.lost_count} lost + {res.rejected_count} rejected + {len(res.got)} detections " \
        f"!= {total} model events"
    assert res.dropped_count == 0
    assert res.rand_taken == len(res.got)
    return res.lost_count


# --------------------------------------------------------------------------------------------
# Register sets and tests
# --------------------------------------------------------------------------------------------

def register_sets() -> list[Regs]:
    """Non-integer periods, positive and negative offsets, windows narrower than the period."""
    base = 3.65 * PHASES if PHASES > 1 else 5.3
    return [
        Regs.from_ticks(base, 13.7, (0.2, 0.8)),
        Regs.from_ticks(base + 0.41, -29.3, (0.1, 0.55), dead_time=PHASES + 1),
        Regs.from_ticks(2 * base + 0.173, 4.05, (0.35, 0.9), dead_time=3),
    ]


def seeded(offset: int) -> tuple[random.Random, np.random.Generator]:
    """Python and numpy generators from the cocotb seed (printed) plus ``offset``."""
    seed = cocotb.RANDOM_SEED + offset
    cocotb.log.info("rng seed %d (COCOTB_RANDOM_SEED %d)", seed, cocotb.RANDOM_SEED)
    return random.Random(seed), np.random.default_rng(seed)


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def test_boundaries_always_ready(dut):
    """Hand-picked boundary clicks plus sparse traffic; sink and random source never stall."""
    bench = ReceiverBench(dut)
    pyrng, rng = seeded(1)
    regs = register_sets()[0]
    ticks = 1500 * PHASES
    quiet_until = 110 * PHASES              # the boundary clicks alone before this tick
    clicks = [(0, 0), (1, 1)] + boundary_clicks(40) + [
        c for c in slot_clicks(rng, ticks, regs, p_slot=0.05, p_multi=0.3, p_spread=0.5,
                               p_outside=0.3) if quiet_until <= c[0] < ticks]
    samples = to_samples(levels_from_clicks(rng, ticks, clicks, max_pulse=1))
    ref = ref_receiver(samples, regs)
    rand = [pyrng.randrange(4) for _ in range(len(ref.merged_slots) + 8)]
    res = await bench.run(samples, regs, rand, ready_pattern=itertools.repeat(1), rng=pyrng,
                          p_rand=1.0, expect=len(ref.merged_slots))
    check_exact(dut, ref, res, rand, "boundaries")
    # hand-worked anchors, independent of the model: clicks at ticks 0 (H) and 1 (V) precede
    # slot 0 (offset 13.7 ticks) and are rejected; with PHASES == 2 they share clock 0
    assert (int(ref.timestamps[0]), int(ref.masks[0])) == (0, 0b11 if PHASES > 1 else 0b01)
    assert not ref.in_window[0]
    q, c = PHASES, 40 // PHASES + 1
    events = set(zip(ref.timestamps.tolist(), ref.masks.tolist(), strict=True))
    for anchor in ((c * q, 0b0011), ((c + 8) * q - 1, 0b0100), ((c + 8) * q, 0b1000),
                   ((c + 20) * q + q // 2, 0b1111), ((c + 40) * q, 0b1100),
                   ((c + 60) * q + q - 1, 0b0011)):
        assert anchor in events, f"boundary event {anchor} missing from the tagger model"
    assert res.rejected_count >= 1
    assert any(d[3] for d in res.got), "no multi-click reached the output"


@cocotb.test(timeout_time=400, timeout_unit="ms")
async def test_random_traffic_backpressure(dut):
    """Poisson-ish clicks and dark counts, random gaps on ``rand``, random stalls on ``o``."""
    bench = ReceiverBench(dut)
    pyrng, rng = seeded(2)
    totals = {"events": 0, "merged": 0, "rejected": 0, "cross": 0}
    phases_seen = set()
    for n, regs in enumerate(register_sets()):
        # about one tagger event per 50 clocks; the slot assigner (16 + 3 k clocks per event,
        # k = bit length of the slot gap, about 4 here) plus these stalls keep up on average,
        # so bursts queue in the tagger FIFO but never overflow it
        ticks = 10_000 * PHASES
        clicks = slot_clicks(rng, ticks, regs, p_slot=regs.period_ticks / (50 * PHASES),
                             p_multi=0.3, p_spread=0.6, p_outside=0.25)
        samples = to_samples(levels_from_clicks(rng, ticks, clicks, p_dark=2e-4))
        ref = ref_receiver(samples, regs)
        rand = [pyrng.randrange(4) for _ in range(len(ref.merged_slots) + 8)]
        p_ready, p_rand = ((0.8, 0.7), (0.5, 0.9), (0.95, 0.4))[n]
        res = await bench.run(samples, regs, rand, rng=pyrng, p_rand=p_rand,
                              ready_pattern=stall_pattern(pyrng, p_ready, 12),
                              expect=len(ref.merged_slots))
        check_exact(dut, ref, res, rand, f"regs {n} {regs}")
        totals["events"] += len(ref.timestamps)
        totals["merged"] += int(ref.in_window.sum()) - len(ref.merged_slots)
        totals["rejected"] += res.rejected_count
        z, x = ref.merged_masks & 3, ref.merged_masks >> 2
        totals["cross"] += int(np.count_nonzero((z != 0) & (x != 0)))
        phases_seen |= set((ref.timestamps % PHASES).tolist())
    dut._log.info("totals %s", totals)
    assert totals["merged"] > 0, "no same-slot merge exercised"
    assert totals["rejected"] > 0, "no out-of-window event exercised"
    assert totals["cross"] > 0, "no cross-basis multi-click exercised"
    assert phases_seen == set(range(PHASES)), f"edges only on phases {phases_seen}"


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_drift_update_in_gap(dut):
    """The host reprograms period and offset between blocks, keeping slot numbers continuous.

    The update falls in a quiet gap (the chain is idle), so the events before it use the old
    registers and those after it the new ones; ``offset = B - S * period_new`` with ``B`` the
    start of slot ``S`` under the old registers.
    """
    bench = ReceiverBench(dut)
    pyrng, rng = seeded(5)
    old = register_sets()[1]
    new_period = old.period + 2 * (1 << FRAC) // 7         # the clock drifted by 2/7 tick
    half = 3000 * PHASES                                    # ticks of each block
    gap = 1500 * PHASES                                     # quiet ticks around the update
    change = half + gap // 2
    S = -(((change << FRAC) - old.offset) // -old.period)          # first slot after it
    B = old.offset + S * old.period
    new = Regs(new_period, B - S * new_period, old.window_start * new_period // old.period,
               old.window_end * new_period // old.period, old.dead_time)
    new.check()
    ticks = 2 * half + gap
    # a click every ~120 clocks: the slot assigner (~50-85 clocks an event) and the stalls
    # below keep up, so the chain is idle at the update
    kw = dict(p_slot=old.period_ticks / (120 * PHASES), p_multi=0.3, p_spread=0.5,
              p_outside=0.25)
    clicks = [c for c in slot_clicks(rng, ticks, old, **kw) if c[0] < half] \
        + [c for c in slot_clicks(rng, ticks, new, **kw) if c[0] >= half + gap]
    samples = to_samples(levels_from_clicks(rng, ticks, clicks))
    ts, masks = tag_edges(samples, phases=PHASES, dead_time=old.dead_time, width=TS_WIDTH)
    after = ts >= change
    slots, ok = np.zeros(ts.size, np.uint64), np.zeros(ts.size, bool)
    for regs, sel in ((old, ~after), (new, after)):
        slots[sel], ok[sel] = assign_slots(
            ts[sel], period=regs.period, offset=regs.offset, window_start=regs.window_start,
            window_end=regs.window_end, frac_bits=FRAC, slot_width=SLOT_WIDTH)
    merged_slots, merged_masks = merge_slot_events(slots, masks, ok)
    ref = Reference(ts, masks, slots, ok, merged_slots, merged_masks)
    assert after.any() and (~after).any()
    assert np.all(slots[after & ok].astype(np.int64) >= S), "slot numbering not continuous"
    assert np.all(np.diff(merged_slots.astype(np.int64)) > 0), "slots not increasing"
    stale = ref_receiver(samples, old)
    assert (stale.merged_slots.tolist(), stale.merged_masks.tolist()) \
        != (merged_slots.tolist(), merged_masks.tolist()), "the update changes nothing"
    rand = [pyrng.randrange(4) for _ in range(len(merged_slots) + 8)]
    res = await bench.run(samples, old, rand, rng=pyrng, p_rand=0.7,
                          ready_pattern=stall_pattern(pyrng, 0.7, 10),
                          expect=len(merged_slots), updates={change // PHASES: new})
    check_exact(dut, ref, res, rand, "drift update")


@cocotb.test(timeout_time=200, timeout_unit="ms", skip=TS_WIDTH > 16)
async def test_timestamp_wrap(dut):
    """Narrow widths: run past the timestamp wrap (and slot wraps), output still bit-exact."""
    bench = ReceiverBench(dut)
    pyrng, rng = seeded(3)
    regs = register_sets()[0]
    ticks = (1 << TS_WIDTH) + 1500 * PHASES
    clicks = slot_clicks(rng, ticks, regs, p_slot=0.06, p_multi=0.2, p_spread=0.3,
                         p_outside=0.2)
    # the slot grid keeps counting in the clicks, but timestamps wrap: after the wrap the
    # model's slots restart from the wrapped timestamp
    samples = to_samples(levels_from_clicks(rng, ticks, clicks))
    ref = ref_receiver(samples, regs)
    ts_back = np.diff(ref.timestamps.astype(np.int64)) < 0
    slot_back = np.diff(ref.merged_slots.astype(np.int64)) < 0
    assert ts_back.sum() == 1, "no timestamp wrap"
    assert slot_back.sum() >= 2, "no slot wrap besides the one at the timestamp wrap"
    rand = [pyrng.randrange(4) for _ in range(len(ref.merged_slots) + 8)]
    res = await bench.run(samples, regs, rand, rng=pyrng, p_rand=0.8,
                          ready_pattern=stall_pattern(pyrng, 0.8, 8),
                          expect=len(ref.merged_slots))
    check_exact(dut, ref, res, rand, "wrap")


@cocotb.test(timeout_time=400, timeout_unit="ms")
async def test_fifo_overflow_lost_counts(dut):
    """A long stall on ``o`` under dense traffic overflows the tagger FIFO: losses in-band."""
    bench = ReceiverBench(dut)
    pyrng, rng = seeded(4)
    regs = register_sets()[0]
    per_clock = regs.period_ticks / PHASES
    # about 2.5 FIFOs of events arrive during the stall, dense traffic goes on for a while
    # after it, then a sparse tail while the FIFO drains: the tail's events enter the FIFO
    # behind the last drops and carry them in-band (drops with no later event cannot be)
    stall = int(2.5 * FIFO_DEPTH * per_clock / 0.5)
    dense = (stall + 1200) * PHASES
    ticks = dense + 15000 * PHASES
    clicks = slot_clicks(rng, dense, regs, p_slot=0.5, p_multi=0.2, p_spread=0.0,
                         p_outside=0.1, late_only=True)
    tail = slot_clicks(rng, ticks, regs, p_slot=0.03, p_multi=0.2, p_spread=0.0,
                       p_outside=0.0)
    # Past a timestamp wrap (the narrow widths reach one) slot boundaries move, so two clicks
    # of neighbouring generator slots may share a slot: keep the tail's clicks two periods apart.
    last = None
    for tick, chan in tail:
        if tick == last or tick >= (dense if last is None else last) + 2 * regs.period_ticks:
            clicks.append((tick, chan))
            last = tick
    samples = to_samples(levels_from_clicks(rng, ticks, clicks, max_pulse=2))
    ref = ref_receiver(samples, regs)
    rand = [pyrng.randrange(4) for _ in range(len(ref.timestamps) + 8)]
    pattern = itertools.chain([1] * 100, [0] * stall, stall_pattern(pyrng, 0.7, 6))
    res = await bench.run(samples, regs, rand, rng=pyrng, p_rand=0.9, ready_pattern=pattern)
    lost = check_overflow(ref, res, rand)
    dut._log.info("overflow: %d tagger events, %d delivered, %d lost in-band, %d rejected, "
                  "slot wrap %s", len(ref.timestamps), len(res.got), lost, res.rejected_count,
                  bool(np.any(np.diff(ref.slots.astype(np.int64)) < 0)))
    assert lost > 0, "the stall did not overflow the tagger FIFO"
    assert len(res.got) > FIFO_DEPTH, "too few detections survived to check the subsequence"
