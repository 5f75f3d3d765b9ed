"""The host's end of a role top's byte streams inside a cocotb testbench.

:class:`Host` frames requests onto the top's ``i`` stream a byte per clock and decodes the
answers from ``o`` with :class:`mozi.firmware.protocol.Deframer` — the protocol's bytes,
without the drivers' retries, so a testbench sees exactly what the gateware sends.
"""

from __future__ import annotations

import struct

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import Opcode


class Host:
    """The host end of the byte streams, with a clock count from reset."""

    def __init__(self, dut):
        self.dut = dut
        self.got = bytearray()
        self.seq = 0
        cocotb.start_soon(self._listen())

    async def _listen(self) -> None:
        dut = self.dut
        dut.o__ready.value = 1
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.o__valid.value:
                self.got.append(int(dut.o__payload.value))

    async def ask(self, op: Opcode, payload: bytes = b"") -> proto.Frame:
        dut = self.dut
        self.got.clear()
        frame = proto.encode_frame(op, payload, self.seq)
        self.seq = self.seq % 255 + 1
        for byte in frame:
            dut.i__valid.value = 1
            dut.i__payload.value = byte
            while True:
                await ReadOnly()
                taken = bool(dut.i__ready.value)
                await RisingEdge(dut.clk)
                if taken:
                    break
        dut.i__valid.value = 0
        for _ in range(200_000):
            frames = [f for f in proto.Deframer().feed(bytes(self.got))
                      if isinstance(f, proto.Frame)]
            if frames:
                return frames[0]
            await RisingEdge(dut.clk)
        raise AssertionError(f"no answer to {op.name}")

    async def write(self, name: str, value: int) -> None:
        reg = proto.register(name)
        answer = await self.ask(Opcode.WRITE_REG, struct.pack(">H", reg.address) +
                                reg.encode(value))
        assert answer.op is Opcode.ACK, (name, answer)
