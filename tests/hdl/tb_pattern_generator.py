"""cocotb testbench for :class:`mozi.hdl.pattern_generator.PatternGenerator`.

One coroutine drives every input at random each clock — the slot strobe, ``enable``, the
random word's ``valid`` (so some slots find no word) and the records' ``ready`` (so some
records are lost) — and checks every output on every clock against
:func:`mozi.sim.model.alice_choices`, :func:`~mozi.sim.model.laser_triggers` and
:func:`~mozi.sim.model.alice_record`: the laser pulse and intensity the clock after each
strobe, the record offered on ``records`` (the previous one lost when a strobe finds it not
taken), and the ``underruns`` and ``records_lost`` counters.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from mozi.hdl.pattern_generator import VACUUM
from mozi.sim.model import alice_choices, alice_record, laser_triggers

from tests.hdl.streams import reset, start_clock


def _seeded(offset: int) -> random.Random:
    seed = cocotb.RANDOM_SEED + offset
    cocotb.log.info("rng seed %d (COCOTB_RANDOM_SEED %d)", seed, cocotb.RANDOM_SEED)
    return random.Random(seed)


def _words(rng: random.Random, t_basis: int, t0: int, t1: int):
    """Random words, a third of them on the thresholds' edges."""
    edges_b = [v & 0x7FFFFFFF for v in (t_basis - 1, t_basis, 0, 0x7FFFFFFF)]
    edges_u = [v & 0xFFFFFFFF for v in (t0 - 1, t0, t1 - 1, t1, 0, 0xFFFFFFFF)]
    while True:
        w = rng.getrandbits(64)
        if rng.random() < 0.33:
            w = (w & (1 << 63)) | rng.choice(edges_b) << 32 | rng.choice(edges_u)
        yield w


def _expected(word, t_basis, t0, t1):
    """(lasers, intensity, record) of a slot; ``word`` None for a dark slot."""
    if word is None:
        return 0, VACUUM, int(alice_record(0, 0, VACUUM))
    basis, bit, intensity = alice_choices([word], t_basis, t0, t1)
    return (int(laser_triggers(basis, bit, intensity)[0]), int(intensity[0]),
            int(alice_record(basis, bit, intensity)[0]))


async def run_case(dut, rng, *, clocks, t_basis, t0, t1, p_slot=1.0, p_rand=1.0,
                   p_ready=1.0, p_enable=1.0):
    await reset(dut, ("rand",), ("records",))
    cocotb.log.info("%d clocks, t_basis=%d t_int0=%d t_int1=%d, p(slot)=%.2f p(word)=%.2f "
                    "p(ready)=%.2f p(enable)=%.2f", clocks, t_basis, t0, t1, p_slot, p_rand,
                    p_ready, p_enable)
    dut.t_basis.value, dut.t_int0.value, dut.t_int1.value = t_basis, t0, t1
    words = _words(rng, t_basis, t0, t1)
    word = next(words)
    lasers, intensity = 0, VACUUM             # expected outputs in the current clock
    pending = None                            # the record expected on `records`
    strobes = dark = lost = delivered = fired = 0
    for clock in range(clocks):
        slot, enable = rng.random() < p_slot, rng.random() < p_enable
        valid, ready = rng.random() < p_rand, rng.random() < p_ready
        dut.slot.value, dut.enable.value = int(slot), int(enable)
        dut.rand__valid.value, dut.rand__payload.value = int(valid), word
        dut.records__ready.value = int(ready)
        await ReadOnly()
        where = f"clock {clock}"
        assert int(dut.lasers.value) == lasers, f"{where}: lasers {dut.lasers.value}, " \
                                                f"expected {lasers:04b}"
        assert int(dut.intensity.value) == intensity, f"{where}: intensity"
        assert bool(dut.records__valid.value) == (pending is not None), f"{where}: valid"
        if pending is not None:
            assert int(dut.records__payload.value) == pending, f"{where}: record"
        strobe = slot and enable
        assert bool(dut.rand__ready.value) == strobe, f"{where}: rand.ready"
        if pending is not None and ready:
            delivered += 1
            pending = None
        lasers = 0
        if strobe:
            strobes += 1
            taken = word if valid else None
            dark += taken is None
            lasers, intensity, record = _expected(taken, t_basis, t0, t1)
            fired += lasers != 0
            lost += pending is not None
            pending = record
            if valid:
                word = next(words)
        await RisingEdge(dut.clk)
    dut.slot.value = 0
    await ReadOnly()
    assert int(dut.underruns.value) == dark, f"underruns {int(dut.underruns.value)} != {dark}"
    assert int(dut.records_lost.value) == lost, \
        f"records_lost {int(dut.records_lost.value)} != {lost}"
    assert delivered + lost + (pending is not None) == strobes
    cocotb.log.info("%d slots: %d fired, %d dark, %d records lost", strobes, fired, dark, lost)
    await RisingEdge(dut.clk)


CONFIGS = [  # (t_basis, t_int0, t_int1): the simulator's default source, and the extremes
    (1 << 30, 1 << 31, 3 << 30),
    (0, 0, 1 << 32),                    # always X, always decoy
    (1 << 31, 1 << 32, 1 << 32),        # always Z, always signal
    (12345, 1 << 20, 1 << 20),          # no decoy
    (0x7FFFFFFF, 0, 0),                 # always vacuum
]


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_one_slot_per_clock(dut):
    """A slot every clock, every word there, every record taken: nothing dark or lost."""
    start_clock(dut)
    rng = _seeded(1)
    for t_basis, t0, t1 in CONFIGS:
        await run_case(dut, rng, clocks=400, t_basis=t_basis, t0=t0, t1=t1)
    assert int(dut.underruns.value) == 0 and int(dut.records_lost.value) == 0


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_random_slots_underruns_and_lost_records(dut):
    """Random strobes, missing words, records consumer stalls, enable toggling."""
    start_clock(dut)
    rng = _seeded(2)
    for t_basis, t0, t1 in CONFIGS:
        for p_slot, p_rand, p_ready, p_enable in ((0.5, 0.8, 0.7, 1.0), (1.0, 0.6, 0.4, 0.8),
                                                  (0.2, 0.3, 0.9, 0.5)):
            await run_case(dut, rng, clocks=600, t_basis=t_basis, t0=t0, t1=t1,
                           p_slot=p_slot, p_rand=p_rand, p_ready=p_ready, p_enable=p_enable)
    for _ in range(6):                   # random thresholds
        t0 = rng.randrange(0, (1 << 32) + 1)
        await run_case(dut, rng, clocks=600, t_basis=rng.randrange(0, (1 << 31) + 1), t0=t0,
                       t1=rng.randrange(t0, (1 << 32) + 1), p_slot=0.7, p_rand=0.9,
                       p_ready=0.8, p_enable=0.9)
