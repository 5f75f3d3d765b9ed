"""cocotb testbench: SlotAssigner against ``assign_slots`` + ``merge_slot_events``.

Driver (events on ``i`` with random idle gaps, register writes and ``flush`` strobes between
them) → monitor (handshakes on ``o``, random ``ready`` stalls) → model → in-order checker.
The model is :func:`mozi.sim.model.assign_slots` per event with the registers in force when
the event was accepted, then :func:`mozi.sim.model.merge_slot_events` per flush block; the
``lost`` bookkeeping follows ``mozi.hdl.layouts`` (carried onto the next emitted event, summed,
saturating). Run through ``tests/hdl/test_slot_assigner.py``.
"""

import itertools
import random
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from mozi.hdl.layouts import LOST_WIDTH
from mozi.hdl.slot_assigner import SlotAssigner
from mozi.sim.cocotb_runner import test_params
from mozi.sim.model import assign_slots, carry_lost, merge_slot_events

P = test_params()
TS_WIDTH = P.get("timestamp_width", 48)
SLOT_WIDTH = P.get("slot_width", 48)
FRAC = P.get("frac_bits", 16)
CHANNELS = P.get("channels", 4)
PERIOD_WIDTH = P.get("period_width", 24)
REJ_WIDTH = P.get("rejected_width", 32)
OFFSET_WIDTH = TS_WIDTH + FRAC + 1
LOST_MAX = (1 << LOST_WIDTH) - 1
TS_MASK = (1 << TS_WIDTH) - 1
#: The core's timing figures (never elaborated).
CORE = SlotAssigner(**P)
CORE._MustUse__silence = True


@dataclass(frozen=True)
class Regs:
    period: int
    offset: int
    window_start: int
    window_end: int

    def check(self) -> None:
        assert 0 < self.period < (1 << PERIOD_WIDTH)
        assert -(1 << (OFFSET_WIDTH - 1)) <= self.offset < (1 << (OFFSET_WIDTH - 1))
        assert 0 <= self.window_start < self.window_end <= self.period


@dataclass(frozen=True)
class Event:
    ts: int
    mask: int
    lost: int


FLUSH = "flush"
REBASE = "rebase"


def ref_slot_assigner(ops) -> tuple[list[tuple[int, int, int]], int]:
    """Model output ``(slot, mask, lost)`` and rejected count for a list of operations.

    ``ops`` holds ``(Event, Regs)`` pairs (the registers in force when the event is accepted)
    and :data:`FLUSH` markers. Slots from :func:`assign_slots`, runs of one slot merged as
    :func:`merge_slot_events` merges them (a flush ends a run; a run still open at the end is
    held, not emitted), loss counts carried by :func:`carry_lost`.
    """
    slots, masks, lost, accepted, flushed_after = [], [], [], [], []
    for op in ops:
        if op == REBASE:
            continue
        if op == FLUSH:
            if flushed_after:
                flushed_after[-1] = True
            continue
        ev, regs = op
        s, ok = assign_slots(np.array([ev.ts], np.uint64), period=regs.period,
                             offset=regs.offset, window_start=regs.window_start,
                             window_end=regs.window_end, frac_bits=FRAC, slot_width=SLOT_WIDTH)
        slots.append(int(s[0]))
        masks.append(ev.mask)
        lost.append(ev.lost)
        accepted.append(bool(ok[0]))
        flushed_after.append(False)
    # an accepted event ends its run when a flush or an accepted event of another slot
    # follows before the next accepted event of its own slot
    ends = [False] * len(slots)
    run_mask = {}
    out_masks = []
    pending = None                          # index of the open run's latest event
    for k in range(len(slots)):
        if accepted[k]:
            if pending is not None and slots[pending] != slots[k]:
                ends[pending] = True
            run_mask[k] = (run_mask.pop(pending, 0) if pending is not None and
                           slots[pending] == slots[k] else 0) | masks[k]
            if pending is not None and slots[pending] != slots[k]:
                out_masks.append(run_mask.pop(pending))
            pending = k
        if flushed_after[k] and pending is not None:
            ends[pending] = True
            out_masks.append(run_mask.pop(pending))
            pending = None
    kept_lost, _ = carry_lost(np.array(lost, np.int64), np.array(ends, bool),
                              maximum=LOST_MAX)
    out_slots = [slots[k] for k in range(len(slots)) if ends[k]]
    out = [(s, m, int(n)) for s, m, n in zip(out_slots, out_masks, kept_lost, strict=True)]
    # the merge rule is merge_slot_events', applied between flushes
    merged, block = [], []
    for k in range(len(slots)):
        block.append(k)
        if flushed_after[k]:
            sl, mk = merge_slot_events(np.array([slots[i] for i in block], np.uint64),
                                       np.array([masks[i] for i in block], np.uint8),
                                       np.array([accepted[i] for i in block], bool))
            merged.extend(zip(sl.tolist(), mk.tolist(), strict=True))
            block = []
    assert [(s, m) for s, m, _ in out] == merged, "merging disagrees with model"
    return out, accepted.count(False)


