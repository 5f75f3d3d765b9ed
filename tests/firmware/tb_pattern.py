"""cocotb testbench: the transmitter top's pattern generator, random words in, pulses and
records out.

A driver offers 64-bit words on the top's ``qrng`` stream (with random gaps in one phase), a
monitor watches the laser and intensity pins, and the host — the protocol's bytes on the top's
link streams — programs the ``PG_*`` registers and reads the records back with
``PATTERN_RECORDS``. Checked against :func:`mozi.sim.model.alice_choices`,
:func:`~mozi.sim.model.laser_triggers` and :func:`~mozi.sim.model.alice_record` over the words
the generator took: every record in order, every laser pulse with its intensity, dark slots
(``PG_UNDERRUNS``), records lost to a full FIFO (``PG_RECORDS_LOST``), ``PG_SLOTS``, the
errors the model answers (malformed requests, ``PG_SLOT_CLOCKS`` 0) and ``CTRL``'s reset.

Run through ``tests/firmware/test_transmitter_top.py``; the seed is printed.
"""

from __future__ import annotations

import random
import struct

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import Opcode
from mozi.firmware.transmitter import PATTERN_DEPTH
from mozi.host.devices.model import FIRMWARE, ModelTransport
from mozi.sim.model import alice_choices, alice_record, laser_triggers
from mozi.sim.source import SourceConfig

from tests.firmware.cocotb_host import Host
from tests.hdl.streams import start_clock

DARK = int(alice_record(0, 0, 2))
THRESHOLDS = SourceConfig().thresholds()


class Source:
    """The random source on ``qrng``: the words the generator took, in order."""

    def __init__(self, dut, rng: random.Random):
        self.dut, self.rng = dut, rng
        self.p_valid = 1.0
        self.taken: list[int] = []
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        dut = self.dut
        word = self.rng.getrandbits(64)
        while True:
            valid = self.rng.random() < self.p_valid
            dut.qrng__valid.value, dut.qrng__payload.value = int(valid), word
            await ReadOnly()
            if valid and dut.qrng__ready.value:
                self.taken.append(word)
                word = self.rng.getrandbits(64)
            await RisingEdge(dut.clk)


class Pins:
    """The laser pulses, each with the intensity select of its clock."""

    def __init__(self, dut):
        self.dut = dut
        self.pulses: list[tuple[int, int]] = []
        self.clocks: list[int] = []        # the clock of each pulse
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        clock = 0
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            clock += 1
            lasers = int(self.dut.lasers.value)
            if lasers:
                assert lasers & (lasers - 1) == 0, f"two lasers at once: {lasers:04b}"
                self.pulses.append((lasers, int(self.dut.intensity.value)))
                self.clocks.append(clock)


def expected(words) -> tuple[list[int], list[tuple[int, int]]]:
    """Records and laser pulses of slots that took ``words``."""
    basis, bit, intensity = alice_choices(np.array(words, np.uint64), *THRESHOLDS)
    lasers = laser_triggers(basis, bit, intensity)
    pulses = [(int(las), int(i)) for las, i in zip(lasers, intensity, strict=True) if las]
    return [int(r) for r in alice_record(basis, bit, intensity)], pulses


async def take(host: Host, max_count: int) -> list[int]:
    """One PATTERN_RECORDS: up to ``max_count`` records."""
    answer = await host.ask(Opcode.PATTERN_RECORDS, struct.pack(">H", max_count))
    assert answer.op is Opcode.PATTERN, answer
    (count,) = struct.unpack_from(">H", answer.payload)
    assert count <= max_count and len(answer.payload) == 2 + (count + 1) // 2
    return [int(r) for r in proto.unpack_nibbles(answer.payload[2:], count)]


async def read_all(host: Host, max_count: int = 1000) -> list[int]:
    """PATTERN_RECORDS until the FIFO is empty (the generator stopped)."""
    out: list[int] = []
    while got := await take(host, max_count):
        out += got
    return out


async def read(host: Host, name: str) -> int:
    reg = proto.register(name)
    answer = await host.ask(Opcode.READ_REG, struct.pack(">H", reg.address))
    return reg.decode(answer.payload[2:])


def model_answer(reference: ModelTransport, op: Opcode, payload: bytes) -> tuple[Opcode, bytes]:
    reference.write(proto.encode_frame(op, payload))
    frame = proto.decode_frames(reference.read())[0][0]
    # the gateware's ERROR carries the code alone
    return frame.op, frame.payload[:1] if frame.op is Opcode.ERROR else frame.payload


