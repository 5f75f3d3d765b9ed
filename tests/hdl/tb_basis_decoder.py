"""cocotb testbench for :class:`mozi.hdl.basis_decoder.BasisDecoder` (run by test_basis_decoder).

Driver → monitor → model → in-order checker. Two drivers feed ``i`` (slot events) and
``rand`` (2-bit random words) with independent random ``valid`` gaps (so ``rand`` is starved
at times), the monitor applies random ``ready`` backpressure to ``o``, and the expected
detections come from :func:`ref_decode`, built on :func:`mozi.sim.model.decode_basis`.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from mozi.hdl.layouts import LOST_WIDTH
from mozi.sim.cocotb_runner import test_params
from mozi.sim.model import carry_lost, decode_basis

from tests.hdl.streams import drive, monitor, reset, start_clock

PARAMS = test_params()
SLOT_WIDTH = PARAMS.get("slot_width", 48)
CHANNELS = PARAMS.get("channels", 4)
LOST_MAX = (1 << LOST_WIDTH) - 1


def ref_decode(slots, masks, lost, rand) -> list[tuple[int, int, int, int, int]]:
    """Expected ``o`` stream: (slot, basis, bit, multi, lost) per emitted detection.

    :func:`decode_basis` per event (one random word each); events with an empty (low 4 bits)
    mask are dropped and their ``lost`` carried onto the next emitted event (:func:`carry_lost`).
    """
    valid, basis, bit, multi = decode_basis(np.asarray(masks) & 0xF, np.asarray(rand))
    kept_lost, _ = carry_lost(lost, valid, maximum=LOST_MAX)
    return [(int(slots[k]), int(basis[k]), int(bit[k]), int(multi[k]), int(n))
            for k, n in zip(np.flatnonzero(valid), kept_lost, strict=True)]


def pack_event(slot: int, mask: int, lost: int) -> int:
    return slot | mask << SLOT_WIDTH | lost << (SLOT_WIDTH + CHANNELS)


def unpack_detection(word: int) -> tuple[int, int, int, int, int]:
    slot = word & ((1 << SLOT_WIDTH) - 1)
    word >>= SLOT_WIDTH
    return slot, word & 1, (word >> 1) & 1, (word >> 2) & 1, (word >> 3) & LOST_MAX


async def run_case(dut, slots, masks, lost, rand, rng, *, p_in=1.0, p_rand=1.0, p_out=1.0):
    """Drive one event sequence through a freshly reset core and check it in order."""
    await reset(dut, ('i', 'rand'), ('o',))
    cocotb.log.info("%d events, p_valid(i)=%.2f p_valid(rand)=%.2f p_ready(o)=%.2f",
                    len(slots), p_in, p_rand, p_out)
    expected = ref_decode(slots, masks, lost, rand)
    got: list[int] = []
    events = [pack_event(int(s), int(mk), int(lo)) for s, mk, lo in zip(slots, masks, lost,
                                                                        strict=True)]
    d_in = cocotb.start_soon(drive(dut, "i", events, rng, p_in))
    d_rand = cocotb.start_soon(drive(dut, "rand", [int(r) for r in rand], rng, p_rand))
    sink = cocotb.start_soon(monitor(dut, "o", got, rng, p_out))
    await d_in
    await d_rand
    await ClockCycles(dut.clk, 8 if p_out == 1.0 else 40)  # drain; nothing more may appear
    sink.cancel()
    decoded = [unpack_detection(w) for w in got]
    assert len(decoded) == len(expected), f"{len(decoded)} detections, expected {len(expected)}"
    for k, (g, e) in enumerate(zip(decoded, expected, strict=True)):
        assert g == e, f"detection {k}: got {g}, expected {e} (slot, basis, bit, multi, lost)"
    n_empty = int(np.count_nonzero((np.asarray(masks) & 0xF) == 0))
    assert int(dut.dropped.value) == n_empty, f"dropped {int(dut.dropped.value)} != {n_empty}"
    assert not dut.o__valid.value, "an unexpected detection is pending on o"


def _seeded(offset: int) -> random.Random:
    seed = cocotb.RANDOM_SEED + offset
    cocotb.log.info("rng seed %d (COCOTB_RANDOM_SEED %d)", seed, cocotb.RANDOM_SEED)
    return random.Random(seed)


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_all_masks_all_words(dut):
    """All 16 masks × all 4 random words, back to back and then with stalls everywhere."""
    start_clock(dut)
    rng = _seeded(1)
    grid = [(mk, r) for mk in range(16) for r in range(4)]
    masks = np.array([mk for mk, _ in grid] * 2, np.uint8)
    rand = np.array([r for _, r in grid] * 2, np.uint8)
    slots = np.arange(masks.size, dtype=np.int64) * 7 + (1 << SLOT_WIDTH) - 300
    slots %= 1 << SLOT_WIDTH  # wraps through the top of the slot range
    lost = np.array([(k * 3) % 5 for k in range(masks.size)])
    await run_case(dut, slots, masks, lost, rand, rng)
    await run_case(dut, slots, masks, lost, rand, rng, p_in=0.6, p_rand=0.5, p_out=0.5)


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_lost_saturates_through_dropped_events(dut):
    """Empty-mask events carry their lost counts forward; the sum saturates at its maximum."""
    start_clock(dut)
    rng = _seeded(2)
    masks = np.array([0, 0, 1, 0, 0, 0, 6, 0, 15, 0, 0], np.uint8)
    lost = np.array([5, 7, 1, LOST_MAX, 3, 0, 0, LOST_MAX - 1, 1, 9, 4])
    rand = np.array([k % 4 for k in range(masks.size)], np.uint8)
    slots = np.arange(masks.size) + 100
    await run_case(dut, slots, masks, lost, rand, rng)
    await run_case(dut, slots, masks, lost, rand, rng, p_in=0.5, p_rand=0.3, p_out=0.4)


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_random_streams_with_stalls(dut):
    """Large seeded random stream; random gaps on ``i`` and ``rand``, backpressure on ``o``."""
    start_clock(dut)
    rng = _seeded(3)
    gen = np.random.default_rng(rng.getrandbits(32))
    n = 3000
    # mostly single clicks, some multi-clicks, a few empty masks
    kind = gen.random(n)
    masks = np.where(kind < 0.7, 1 << gen.integers(0, 4, n), gen.integers(0, 16, n))
    if CHANNELS > 4:  # extra channels exist but do not take part in the decoding
        masks = masks | (gen.integers(0, 2, n) << 4)
    slots = np.cumsum(gen.integers(1, 1000, n)) % (1 << SLOT_WIDTH)
    lost = np.where(gen.random(n) < 0.9, 0, gen.integers(0, LOST_MAX + 1, n))
    rand = gen.integers(0, 4, n)
    for p_in, p_rand, p_out in ((0.9, 0.7, 0.6), (0.4, 0.9, 0.95), (1.0, 0.3, 1.0)):
        await run_case(dut, slots[:1000], masks[:1000], lost[:1000], rand[:1000], rng,
                       p_in=p_in, p_rand=p_rand, p_out=p_out)
    await run_case(dut, slots, masks, lost, rand, rng, p_in=0.8, p_rand=0.8, p_out=0.8)


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_one_event_per_clock(dut):
    """With every stream valid and ready, N events take N clocks (+1 of output latency)."""
    start_clock(dut)
    await RisingEdge(dut.clk)
    await reset(dut, ('i', 'rand'), ('o',))
    n = 200
    dut.i__valid.value = 1
    dut.rand__valid.value = 1
    dut.o__ready.value = 1
    transfers, outputs, cycles = 0, 0, 0
    while outputs < n:
        dut.i__payload.value = pack_event(transfers, 1 + transfers % 15, 0)
        dut.rand__payload.value = transfers % 4
        await ReadOnly()
        if dut.i__ready.value:
            transfers += 1
        if dut.o__valid.value:
            outputs += 1
        await RisingEdge(dut.clk)
        cycles += 1
        if transfers == n:
            dut.i__valid.value = 0
            dut.rand__valid.value = 0
    cocotb.log.info("BasisDecoder: %d events in %d clocks", n, cycles)
    assert cycles == n + 1, f"{n} events took {cycles} clocks, expected {n + 1}"
