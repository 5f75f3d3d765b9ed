"""cocotb testbench: a board's receiver verified from its pins.

The design is the board top as it goes into the bitstream — PLL, DDR input cells, the UART on
the FTDI's pins, the receiver — with models of the vendor cells: for the iCEBreaker Yosys's
models of ``SB_IO``/``SB_DFF`` and a pass-through PLL (``tests/boards/ice40_models.py``), for
the ULX3S models of the ECP5's PLL, edge clock, divider and ``IDDRX2F`` written from Lattice's
descriptions (``tests/boards/ecp5_models.v``). Time is compressed: the sampling clock runs at
200 MHz (every ratio in the design is kept).

Detections of the simulator (``mozi.sim.simulate_pass``, 20 ms of the Micius 2017 pass) are
rendered as pulses on the four detector pins, on the tagger's half-clock grid: each slot of
the simulation becomes ``PERIOD`` ticks, the long gaps between detections are shortened by
whole slots, and the clicks' mean arrival time is put on a slot boundary, so that the jitter
moves clicks across it and the order of the two DDR phases decides their slots. Every pin
changes half a tick before the clock edge that samples it.

The host speaks over the UART pins (8N1, after switching the divisor from the board's to 4)
and collects with ``LIVE_DETECTIONS``. The detections must equal the golden models' for the
same samples (``tests.firmware.tb_live.expected_live``). On the iCEBreaker the samples the
tagger counts in cycle ``c`` are the pins' levels at the rising edge (phase 0) and the falling
edge after it (phase 1) :data:`mozi.boards.icebreaker.PIN_LATENCY` clocks earlier; on the
ULX3S the four edges of the edge clock ending ``ULX3S_LATENCY_TICKS`` ticks earlier (in the
cell models). The seed is printed by cocotb.
"""

from __future__ import annotations

import random
import struct

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer
from mozi.boards.icebreaker import PIN_LATENCY
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import Opcode
from mozi.sim import model
from mozi.sim.cocotb_runner import test_params
from mozi.sim.link import simulate_pass
from mozi.sim.passes import micius2017

from tests.firmware.tb_live import check_live, expected_live
from tests.firmware.tb_uart import Line

#: ticks from the first sample of a tagger cycle to the start of that cycle, in the ULX3S's
#: cell models (the ECP5's gearbox latency is not modelled after measurements)
ULX3S_LATENCY_TICKS = 3
#: per board: phases, the oscillator pad (driven at the sampling clock's rate times
#: ``pad_ratio``), the UART divisor after configuration, latency in ticks
BOARDS = {
    "icebreaker": {"phases": 2, "pad": "clk12_0__io", "pad_ratio": 1, "divisor": 8,
                   "latency_ticks": 2 * PIN_LATENCY},
    "ulx3s": {"phases": 4, "pad": "clk25_0__io", "pad_ratio": 2, "divisor": 25,
              "latency_ticks": ULX3S_LATENCY_TICKS},
}
BOARD = BOARDS[test_params().get("board", "icebreaker")]
PHASES, CHANNELS = BOARD["phases"], 4
SAMPLE_PS = 5_000            # the tagger's clock, time-compressed
PERIOD = 64                  # ticks per simulated slot (its jitter spans a few ticks)
GAP_SLOTS = 6                # the longest gap between detections, in slots
PULSE_TICKS = 4              # a detector's output pulse


def render(tags_ps: np.ndarray, channels: np.ndarray, slot_ps: float, start_tick: int
           ) -> np.ndarray:
    """The pins' samples (cycle, channel, phase) for these detections, from tagger cycle 0."""
    t = tags_ps - tags_ps[0] + int(slot_ps) // 2          # the first click mid-slot
    slot = t // int(slot_ps)
    phase = (t % int(slot_ps)) / slot_ps * PERIOD         # ticks into the slot
    shift = np.floor(phase - np.median(phase)).astype(np.int64)
    steps = np.minimum(np.diff(slot, prepend=slot[0]), GAP_SLOTS)
    first = start_tick + (-start_tick) % PERIOD             # a slot boundary
    ticks = first + (np.cumsum(steps) + 1) * PERIOD + shift
    n_ticks = int(ticks.max()) + PULSE_TICKS + 8 * PHASES
    flat = np.zeros((n_ticks + (-n_ticks) % PHASES, CHANNELS), np.uint8)
    for tick, ch in zip(ticks, channels, strict=True):
        flat[tick:tick + PULSE_TICKS, ch] = 1
    return flat.reshape(-1, PHASES, CHANNELS).transpose(0, 2, 1).copy()


