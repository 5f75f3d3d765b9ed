"""cocotb testbench: the receiver top built for a board, spoken to over its UART pins.

The host's frames are sent bit by bit on ``rx`` (8N1, LSB first) and the answers decoded from
``tx``; every answer must equal the ``model`` backend's (a UART build: ``UART_DIVISOR`` and
``LINK_OVERFLOWS`` exist). The divisor is changed at run time (the host follows at the new
rate), a byte with a broken stop bit is lost and counted, and the link recovers.

Run through ``tests/firmware/test_uart.py``; the seed is printed by cocotb.
"""

from __future__ import annotations

import random
import struct

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import Opcode
from mozi.host.devices.model import ModelTransport

from tests.hdl.streams import start_clock


class Line:
    """The host end of the UART, at ``divisor`` clocks per bit: the top's ``rx``, ``tx`` and
    ``clk``, or the given handles (a board top's pins and its internal clock)."""

    def __init__(self, dut, divisor: int, *, rx=None, tx=None, clk=None):
        self.dut = dut
        self.rx = rx if rx is not None else dut.rx
        self.tx = tx if tx is not None else dut.tx
        self.clk = clk if clk is not None else dut.clk
        self.divisor = divisor
        self.received = bytearray()
        cocotb.start_soon(self._listen())

    async def send(self, data: bytes, *, bad_stop: bool = False) -> None:
        for byte in data:
            bits = [0] + [(byte >> k) & 1 for k in range(8)] + [0 if bad_stop else 1]
            for bit in bits:
                self.rx.value = bit
                await ClockCycles(self.clk, self.divisor)
        self.rx.value = 1
        await ClockCycles(self.clk, self.divisor)

    async def _listen(self) -> None:
        while True:
            await FallingEdge(self.tx)
            await ClockCycles(self.clk, self.divisor + self.divisor // 2)
            byte = 0
            for k in range(8):
                byte |= int(self.tx.value) << k
                await ClockCycles(self.clk, self.divisor)
            assert int(self.tx.value) == 1, f"no stop bit after {byte:02x}"
            self.received.append(byte)

    async def answer(self, frame: bytes, timeout_clocks: int = 2_000_000) -> proto.Frame:
        """Send a frame and return the first whole frame that comes back."""
        self.received.clear()
        await self.send(frame)
        for _ in range(timeout_clocks // 64):
            frames = [f for f in proto.Deframer().feed(bytes(self.received))
                      if isinstance(f, proto.Frame)]
            if frames:
                return frames[0]
            await ClockCycles(self.clk, 64)
        raise AssertionError(f"no answer to {frame.hex()}")

    async def ask(self, frame: bytes, max_bytes: int = 64) -> list[proto.Frame]:
        """Send a frame and wait until the device has been quiet for a while."""
        self.received.clear()
        await self.send(frame)
        quiet = 0
        last = 0
        while quiet < 40:
            await ClockCycles(self.clk, self.divisor * 10)
            quiet = quiet + 1 if len(self.received) == last else 0
            last = len(self.received)
        return [f for f in proto.Deframer().feed(bytes(self.received))
                if isinstance(f, proto.Frame)]


def _read(name: str, seq: int) -> bytes:
    return proto.encode_frame(Opcode.READ_REG, struct.pack(">H", proto.register(name).address),
                              seq)


@cocotb.test()
async def test_uart_link_against_the_model(dut):
    rng = random.Random()
    start_clock(dut)
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    model = ModelTransport(role=1, uart=True)
    line = Line(dut, 16)                      # the reset value of UART_DIVISOR
    divisor = proto.register("UART_DIVISOR")
    new_divisor = rng.choice([4, 5, 7, 9])
    dut._log.info("new divisor %d", new_divisor)
    script = [
        (_read("ID", 0), None),
        (proto.encode_frame(Opcode.PING, bytes(rng.randrange(256) for _ in range(20)), 1),
         None),
        (_read("UART_DIVISOR", 2), None),
        (proto.encode_frame(Opcode.WRITE_REG, struct.pack(">H", divisor.address)
                            + divisor.encode(3), 3), None),                   # below 4
        (proto.encode_frame(Opcode.WRITE_REG, struct.pack(">H", divisor.address)
                            + divisor.encode(new_divisor), 4), new_divisor),  # then switch
        (_read("UART_DIVISOR", 5), None),
        (proto.encode_frame(Opcode.WRITE_REG, struct.pack(">HB", 3, 1), 6), None),  # CTRL
        (_read("UART_DIVISOR", 7), None),
        (_read("LINK_OVERFLOWS", 8), None),
    ]
    for frame, switch in script:
        got = await line.ask(frame)
        model.write(frame)
        want = [f for f in proto.Deframer().feed(model.read()) if isinstance(f, proto.Frame)]
        assert [(f.opcode, f.seq, f.payload) for f in got] == \
            [(f.opcode, f.seq, f.payload) for f in want], f"request {frame.hex()}"
        if switch:
            line.divisor = switch
    # a byte with a broken stop bit is lost and counted; the frame it was in is dropped by
    # its CRC (answered BAD_FRAME), and the next frame is served
    frame = proto.encode_frame(Opcode.PING, b"lost", 9)
    line.received.clear()
    await line.send(frame[:7])
    await line.send(frame[7:8], bad_stop=True)              # a payload byte
    await line.send(frame[8:])
    await line.send(frame)                    # the deframer still waits for one byte …
    got = await line.ask(_read("LINK_OVERFLOWS", 9))
    assert got[-1].payload[2:] == (1).to_bytes(4, "big"), got
