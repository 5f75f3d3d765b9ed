"""cocotb testbench: the receiver top in live mode, detector pins in, detections over the link.

The host's frames go in on the top's byte stream (one byte per clock) and the answers are
decoded from its output. With ``TT_SOURCE`` 1 the TimeTagger feeds the slot assigner: clicks
driven on the detector pins (random times, multi-clicks, clicks on clock and phase boundaries)
come back through ``LIVE_DETECTIONS`` exactly as the composed golden models say —
``tag_edges`` → ``assign_slots`` → ``merge_slot_events`` → ``decode_basis`` with the random
words sent — except the last one, which the merge stage holds. ``TAG_EVENTS`` in live mode and
``LIVE_DETECTIONS`` outside it are ``SOURCE`` errors, as the model answers.

Run through ``tests/firmware/test_live.py``; the seed is printed by cocotb.
"""

from __future__ import annotations

import random
import struct

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import ErrorCode, Opcode
from mozi.host.devices.model import FIRMWARE, ModelTransport
from mozi.sim import model

from tests.firmware.cocotb_host import Host
from tests.hdl.streams import start_clock

PHASES = 2
CHANNELS = 4
SAMPLE_NS = 5                  # the tagger's clock period (start_clock); the link's is 10 ns


def _samples(rng: random.Random, cycles: int, start: int) -> np.ndarray:
    """Pin samples (cycle, channel, phase): single and multi clicks from ``start`` on."""
    s = np.zeros((cycles, CHANNELS, PHASES), np.uint8)
    t = start * PHASES
    while True:
        t += rng.randrange(40, 400)
        if t >= (cycles - 8) * PHASES:
            return s
        chans = rng.sample(range(CHANNELS), rng.choice([1, 1, 1, 2, 3]))
        for ch in chans:
            tick = t + rng.randrange(0, 3)
            c, p = divmod(tick, PHASES)
            s[c, ch, p:] = 1                       # high from this sample …
            s[c + 1:c + 3, ch, :] = 1              # … for a couple of clocks


async def _start(dut) -> tuple[Host, float]:
    """Clocks, a reset, the host; returns it and the time of tagger cycle 0."""
    start_clock(dut)
    dut.pins.value = 0
    dut.i__valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    # the tagger's clock (5 ns, twice the link's rate) leaves its reset through a synchroniser:
    # the clock after that edge is tagger cycle 0
    await FallingEdge(dut.sample_rst)
    return Host(dut), cocotb.utils.get_sim_time("ns")


async def _slots(host: Host, period: int) -> None:
    """Slots of ``period`` ticks, the window the whole slot (written in a valid order)."""
    one = 1 << 16
    await host.write("SA_WINDOW_END", one)
    await host.write("SA_PERIOD", period * one)
    await host.write("SA_WINDOW_END", period * one)