async def drive_pins(dut, samples: np.ndarray, edge0_ps: int) -> None:
    """Each sample's level on the pins from half a tick before the edge that takes it:
    sample (c, p) is taken at ``edge0_ps + (c * PHASES + p - latency_ticks) * T / PHASES``."""
    levels = (samples.transpose(0, 2, 1).reshape(-1, CHANNELS).astype(np.int64)
              * (1 << np.arange(CHANNELS))).sum(axis=1)
    changes = np.flatnonzero(np.diff(levels, prepend=0))
    tick = SAMPLE_PS // PHASES
    for k in changes:
        at = edge0_ps + (k - BOARD["latency_ticks"]) * tick - tick // 2
        now = cocotb.utils.get_sim_time("ps")
        assert at > now, "the pins' pattern starts too early"
        await Timer(at - now, unit="ps")
        dut.detector_0__io.value = int(levels[k])


class UartHost:
    """Requests over the board's UART pins, one frame at a time."""

    def __init__(self, dut):
        self.line = Line(dut, BOARD["divisor"], rx=dut.uart_0__rx__io, tx=dut.uart_0__tx__io,
                         clk=dut.clk)
        self.seq = 0

    async def ask(self, op: Opcode, payload: bytes = b"", timeout_clocks: int = 400_000
                  ) -> proto.Frame:
        self.seq = self.seq % 255 + 1
        return await self.line.answer(proto.encode_frame(op, payload, self.seq), timeout_clocks)

    async def write(self, name: str, value: int) -> None:
        reg = proto.register(name)
        answer = await self.ask(Opcode.WRITE_REG, struct.pack(">H", reg.address)
                                + reg.encode(value))
        assert answer.op is Opcode.ACK, (name, answer)


@cocotb.test()
async def test_simulated_detections_from_the_pins(dut):
    rng = random.Random(cocotb.RANDOM_SEED)
    seed = rng.randrange(1 << 16)
    sim = simulate_pass(micius2017(), seed=seed, t_start=150.0, t_stop=150.02)
    dut._log.info("simulator seed %d: %d detections", seed, sim.tags_ps.size)

    dut.detector_0__io.value = 0
    dut.uart_0__rx__io.value = 1
    pad = getattr(dut, BOARD["pad"])
    cocotb.start_soon(Clock(pad, SAMPLE_PS // BOARD["pad_ratio"], unit="ps").start())
    # the PLL locks, sync leaves reset, the receiver's cores and tagger leave theirs: the
    # sampling clock's edge at which the tagger's reset falls starts tagger cycle 0
    await FallingEdge(dut.receiver.sample_rst)
    edge0 = int(cocotb.utils.get_sim_time("ps"))
    edge0 -= edge0 % SAMPLE_PS

    host = UartHost(dut)
    await host.write("UART_DIVISOR", 4)
    await ClockCycles(dut.clk, 20 * BOARD["divisor"])   # (the device switches after its answer)
    host.line.divisor = 4
    one = 1 << 16
    await host.write("SA_WINDOW_END", one)
    await host.write("SA_PERIOD", PERIOD * one)
    await host.write("SA_WINDOW_END", PERIOD * one)
    words = [rng.randrange(4) for _ in range(sim.tags_ps.size + 8)]
    answer = await host.ask(Opcode.RANDOM_WORDS, struct.pack(">H", len(words))
                            + proto.pack_words2(words))
    assert answer.op is Opcode.ACK, answer
    await host.write("TT_SOURCE", 1)

    # the clicks start after the LIVE_DETECTIONS request has reached the device
    now = int(cocotb.utils.get_sim_time("ps") - edge0) // SAMPLE_PS
    start_cycle = now + 4_000
    samples = render(sim.tags_ps, sim.channels, sim.slot_period_ps, start_cycle * PHASES)
    want = expected_live(samples, PERIOD, words)
    dut._log.info("%d cycles of pin samples, %d detections expected", samples.shape[0],
                  want[0].size)
    assert want[0].size > 0.9 * sim.tags_ps.size - 10     # (multi-clicks merge; one held)
    # the boundary is crossed: both phases and both sides of it occur
    ts, _ = model.tag_edges(samples, phases=PHASES)
    where = ts % PERIOD
    assert (where == 0).any() and (where == PERIOD - 1).any() and (ts % 2 == 1).any()

    pins = cocotb.start_soon(drive_pins(dut, samples, edge0))
    clocks = (samples.shape[0] - now) // 2 + 50_000       # (sync runs at half the rate)
    answer = await host.ask(Opcode.LIVE_DETECTIONS, struct.pack(">HI", want[0].size, clocks),
                            timeout_clocks=clocks + 400_000)
    assert answer.op is Opcode.DETECTIONS, answer
    await pins
    got = proto.decode_detections(answer.payload)
    dut._log.info("%d detections over the UART", got[0].size)
    check_live(got, want)
    await ClockCycles(dut.clk, 10)
