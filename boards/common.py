"""Pieces every board top shares: the link's UART pins, LEDs, the transmitter's pins, and
``sync`` from a PLL output held in reset until the PLL locks."""

from __future__ import annotations

import enum

from amaranth import ClockDomain, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from mozi.firmware.protocol import LINK_BAUD

__all__ = ["BAUD", "ClockReference", "leds", "sync_from_pll", "transmitter_pins", "uart"]

#: The link's rate after configuration (``mozi.firmware.protocol.LINK_BAUD``).
BAUD = LINK_BAUD


class ClockReference(enum.Enum):
    """Where a receiver's PLL takes its input."""
    OSCILLATOR = "oscillator"     # the board's own
    EXTERNAL = "external"         # a 10 MHz station reference on a header pin


def sync_from_pll(m: Module, clk: Signal, lock: Signal) -> None:
    """``sync`` on ``clk``, in reset until ``lock`` (released in step with the clock)."""
    m.domains.sync = sync = ClockDomain("sync")
    m.d.comb += sync.clk.eq(clk)
    m.submodules.reset = ResetSynchronizer(~lock, domain="sync")


def uart(m: Module, platform, top) -> None:
    """The FTDI's UART 0 to the role top's ``rx``/``tx`` (the UART synchronises ``rx``)."""
    pins = platform.request("uart", 0, dir="-")
    m.submodules.uart_rx = rx = io.Buffer("i", pins.rx)
    m.submodules.uart_tx = tx = io.Buffer("o", pins.tx)
    m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]


def leds(m: Module, platform, lit: dict[tuple[str, int], Signal]) -> None:
    """Each LED resource ``(name, number)`` shows its signal."""
    for (name, number), value in lit.items():
        led = platform.request(name, number, dir="-")
        m.submodules[f"{name}{number}"] = buf = io.Buffer("o", led)
        m.d.comb += buf.o.eq(value)


def transmitter_pins(m: Module, platform, tx, qrng) -> None:
    """The laser triggers and the intensity select through output registers (the pulses
    leave the FPGA aligned to the clock), and the QRNG's pins into ``qrng``
    (:class:`mozi.boards.qrng.SerialRandomInput`, which synchronises them)."""
    lasers = platform.request("laser", 0, dir="-")
    intensity = platform.request("intensity", 0, dir="-")
    m.submodules.lasers = lasers_o = io.FFBuffer("o", lasers)
    m.submodules.intensity = intensity_o = io.FFBuffer("o", intensity)
    m.d.comb += [lasers_o.o.eq(tx.lasers), intensity_o.o.eq(tx.intensity)]
    m.submodules.qrng_pins = qrng_i = io.Buffer("i", platform.request("qrng", 0, dir="-"))
    m.d.comb += [qrng.bit_clk.eq(qrng_i.i[0]), qrng.data.eq(qrng_i.i[1])]