@cocotb.test()
async def test_live_detections_from_the_pins(dut):
    rng = random.Random()
    host, cycle0 = await _start(dut)
    reference = ModelTransport(**FIRMWARE["receiver"])
    period = 64                                     # ticks
    await _slots(host, period)
    words = [rng.randrange(4) for _ in range(400)]
    answer = await host.ask(Opcode.RANDOM_WORDS, struct.pack(">H", len(words)) +
                            proto.pack_words2(words))
    assert answer.op is Opcode.ACK
    # outside live mode LIVE_DETECTIONS is refused, as the model refuses it
    answer = await host.ask(Opcode.LIVE_DETECTIONS, struct.pack(">HI", 10, 100))
    reference.write(proto.encode_frame(Opcode.LIVE_DETECTIONS, struct.pack(">HI", 10, 100)))
    assert answer.payload == proto.decode_frames(reference.read())[0][0].payload == \
        bytes([ErrorCode.SOURCE.value])
    await host.write("TT_SOURCE", 1)
    answer = await host.ask(Opcode.TAG_EVENTS, b"\x01")
    assert answer.payload == bytes([ErrorCode.SOURCE.value])
    # clicks on the pins from a known cycle on, while LIVE_DETECTIONS collects
    now = int((cocotb.utils.get_sim_time("ns") - cycle0) // SAMPLE_NS)
    start = now + 50
    cycles = start + 30_000
    samples = _samples(rng, cycles, start)
    weights = 1 << np.arange(CHANNELS * PHASES, dtype=np.uint64)
    words_per_clock = (samples.reshape(cycles, -1).astype(np.uint64) * weights).sum(axis=1)

    async def drive():
        while int((cocotb.utils.get_sim_time("ns") - cycle0) // SAMPLE_NS) < start:
            await RisingEdge(dut.sample_clk)
        for c in range(start, cycles):
            dut.pins.value = int(words_per_clock[c])
            await RisingEdge(dut.sample_clk)
        dut.pins.value = 0
    cocotb.start_soon(drive())
    answer = await host.ask(Opcode.LIVE_DETECTIONS, struct.pack(">HI", 400, cycles - now + 500))
    assert answer.op is Opcode.DETECTIONS, answer
    got = proto.decode_detections(answer.payload)
    want = expected_live(samples, period, words)
    dut._log.info("%d live detections, model %d (+1 held)", got[0].size, want[0].size)
    assert want[0].size > 50
    check_live(got, want)


def expected_live(samples: np.ndarray, period: int, words: list[int]) -> tuple[np.ndarray, ...]:
    """The composed golden models for pin samples (cycle, channel, phase) from tagger cycle
    0: slots of ``period`` ticks from tick 0, the window the whole slot, ``words`` the random
    words sent. Returns (slot, basis, bit, multi) of every detection but the last, which the
    merge stage holds until the next one."""
    one = 1 << 16
    ts, masks = model.tag_edges(samples, phases=samples.shape[2], width=48)
    slots, ok = model.assign_slots(ts, period=period * one, offset=0, window_start=0,
                                   window_end=period * one, frac_bits=16)
    m_slots, m_masks = model.merge_slot_events(slots, masks, ok)
    _valid, basis, bit, multi = model.decode_basis(m_masks, np.array(words[:m_slots.size]))
    n = m_slots.size - 1
    return m_slots[:n], basis[:n], bit[:n], multi[:n]


def check_live(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    """A LIVE_DETECTIONS answer (decoded) equals the model's detections, none lost."""
    for name, g, w in zip(("slot", "basis", "bit", "multi"), got[:4], want, strict=True):
        np.testing.assert_array_equal(g, w, err_msg=name)
    assert not got[4].any()                          # nothing lost


@cocotb.test()
async def test_registers_written_while_detections_wait(dut):
    """Live mode with dense clicks and nobody collecting: the pipeline backs up (the slot
    assigner waits with a detection, the tagger's FIFO fills and drops). Writes of the slot
    assigner's registers, which wait while it computes, must still be answered — it never
    computes while it waits on its output — and collecting afterwards still works."""
    rng = random.Random(cocotb.RANDOM_SEED + 7)
    host, _ = await _start(dut)
    await _slots(host, 64)
    words = [rng.randrange(4) for _ in range(2000)]
    answer = await host.ask(Opcode.RANDOM_WORDS, struct.pack(">H", len(words)) +
                            proto.pack_words2(words))
    assert answer.op is Opcode.ACK
    await host.write("TT_SOURCE", 1)
    samples = _samples(rng, 40_000, 0)
    weights = 1 << np.arange(CHANNELS * PHASES, dtype=np.uint64)
    pins = (samples.reshape(samples.shape[0], -1).astype(np.uint64) * weights).sum(axis=1)

    async def drive():
        for w in pins:
            dut.pins.value = int(w)
            await RisingEdge(dut.sample_clk)
        dut.pins.value = 0
    clicks = cocotb.start_soon(drive())
    await ClockCycles(dut.clk, 8_000)               # the FIFO (256 events) overflows by now
    for period in (96, 80, 64):                     # while the clicks go on
        await _slots(host, period)
    answer = await host.ask(Opcode.LIVE_DETECTIONS, struct.pack(">HI", 100, 50_000))
    assert answer.op is Opcode.DETECTIONS, answer
    got = proto.decode_detections(answer.payload)
    assert got[0].size == 100
    await clicks
    answer = await host.ask(Opcode.READ_REG, struct.pack(">H",
                                                         proto.register("RX_TAGGER_LOST").address))
    lost = int.from_bytes(answer.payload[2:], "big")
    dut._log.info("tagger drops while nobody collected: %d", lost)
    assert lost > 0, "the pipeline never backed up"
