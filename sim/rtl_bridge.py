"""Co-simulation bridge: a role top under Verilator, served on a socket (a cocotb test module).

Run through :func:`mozi.sim.rtl_server.serve` (never by pytest directly). The simulation
connects to the Unix socket named by ``MOZI_RTL_SOCKET`` and then moves bytes both ways:
socket → the top's :class:`~mozi.firmware.sim_port.WidePort` input beats, output beats →
socket. Python wakes only on a beat handshake or an edge of ``out_valid`` / ``idle`` (the
clock runs in the simulator, not in Python), and when the top is idle with no input pending
it blocks on the socket, so the simulation does not advance while the host thinks. The socket
closing ends the simulation.

``MOZI_RTL_STATS`` names a file that receives, at exit, JSON with the clock cycles simulated
and the bytes moved.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

#: Clock period of the simulation (ns); only its count matters.
PERIOD_NS = 10


@cocotb.test()
async def serve(dut):
    """Serve the role top on ``MOZI_RTL_SOCKET`` until the host closes it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["MOZI_RTL_SOCKET"])
    width = len(dut.in_data) // 8
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    dut.in_valid.value = 0
    dut.out_ready.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    pending = bytearray()
    out = bytearray()
    moved_in = moved_out = 0
    start = time.monotonic()
    in_valid = False
    chunk = 0
    wakes = 0
    while True:
        wakes += 1
        await ReadOnly()
        in_ready = bool(dut.in_ready.value)
        out_valid = bool(dut.out_valid.value)
        took_in = in_valid and in_ready
        if out and dut.out_quiet.value:                 # a response is complete: forward it
            sock.sendall(out)
            moved_out += len(out)
            out.clear()
        if not out_valid and not took_in:               # nothing moves at the next edge
            if in_valid:
                await First(RisingEdge(dut.in_ready), RisingEdge(dut.out_valid))
                continue
            if not dut.idle.value:                      # the gateware works
                await First(RisingEdge(dut.out_valid), RisingEdge(dut.idle))
                continue
            data = sock.recv(1 << 20)                   # idle: wait for the host
            if not data:
                break
            pending += data
        if out_valid:                                   # out_ready is always 1
            out += int(dut.out_data.value).to_bytes(width, "little")[:int(dut.out_count.value)]
        await RisingEdge(dut.clk)
        if took_in:
            del pending[:chunk]
            moved_in += chunk
            in_valid = False
        if not in_valid:
            if not pending:
                pending += _receive_ready(sock)
            if pending:
                chunk = min(width, len(pending))
                dut.in_data.value = int.from_bytes(pending[:chunk].ljust(width, b"\0"),
                                                   "little")
                dut.in_count.value = chunk
                in_valid = True
            dut.in_valid.value = int(in_valid)
    sock.close()
    stats = os.environ.get("MOZI_RTL_STATS")
    if stats:
        with open(stats, "w") as f:
            json.dump({"cycles": int(get_sim_time("ns") // PERIOD_NS), "bytes_in": moved_in,
                       "bytes_out": moved_out, "wall_s": time.monotonic() - start,
                       "wakes": wakes}, f)


def _receive_ready(sock: socket.socket) -> bytes:
    """The bytes the host has sent already (without waiting)."""
    ready, _, _ = select.select([sock], [], [], 0)
    return sock.recv(1 << 20) if ready else b""