class SlotBench:
    """Clock, reset, input driver, ready driver and output monitor for one SlotAssigner."""

    def __init__(self, dut):
        self.dut = dut
        self.got: list[tuple[int, int, int]] = []
        self.ops: list = []
        self.accept_cycles: list[int] = []
        self._tasks = []
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    async def reset(self) -> None:
        dut = self.dut
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self.got, self.ops, self.accept_cycles = [], [], []
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.i__payload.value = 0
        dut.o__ready.value = 0
        dut.flush.value = 0
        dut.rebase.value = 0
        dut.period.value = 1
        dut.offset.value = 0
        dut.window_start.value = 0
        dut.window_end.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        self._tasks.append(cocotb.start_soon(self.monitor()))

    def set_regs(self, regs: Regs) -> None:
        """New register values, with the ``rebase`` strobe (call right after a rising edge,
        with the core idle, as the receiver top's register block does)."""
        regs.check()
        dut = self.dut
        assert dut.config_busy.value == 0, "registers written while the core reads them"
        dut.period.value = regs.period
        dut.offset.value = regs.offset & ((1 << OFFSET_WIDTH) - 1)
        dut.window_start.value = regs.window_start
        dut.window_end.value = regs.window_end
        dut.rebase.value = 1
        self.regs = regs
        self.ops.append(REBASE)

        async def end_strobe():
            await RisingEdge(dut.clk)
            dut.rebase.value = 0
        cocotb.start_soon(end_strobe())

    async def monitor(self):
        dut = self.dut
        s_mask = (1 << SLOT_WIDTH) - 1
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.o__valid.value == 1 and dut.o__ready.value == 1:
                v = dut.o__payload.value.to_unsigned()
                self.got.append((v & s_mask, (v >> SLOT_WIDTH) & ((1 << CHANNELS) - 1),
                                 v >> (SLOT_WIDTH + CHANNELS)))

    def drive_ready(self, pattern) -> None:
        async def run():
            for r in pattern:
                await RisingEdge(self.dut.clk)
                self.dut.o__ready.value = r
        self._tasks.append(cocotb.start_soon(run()))

    async def send(self, ev: Event, flush_with: bool = False) -> None:
        """Present ``ev`` until accepted; optionally strobe ``flush`` on its first clock.

        Call right after a rising edge; returns right after the accepting edge.
        """
        dut = self.dut
        dut.i__payload.value = (ev.ts | ev.mask << TS_WIDTH
                                | ev.lost << (TS_WIDTH + CHANNELS))
        dut.i__valid.value = 1
        if flush_with:
            dut.flush.value = 1
        first = True
        flush_after = False
        while True:
            await ReadOnly()
            accepted = dut.i__ready.value == 1
            if first and flush_with:
                if accepted:
                    flush_after = True          # accepted on the flush clock: flushed with it
                else:
                    self.ops.append(FLUSH)      # the flush wins: the event comes after it
            await RisingEdge(dut.clk)
            if first and flush_with:
                dut.flush.value = 0
            first = False
            if accepted:
                break
        dut.i__valid.value = 0
        self.ops.append((ev, self.regs))
        self.accept_cycles.append(round(get_sim_time("ns")) // 10)
        if flush_after:
            self.ops.append(FLUSH)

    async def flush(self) -> None:
        """Strobe ``flush`` for one clock (call right after a rising edge)."""
        self.dut.flush.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.flush.value = 0
        self.ops.append(FLUSH)

    async def idle(self, cycles: int) -> None:
        if cycles:
            await ClockCycles(self.dut.clk, cycles)

    async def finish(self) -> int:
        """Flush, drain with ``ready`` high, stop the monitor; returns ``rejected_count``."""
        dut = self.dut
        await self.flush()
        for task in self._tasks[1:]:
            task.cancel()
        dut.o__ready.value = 1
        # worst case: one full division plus the flush
        await ClockCycles(dut.clk, 3 * (OFFSET_WIDTH + 4) + 24)
        await ReadOnly()
        assert dut.o__valid.value == 0
        assert dut.idle.value == 1, "core not idle after the drain"
        rejected = dut.rejected_count.value.to_unsigned()
        await RisingEdge(dut.clk)
        return rejected

    def check(self, rejected: int) -> tuple[int, int]:
        expected, n_rej = ref_slot_assigner(self.ops)
        assert self.got == expected, _first_diff(self.got, expected)
        assert rejected == min(n_rej, (1 << REJ_WIDTH) - 1), (rejected, n_rej)
        return len(expected), n_rej


def _first_diff(got, expected) -> str:
    for n, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            return f"output {n}: got {g}, model {e}"
    return f"lengths differ: got {len(got)}, model {len(expected)}"


def base_regs(period_ticks: int = 40, drift: int = 0) -> Regs:
    period = (period_ticks << FRAC) + drift
    return Regs(period, 0, period // 10, period - period // 5)


def regs_placing(regs: Regs, ts: int, residue: int, slot: int = 3) -> Regs:
    """``regs`` with the offset that puts timestamp ``ts`` at ``residue`` of ``slot``."""
    offset = (ts << FRAC) - (slot * regs.period + residue)
    return Regs(regs.period, offset, regs.window_start, regs.window_end)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_window_edges(dut):
    """Residue exactly window_start / window_end - 1 / window_end, slot boundaries, merges."""
    bench = SlotBench(dut)
    await bench.reset()
    dut.o__ready.value = 1
    r0 = base_regs()
    per, ws, we = r0.period, r0.window_start, r0.window_end
    ts0 = 200
    # residue = window_start at ts0, then walk through the slot one tick (2**FRAC) at a time
    bench.set_regs(regs_placing(r0, ts0, ws))
    last_in = (we - 1 - ws) >> FRAC          # ticks from ts0 to the last in-window tick
    for d, mask in ((0, 1), (0, 2), (last_in, 4), (last_in + 1, 8)):
        await bench.send(Event(ts0 + d, mask, 0))
    # residue exactly window_end - 1 and exactly window_end (fresh offsets)
    t = ts0 + 100
    bench.set_regs(regs_placing(r0, t, we - 1, slot=4))
    await bench.send(Event(t, 1, 0))
    bench.set_regs(regs_placing(r0, t + 1, we))
    await bench.send(Event(t + 1, 2, 0))
    bench.set_regs(regs_placing(r0, t + 2, ws - 1))
    await bench.send(Event(t + 2, 4, 0))
    # residue period - 1 and 0 (slot boundary), with a window covering the whole slot
    full = Regs(per, 0, 0, per)
    bench.set_regs(regs_placing(full, t + 3, per - 1, slot=5))
    await bench.send(Event(t + 3, 1, 0))
    bench.set_regs(regs_placing(full, t + 4, 0, slot=9))
    await bench.send(Event(t + 4, 15, 0))     # all-clicks mask
    rejected = await bench.finish()
    n_out, n_rej = bench.check(rejected)
    expected, _ = ref_slot_assigner(bench.ops)
    # hand-worked: slot 3 holds masks 1|2|4 (the 4th event, at window_end, is rejected);
    # then slot 4 (window_end - 1), two rejections, slots 5 and 9.
    assert [(s, m) for s, m, _ in expected] == [(3, 7), (4, 1), (5, 1), (9, 15)]
    assert n_rej == 3


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_lost_across_rejection(dut):
    """A rejected event between two merged ones: its ``lost`` joins the merged event."""
    bench = SlotBench(dut)
    await bench.reset()
    dut.o__ready.value = 1
    r0 = base_regs()
    ts0 = 120
    a = regs_placing(r0, ts0, r0.window_start)
    narrow = Regs(a.period, a.offset, a.window_start + (4 << FRAC), a.window_end)
    bench.set_regs(a)
    await bench.send(Event(ts0, 1, 1))
    bench.set_regs(narrow)                            # window moved past the next event
    await bench.send(Event(ts0 + 1, 2, 4))            # rejected, lost carried
    bench.set_regs(a)
    await bench.send(Event(ts0 + 2, 4, 16))           # same slot as the first: merged
    await bench.send(Event(ts0 + 40, 8, 0))           # next slot
    rejected = await bench.finish()
    bench.check(rejected)
    assert rejected == 1
    assert bench.got == [(3, 5, 21), (4, 8, 0)]


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_offset_change_in_high_bits(dut):
    """An offset change in its top bits only must not reuse the previous division."""
    bench = SlotBench(dut)
    await bench.reset()
    dut.o__ready.value = 1
    r0 = base_regs()
    full = Regs(r0.period, 0, 0, r0.period)
    bench.set_regs(regs_placing(full, 100, 5, slot=2))
    await bench.send(Event(100, 1, 0))
    shifted = Regs(full.period, bench.regs.offset - (1 << (OFFSET_WIDTH - 4)), 0, full.period)
    bench.set_regs(shifted)
    await bench.send(Event(101, 2, 0))
    bench.set_regs(Regs(full.period + (1 << (PERIOD_WIDTH - 2)), shifted.offset, 0,
                        full.period + (1 << (PERIOD_WIDTH - 2))))
    await bench.send(Event(102, 4, 0))
    rejected = await bench.finish()
    bench.check(rejected)
    assert len(bench.got) == 3 and bench.got[0][0] == 2


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_negative_phase_gaps_and_wrap(dut):
    """phase < 0 and = 0, huge gaps, timestamps going back (wrap), flush splitting a slot."""
    bench = SlotBench(dut)
    await bench.reset()
    dut.o__ready.value = 1
    r0 = base_regs()
    ts = 300
    at_zero = Regs(r0.period, ts << FRAC, 0, r0.window_end)
    bench.set_regs(Regs(r0.period, (ts << FRAC) + 1, 0, r0.window_end))
    await bench.send(Event(ts, 1, 5))                 # phase = -1: rejected, lost carried
    bench.set_regs(at_zero)
    await bench.send(Event(ts, 2, 0))                 # phase = 0: slot 0, residue 0
    await bench.send(Event(ts + 1, 4, 1))             # same slot: merged
    await bench.flush()
    await bench.send(Event(ts + 2, 8, 0))             # same slot after a flush: not merged
    gap = min(1 << 40, (1 << TS_WIDTH) // 3)
    await bench.send(Event(ts + gap, 1, 0))           # a huge gap
    await bench.send(Event(ts + 2 * gap, 2, 0))
    await bench.send(Event((ts + 2 * gap + 7) & TS_MASK, 3, 0))
    await bench.send(Event(ts + 10, 4, 2))            # back in time (as after a wrap)
    await bench.send(Event(ts + 10 + 40 * 3, 8, 0))   # three slots later
    rejected = await bench.finish()
    bench.check(rejected)
    expected, n_rej = ref_slot_assigner(bench.ops)
    assert expected[0] == (0, 6, 6) and expected[1] == (0, 8, 0)
    assert n_rej >= 1


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_period_reprogrammed(dut):
    """Drift correction: period and offset change between blocks, slots stay continuous."""
    bench = SlotBench(dut)
    await bench.reset()
    bench.drive_ready(itertools.cycle([1, 1, 0, 1, 0, 0, 1]))
    rng = random.Random(cocotb.RANDOM_SEED)
    regs = Regs((40 << FRAC) + 3, -(7 << FRAC), 0, (40 << FRAC) + 3)
    ts = 50
    slot_at_switch = []
    for _block in range(4):
        bench.set_regs(regs)
        for _ in range(12):
            ts += rng.choice([1, 2, 17, 40, 41, 123])
            await bench.send(Event(ts & TS_MASK, rng.randint(1, 15), rng.randint(0, 2)))
        # reprogram: new period, offset continuing the slot numbering at the next slot
        phase = (ts << FRAC) - regs.offset
        s_next = phase // regs.period + 1
        b = regs.offset + s_next * regs.period
        new_period = regs.period + rng.randint(0, 40)     # never shorter: no slot skipped back
        regs = Regs(new_period, b - s_next * new_period, 0, new_period)
        slot_at_switch.append(s_next)
        if rng.random() < 0.5:
            await bench.flush()
    rejected = await bench.finish()
    bench.check(rejected)
    assert rejected == 0
    slots = [s for s, _, _ in bench.got]
    assert all(b >= a for a, b in itertools.pairwise(slots)) or SLOT_WIDTH < 16


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def test_random_stalls(dut):
    """Random events, registers, flushes; random valid gaps and ready stalls on both sides."""
    bench = SlotBench(dut)
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    await bench.reset()
    bench.drive_ready(rng.choice([0, 1, 1]) for _ in itertools.count())
    ts = rng.randrange(1 << min(TS_WIDTH, 20))
    total_out = total_rej = 0
    for _block in range(12):
        per_ticks = rng.choice([3, 7, 40])
        period = min((per_ticks << FRAC) + rng.randint(-(1 << FRAC) // 2, 1 << FRAC),
                     (1 << PERIOD_WIDTH) - 1)
        ws = rng.randrange(period)
        we = rng.randint(ws + 1, period)
        if rng.random() < 0.3:
            ws, we = 0, period
        if rng.random() < 0.5:   # slot 0 just behind or ahead (phase < 0 for a while)
            offset = (ts << FRAC) + rng.randint(-50 * period, 4 * period)
        else:                    # slot 0 far in the past: long from-scratch divisions
            offset = (ts << FRAC) - rng.randrange(1 << (OFFSET_WIDTH - 3))
        lim = 1 << (OFFSET_WIDTH - 1)
        bench.set_regs(Regs(period, max(-lim, min(lim - 1, offset)), ws, we))
        for _ in range(rng.randint(20, 150)):
            ts = (ts + rng.choice([0, 1, 1, 2, 3, per_ticks, rng.randrange(1, 200),
                                   rng.randrange(1, 1 << min(TS_WIDTH - 1, 30))])) & TS_MASK
            ev = Event(ts, rng.randint(1, (1 << CHANNELS) - 1),
                       rng.choice([0, 0, 0, 1, 3, LOST_MAX]))
            await bench.idle(rng.choice([0, 0, 0, 1, 5]))
            await bench.send(ev, flush_with=rng.random() < 0.02)
            if rng.random() < 0.02:
                await bench.flush()
    rejected = await bench.finish()
    total_out, total_rej = bench.check(rejected)
    n_in = len([o for o in bench.ops if o not in (FLUSH, REBASE)])
    dut._log.info("%d events in, %d out, %d rejected", n_in, total_out, total_rej)
    assert total_out > 50 and total_rej > 50


def ref_cycles(ops) -> list[int]:
    """Clocks each event occupies the core, from :meth:`SlotAssigner.event_cycles`, with
    the base (the slot start of the last division) and the held event followed here."""
    cycles = []
    base = None                      # absolute start of the last divided slot, or None
    held = None                      # slot of the held event, or None
    for op in ops:
        if op == REBASE:
            base = None
            continue
        if op == FLUSH:
            held = None
            continue
        ev, regs = op
        ts_f = ev.ts << FRAC
        phase = ts_f - regs.offset
        if base is not None and ts_f >= base:
            x, from_base = ts_f - base, True
        elif phase >= 0:
            x, from_base = phase, False
        else:
            cycles.append(CORE.reject_cycles)
            base = None
            continue
        slot = (phase // regs.period) % (1 << SLOT_WIDTH)
        load = 0
        if regs.window_start <= phase % regs.period < regs.window_end:
            load = 0 if held == slot else 2 if held is not None else 1
            held = slot
        cycles.append(CORE.event_cycles(x, from_base=from_base, load=load))
        base = ts_f - phase % regs.period
    return cycles


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def test_cycles_per_event(dut):
    """Back-to-back input, ready sink: each event takes exactly the clocks
    :meth:`SlotAssigner.event_cycles` says."""
    bench = SlotBench(dut)
    rng = random.Random(cocotb.RANDOM_SEED + 2)
    await bench.reset()
    dut.o__ready.value = 1
    regs = base_regs(40, drift=5)
    bench.set_regs(Regs(regs.period, 0, 0, regs.period))
    ts = 1000
    for _ in range(300):
        ts = (ts + rng.choice([0, 3, 40, 400, 4000, rng.randrange(1 << 12)])) & TS_MASK
        await bench.send(Event(ts, 1, 0))
    # slot 0 moved ahead: two events before it (phase < 0), then one after it
    bench.set_regs(Regs(regs.period, (ts + 50) << FRAC, 0, regs.period))
    for d in (1, 2, 60):
        await bench.send(Event((ts + d) & TS_MASK, 2, 0))
    rejected = await bench.finish()
    bench.check(rejected)
    assert rejected == 2
    measured = [b - a for a, b in itertools.pairwise(bench.accept_cycles)]
    predicted = ref_cycles(bench.ops)[1:]          # a handshake ends an event
    assert len(measured) == len(predicted)
    if measured != predicted:
        bad = [(k, m, p) for k, (m, p) in enumerate(zip(measured, predicted, strict=True))
               if m != p]
        raise AssertionError(f"{len(bad)} events off the model, first (event, measured, "
                             f"model): {bad[:6]}")
    dut._log.info("cycles per event (%d with no chunk skipped): min %d, mean %.1f, max %d",
                  CORE.base_cycles, min(measured),
                  sum(measured) / len(measured), max(measured))


@cocotb.test(timeout_time=50, timeout_unit="ms", skip=REJ_WIDTH > 8)
async def test_rejected_saturates(dut):
    """``rejected_count`` saturates; ``lost`` of rejected events survives onto the next one."""
    bench = SlotBench(dut)
    await bench.reset()
    dut.o__ready.value = 1
    regs = base_regs()
    bench.set_regs(regs)
    ts = 100
    n = (1 << REJ_WIDTH) + 5
    for _ in range(n):                                  # all out of window (residue 0)
        bench.set_regs(regs_placing(regs, ts, 0))
        await bench.send(Event(ts, 1, 700))
    bench.set_regs(regs_placing(regs, ts, regs.window_start))
    await bench.send(Event(ts, 2, 1))
    rejected = await bench.finish()
    bench.check(rejected)
    assert rejected == (1 << REJ_WIDTH) - 1
    assert bench.got == [(3, 2, min(700 * n + 1, LOST_MAX))]


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_period_zero_rejects(dut):
    """A period register of 0 (invalid for the model) rejects every event, never hangs."""
    bench = SlotBench(dut)
    await bench.reset()
    dut.o__ready.value = 1
    dut.period.value = 0
    dut.window_start.value = 0
    dut.window_end.value = 5
    for ts in (0, 1, 1000):
        bench.regs = None
        await bench.send(Event(ts, 1, 2))
    bench.set_regs(Regs(1 << FRAC, 0, 0, 1 << FRAC))
    await bench.send(Event(1001, 4, 0))
    rejected = await bench.finish()
    assert rejected == 3
    assert bench.got == [(1001 % (1 << SLOT_WIDTH), 4, 6)]