@cocotb.test()
async def test_pattern_generator_behind_the_link(dut):
    rng = random.Random(cocotb.RANDOM_SEED)
    cocotb.log.info("rng seed %d", cocotb.RANDOM_SEED)
    start_clock(dut)
    dut.i__valid.value = 0
    dut.qrng__valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    host, reference = Host(dut), ModelTransport(**FIRMWARE["transmitter"])
    source, pins = Source(dut, rng), Pins(dut)

    # malformed requests and a zero slot length: the model's answers
    reg = proto.register("PG_SLOT_CLOCKS")
    for op, payload in [(Opcode.PATTERN_RECORDS, b""), (Opcode.PATTERN_RECORDS, b"\x00"),
                        (Opcode.PATTERN_RECORDS, b"\x00\x00"),
                        (Opcode.PATTERN_RECORDS, b"\x00\x01\x02"),
                        (Opcode.PATTERN_RECORDS, b"\xff\xff"),
                        (Opcode.PATTERN_RECORDS, b"\x00\x05"),
                        (Opcode.WRITE_REG, struct.pack(">H", reg.address) + reg.encode(0))]:
        answer = await host.ask(op, payload)
        assert (answer.op, answer.payload) == model_answer(reference, op, payload), \
            (op, payload, answer)
    assert (await read_all(host)) == [] and source.taken == []

    # phase 1: a slot every 3 clocks, a word for each — records and pulses exactly
    for name, value in zip(("PG_T_BASIS", "PG_T_INT0", "PG_T_INT1"), THRESHOLDS,
                           strict=True):
        await host.write(name, value)
    await host.write("PG_SLOT_CLOCKS", 3)
    await host.write("PG_ENABLE", 1)
    records: list[int] = []
    while len(records) < 1500:
        records += await take(host, rng.choice([1, 7, 300, 1000]))
    await host.write("PG_ENABLE", 0)
    await ClockCycles(dut.clk, 4)
    records += await read_all(host)
    want, want_pulses = expected(source.taken)
    assert records == want, "records of phase 1"
    assert pins.pulses == want_pulses, "laser pulses of phase 1"
    gaps = set(np.diff(pins.clocks).tolist())
    assert min(gaps) == 3 and all(g % 3 == 0 for g in gaps), f"slots not 3 clocks apart: {gaps}"
    assert await read(host, "PG_UNDERRUNS") == 0 and await read(host, "PG_RECORDS_LOST") == 0
    assert await read(host, "PG_SLOTS") == len(records)
    cocotb.log.info("phase 1: %d slots, %d pulses", len(records), len(pins.pulses))

    # phase 2: the source falls behind — dark slots, counted
    source.p_valid = 0.6
    start = len(source.taken)
    await host.write("PG_SLOT_CLOCKS", 1)
    await host.write("PG_ENABLE", 1)
    got: list[int] = []
    while len(got) < 1500:
        got += await take(host, 500)
    await host.write("PG_ENABLE", 0)
    await ClockCycles(dut.clk, 4)
    got += await read_all(host)
    dark = await read(host, "PG_UNDERRUNS")
    want, _ = expected(source.taken[start:])
    assert dark > 100
    assert [r for r in got if r != DARK] == [r for r in want if r != DARK]
    assert got.count(DARK) == want.count(DARK) + dark
    assert await read(host, "PG_SLOTS") == len(records) + len(got)
    cocotb.log.info("phase 2: %d slots, %d dark", len(got), dark)

    # phase 3: nobody reads — the FIFO fills, and records are lost and counted
    source.p_valid = 1.0
    start = len(source.taken)
    slots_before = await read(host, "PG_SLOTS")
    await host.write("PG_ENABLE", 1)
    await ClockCycles(dut.clk, PATTERN_DEPTH + 700)
    await host.write("PG_ENABLE", 0)
    await ClockCycles(dut.clk, 4)
    got = await read_all(host, 2000)
    lost = await read(host, "PG_RECORDS_LOST")
    slots = await read(host, "PG_SLOTS") - slots_before
    want, _ = expected(source.taken[start:])
    assert lost > 0 and len(got) + lost == slots == len(want)
    assert got[:PATTERN_DEPTH] == want[:PATTERN_DEPTH]
    cocotb.log.info("phase 3: %d slots, %d records lost", slots, lost)

    # CTRL clears the generator: counters, FIFO and registers
    await host.write("PG_ENABLE", 1)
    await ClockCycles(dut.clk, 50)
    await host.write("CTRL", 1)
    await ClockCycles(dut.clk, 50)
    for name in ("PG_ENABLE", "PG_SLOTS", "PG_UNDERRUNS", "PG_RECORDS_LOST", "PG_T_BASIS"):
        assert await read(host, name) == 0, name
    assert await read(host, "PG_SLOT_CLOCKS") == 1
    assert await read_all(host) == []
    assert await read(host, "PG_RECORD_CAPACITY") == PATTERN_DEPTH
