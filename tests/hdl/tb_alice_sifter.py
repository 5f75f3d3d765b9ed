"""cocotb testbench for :class:`mozi.hdl.alice_sifter.AliceSifter` (run by test_alice_sifter).

Driver → monitor → model → in-order checker. Three drivers feed the block headers
(``first_slot``), Alice's record beats and Bob's reports with independent random ``valid``
gaps; the monitor applies random ``ready`` backpressure to ``o``. Expected answers come from
:func:`ref_sift`, which decides which reports the core must accept or drop (the documented
error rules) and takes the answers themselves from :func:`mozi.sim.model.sift_alice`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from mozi.hdl.alice_sifter import SiftError
from mozi.sim.cocotb_runner import test_params
from mozi.sim.model import alice_record, sift_alice

from tests.hdl.streams import drive, monitor, reset, start_clock

PARAMS = test_params()
SLOT_WIDTH = PARAMS.get("slot_width", 48)
LANES = PARAMS.get("lanes", 1)
SLOT_MAX = (1 << SLOT_WIDTH) - 1


@dataclass
class Block:
    """One block: Alice's records from ``first`` on (``LANES`` per beat) and Bob's reports."""

    first: int
    records: np.ndarray   # uint8, a multiple of LANES long
    slots: list[int]
    basis: list[int]

    def beats(self) -> list[int]:
        rec = self.records.reshape(-1, LANES).astype(int)
        words = []
        for k, row in enumerate(rec):
            word = sum(int(r) << (4 * j) for j, r in enumerate(row))
            words.append(word | int(k == len(rec) - 1) << (4 * LANES))
        return words

    def reports(self) -> list[int]:
        n = len(self.slots)
        return [s | (b & 1) << SLOT_WIDTH | int(k == n - 1) << (SLOT_WIDTH + 1)
                for k, (s, b) in enumerate(zip(self.slots, self.basis, strict=True))]


def ref_sift(blocks: list[Block]) -> tuple[list[tuple], list[SiftError]]:
    """Expected answers (slot, match, bit, intensity, last) and the codes of dropped reports.

    A report is dropped as NOT_INCREASING if not above the previous accepted report of its
    block, else as BEHIND if below the head beat of the record stream, else as BEYOND if past
    the block's records; otherwise it is answered with ``sift_alice`` on the accepted reports.
    """
    answers, errors = [], []
    for blk in blocks:
        end = blk.first + blk.records.size
        pos, prev = blk.first, None  # pos: first slot of the oldest beat still at hand
        kept = []
        for k, s in enumerate(blk.slots):
            if prev is not None and s <= prev:
                errors.append(SiftError.NOT_INCREASING)
            elif s < pos:
                errors.append(SiftError.BEHIND)
            elif s >= end:
                errors.append(SiftError.BEYOND)
                pos = end  # every beat was skipped looking for it
            else:
                kept.append(k)
                prev = s
                pos = blk.first + (s - blk.first) // LANES * LANES
        slots = np.array([blk.slots[k] for k in kept], dtype=np.int64)
        basis = np.array([blk.basis[k] for k in kept], dtype=np.uint8)
        match, bit, intensity = sift_alice(blk.records, slots, basis, first_slot=blk.first)
        if len(kept) < len(blk.slots):
            # the model refuses every block in which the core drops a report
            try:
                sift_alice(blk.records, blk.slots, blk.basis, first_slot=blk.first)
            except ValueError:
                pass
            else:
                raise AssertionError("the model accepts a block the core must reject")
        last = len(blk.slots) - 1
        for j, k in enumerate(kept):
            answers.append((blk.slots[k], int(match[j]), int(bit[j]), int(intensity[j]),
                            int(k == last)))
    return answers, errors


def unpack_answer(word: int) -> tuple[int, int, int, int, int]:
    slot = word & SLOT_MAX
    word >>= SLOT_WIDTH
    return slot, word & 1, (word >> 1) & 1, (word >> 2) & 3, (word >> 4) & 1


async def run_blocks(dut, blocks: list[Block], rng: random.Random, *, p_hdr=1.0, p_rec=1.0,
                     p_rep=1.0, p_out=1.0) -> None:
    """Stream ``blocks`` through a freshly reset core and check answers and error outputs."""
    await reset(dut, ('first_slot', 'records', 'reports'), ('o',))
    cocotb.log.info("%d blocks, %d records, %d reports; p_valid hdr/rec/rep %.2f/%.2f/%.2f, "
                    "p_ready %.2f", len(blocks), sum(b.records.size for b in blocks),
                    sum(len(b.slots) for b in blocks), p_hdr, p_rec, p_rep, p_out)
    expected, errors = ref_sift(blocks)
    got: list[int] = []
    drivers = [
        cocotb.start_soon(drive(dut, "first_slot", [b.first for b in blocks], rng, p_hdr)),
        cocotb.start_soon(drive(dut, "records", [w for b in blocks for w in b.beats()], rng,
                                p_rec)),
        cocotb.start_soon(drive(dut, "reports", [w for b in blocks for w in b.reports()], rng,
                                p_rep)),
    ]
    sink = cocotb.start_soon(monitor(dut, "o", got, rng, p_out))
    for d in drivers:
        await d
    await ClockCycles(dut.clk, 8 if p_out == 1.0 else 40)  # drain; nothing more may appear
    sink.cancel()
    answers = [unpack_answer(w) for w in got]
    for k, (g, e) in enumerate(zip(answers, expected, strict=False)):
        assert g == e, f"answer {k}: got {g}, expected {e} (slot, match, bit, intensity, last)"
    assert len(answers) == len(expected), f"{len(answers)} answers, expected {len(expected)}"
    assert not dut.o__valid.value, "an unexpected answer is pending on o"
    assert int(dut.error.value) == int(bool(errors)), "sticky error flag"
    code = errors[0] if errors else SiftError.NONE
    assert int(dut.error_code.value) == code.value, \
        f"error_code {int(dut.error_code.value)}, expected {code!r}"
    assert int(dut.dropped.value) == len(errors), \
        f"dropped {int(dut.dropped.value)}, expected {len(errors)}"
    # Every header was taken: the core is waiting for the next block.
    assert dut.first_slot__ready.value, "the core did not finish the last block"


def random_records(gen: np.random.Generator, beats: int) -> np.ndarray:
    n = beats * LANES
    return alice_record(gen.integers(0, 2, n), gen.integers(0, 2, n), gen.choice([0, 1, 2], n))


def random_block(gen: np.random.Generator, beats: int, p_detect: float,
                 first: int | None = None) -> Block:
    rec = random_records(gen, beats)
    if first is None:
        first = int(gen.integers(0, (1 << SLOT_WIDTH) - rec.size))
    idx = np.flatnonzero(gen.random(rec.size) < p_detect)
    if idx.size == 0:
        idx = np.array([int(gen.integers(0, rec.size))])
    return Block(first, rec, [first + int(i) for i in idx],
                 [int(b) for b in gen.integers(0, 2, idx.size)])


def _seeded(offset: int) -> random.Random:
    seed = cocotb.RANDOM_SEED + offset
    cocotb.log.info("rng seed %d (COCOTB_RANDOM_SEED %d)", seed, cocotb.RANDOM_SEED)
    return random.Random(seed)


def edge_blocks(gen: np.random.Generator) -> list[Block]:
    """Hand-picked cases: beat boundaries, consecutive slots, range ends, long gaps."""
    L = LANES
    blocks = []
    # first and last record of every beat, unaligned first slot
    rec = random_records(gen, 6)
    first = 5
    slots = sorted({first + b * L for b in range(6)} | {first + b * L + L - 1 for b in range(6)})
    blocks.append(Block(first, rec, slots, [s % 2 for s in slots]))
    # every slot of the block reported (consecutive slots across beat boundaries)
    rec = random_records(gen, 5)
    blocks.append(Block(0, rec, list(range(rec.size)), [int(b) for b in
                                                      gen.integers(0, 2, rec.size)]))
    # single-beat block, one report in its last lane
    rec = random_records(gen, 1)
    blocks.append(Block(1000, rec, [1000 + L - 1], [1]))
    # single-beat block, one report in lane 0 (the remaining lanes are drained)
    blocks.append(Block(77, random_records(gen, 1), [77], [0]))
    # gaps of many beats; the last report far from the block's end (drained at one beat/clock)
    rec = random_records(gen, 300)
    blocks.append(Block(123, rec, [123 + 1, 123 + 60 * L + 2, 123 + 200 * L], [0, 1, 1]))
    # first and last record of a block at the top of the slot range
    rec = random_records(gen, 4)
    first = (1 << SLOT_WIDTH) - rec.size
    blocks.append(Block(first, rec, [first, first + rec.size - 1], [1, 0]))
    # every single-lane position within a beat, one block each
    for lane in range(L):
        blocks.append(Block(40 + lane, random_records(gen, 3), [40 + lane + L + lane], [lane % 2]))
    return blocks


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_edge_cases(dut):
    """Reports at the first/last record of a beat, consecutive slots, gaps, range ends."""
    start_clock(dut)
    rng = _seeded(1)
    gen = np.random.default_rng(rng.getrandbits(32))
    blocks = edge_blocks(gen)
    await run_blocks(dut, blocks, rng)
    await run_blocks(dut, blocks, rng, p_hdr=0.3, p_rec=0.7, p_rep=0.5, p_out=0.5)
    for blk in blocks:  # each block alone too, from reset
        await run_blocks(dut, [blk], rng, p_rec=0.8, p_rep=0.8, p_out=0.7)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def test_random_blocks_with_stalls(dut):
    """Seeded random blocks, sparse to dense reports; random stalls on every stream."""
    start_clock(dut)
    rng = _seeded(2)
    gen = np.random.default_rng(rng.getrandbits(32))
    for p_hdr, p_rec, p_rep, p_out in ((1.0, 1.0, 1.0, 1.0), (0.5, 0.9, 0.6, 0.7),
                                       (0.9, 0.4, 0.9, 0.9), (0.8, 0.9, 0.9, 0.3)):
        blocks = [random_block(gen, int(gen.integers(1, 80)), p)
                  for p in (0.005, 0.05, 0.3, 0.9, 1.0, 0.02)]
        await run_blocks(dut, blocks, rng, p_hdr=p_hdr, p_rec=p_rec, p_rep=p_rep, p_out=p_out)
    blocks = [random_block(gen, 1024 // LANES, 0.1) for _ in range(3)]
    await run_blocks(dut, blocks, rng, p_hdr=0.7, p_rec=0.8, p_rep=0.8, p_out=0.8)


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_protocol_errors(dut):
    """Non-increasing, behind and beyond reports are dropped; error is sticky, first code kept."""
    start_clock(dut)
    rng = _seeded(3)
    gen = np.random.default_rng(rng.getrandbits(32))
    L = LANES
    n = 8 * L

    def blk(first, slots):
        return Block(first, random_records(gen, 8), slots, [s & 1 for s in slots])

    cases = [
        # (blocks, first error) — valid blocks around the faulty one check the recovery
        ([blk(100, [101, 103]), blk(200, [200, 203, 203, 205]), blk(0, [1, 2])],
         SiftError.NOT_INCREASING),
        ([blk(300, [303, 301, 304])], SiftError.NOT_INCREASING),
        ([blk(300, [299, 300, 301])], SiftError.BEHIND),
        ([blk(50, [50 + n - 1, 50 + n, 50 + n + 7]), blk(90, [95])], SiftError.BEYOND),
        ([blk(50, [51, 50 + n + 3]), blk(10, [10, 11])], SiftError.BEYOND),  # last is dropped
        ([blk(7, [7 + n])], SiftError.BEYOND),                               # the only report
        ([blk(60, [61, 60 + n + 100, 62])], SiftError.BEYOND),               # then BEHIND
        ([blk(400, [400 + n - 1, 400 + n - 1])], SiftError.NOT_INCREASING),
    ]
    for blocks, first_error in cases:
        _, errors = ref_sift(blocks)
        assert errors and errors[0] == first_error, f"bad case {errors}"
        await run_blocks(dut, blocks, rng)
        await run_blocks(dut, blocks, rng, p_hdr=0.6, p_rec=0.6, p_rep=0.6, p_out=0.6)
    # all the faulty blocks in one run, among random valid ones: only the first code is kept
    blocks = [b for blocks, _ in cases for b in blocks + [random_block(gen, 20, 0.2)]]
    await run_blocks(dut, blocks, rng, p_hdr=0.8, p_rec=0.7, p_rep=0.7, p_out=0.7)


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_slots_per_clock(dut):
    """With every stream valid and ready, a block takes 1 + B + R' + E clocks (see the core).

    R' counts the reports that share their beat with an earlier report; E (dropped reports)
    is 0 here.
    """
    start_clock(dut)
    await RisingEdge(dut.clk)
    rng = _seeded(4)
    gen = np.random.default_rng(rng.getrandbits(32))
    for beats, p_detect in ((2048 // LANES, 0.01), (1024 // LANES, 0.3)):
        blk = random_block(gen, beats, p_detect, first=1 << 20)
        await reset(dut, ('first_slot', 'records', 'reports'), ('o',))
        beat_words, report_words = blk.beats(), blk.reports()
        dut.first_slot__valid.value = 1
        dut.first_slot__payload.value = blk.first
        dut.records__valid.value = 1
        dut.reports__valid.value = 1
        dut.o__ready.value = 1
        n_beat = n_rep = n_out = cycles = 0
        while n_out < len(report_words) or n_beat < len(beat_words):
            dut.records__payload.value = beat_words[min(n_beat, len(beat_words) - 1)]
            dut.reports__payload.value = report_words[min(n_rep, len(report_words) - 1)]
            await ReadOnly()
            n_beat += int(dut.records__ready.value)
            n_rep += int(dut.reports__ready.value)
            n_out += int(dut.o__valid.value)
            hdr_taken = dut.first_slot__ready.value
            await RisingEdge(dut.clk)
            cycles += 1
            if hdr_taken:
                dut.first_slot__valid.value = 0
            if n_beat == len(beat_words):
                dut.records__valid.value = 0
            if n_rep == len(report_words):
                dut.reports__valid.value = 0
        beat = (np.array(blk.slots) - blk.first) // LANES
        r_prime = int(np.count_nonzero(beat[1:] == beat[:-1]))  # reports sharing a beat
        # the last answer leaves one clock after its report; the loop counts that clock only
        # when the drain of the remaining beats does not cover it
        expected = 1 + beats + r_prime
        cocotb.log.info("AliceSifter lanes=%d: %d slots, %d reports (R'=%d) in %d clocks "
                        "(%.3f slots/clock)", LANES, blk.records.size, len(blk.slots), r_prime,
                        cycles, blk.records.size / cycles)
        assert expected <= cycles <= expected + 1, f"{cycles} clocks, expected {expected}"
