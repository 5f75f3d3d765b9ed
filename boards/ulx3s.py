"""The receiver and the transmitter on the ULX3S (ECP5-85F): PLL, DDR inputs, UART on the FTDI.

Pin map (the GPIO header J1, 3.3 V LVCMOS; ``GPn`` is the header's label and the FPGA ball
follows it):

=========  ======  ==========================  ==============================
header     ball    receiver                    transmitter
=========  ======  ==========================  ==============================
GP0        B11     detector H                  laser trigger H
GP1        A10     detector V                  laser trigger V
GP2        A9      detector D                  laser trigger D
GP3        B9      detector A                  laser trigger A
GP4        A7      clock reference (optional)  intensity select bit 0
GP5        C8      —                           intensity select bit 1
GP6        C6      —                           QRNG bit clock (in)
GP7        A6      —                           QRNG data (in)
=========  ======  ==========================  ==============================

The link is the FTDI (``uart`` 0: balls M1 rx, L4 tx) at 3 Mbaud after configuration, the
host's default rate. LED 0 shows that the device is busy (not ``idle``), LED 1 that the PLL
has locked, and the transmitter's LED 2 that a QRNG word was dropped since reset. The
detector samples follow Amaranth's ``DDRBuffer`` contract (phase 0 the rising edge's), as on the
iCEBreaker; no pin-level simulation checks it here (Yosys has no model of ``IDDRX1F``).

Clocks, from the 25 MHz oscillator through one ``EHXPLLL``:

* receiver: ``CLKOP`` 150 MHz samples the detectors (``IDDRX1F``, both edges: 3.33 ns ticks)
  and runs the TimeTagger; ``CLKOS`` 75 MHz runs the rest (UART divisor 25). With the
  optional clock reference (``ClockReference.EXTERNAL``) the PLL takes a 10 MHz reference on
  GP4 instead of the oscillator, so the tags count the station's reference time.
* transmitter: ``CLKOS`` 96 MHz runs the whole top (UART divisor 32); ``CLKOP``, 80 MHz, only
  closes the PLL's feedback loop. 3 Mbaud needs a clock that is a multiple of 3 MHz; the
  nearest above 100 MHz that a 25 MHz input reaches, 102 MHz, misses timing (the top reaches
  99.0 MHz with its pins), so the transmitter runs at the one below.
"""

from __future__ import annotations

import enum

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.build import Attrs, Clock, Pins, Resource
from amaranth.lib import io, wiring
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from mozi.boards.common import BAUD, leds, sync_from_pll, transmitter_pins, uart
from mozi.boards.qrng import SerialRandomInput
from mozi.firmware.receiver import Receiver
from mozi.firmware.transmitter import Transmitter

__all__ = ["ClockReference", "EcpPll", "ULX3SReceiver", "ULX3STransmitter", "ulx3s"]

_LVCMOS = Attrs(IO_TYPE="LVCMOS33")
RESOURCES = [
    Resource("detector", 0, Pins("0+ 1+ 2+ 3+", dir="i", conn=("gpio", 0)), _LVCMOS),
    Resource("clock_reference", 0, Pins("4+", dir="i", conn=("gpio", 0)), Clock(10e6), _LVCMOS),
    Resource("laser", 0, Pins("0+ 1+ 2+ 3+", dir="o", conn=("gpio", 0)),
             Attrs(IO_TYPE="LVCMOS33", DRIVE="8", SLEWRATE="FAST")),
    Resource("intensity", 0, Pins("4+ 5+", dir="o", conn=("gpio", 0)),
             Attrs(IO_TYPE="LVCMOS33", DRIVE="8", SLEWRATE="FAST")),
    Resource("qrng", 0, Pins("6+ 7+", dir="i", conn=("gpio", 0)), _LVCMOS),
]


class ClockReference(enum.Enum):
    """Where the receiver's PLL takes its input."""
    OSCILLATOR = "oscillator"     # the board's 25 MHz
    EXTERNAL = "external"         # a 10 MHz station reference on GP4


def ulx3s() -> ULX3S_85F_Platform:
    """The ULX3S (85F) with the roles' pins added."""
    p = ULX3S_85F_Platform()
    p.add_resources(RESOURCES)
    return p


class EcpPll(Elaboratable):
    """An ``EHXPLLL`` with its feedback from ``CLKOP``: ``CLKOP`` = f_in · ``fb`` / ``ref``,
    VCO = ``CLKOP`` · ``op``, ``CLKOS`` = VCO / ``os``. The divisors are checked against the
    ECP5's ranges (PFD 3.125-400 MHz, VCO 400-800 MHz)."""

    def __init__(self, f_in: float, *, ref: int, fb: int, op: int, os: int):
        self.f_in = f_in
        self.f_pfd = f_in / ref
        self.f_op = self.f_pfd * fb
        self.f_vco = self.f_op * op
        self.f_os = self.f_vco / os
        if not 3.125e6 <= self.f_pfd <= 400e6 or not 400e6 <= self.f_vco <= 800e6:
            raise ValueError(f"PLL out of range: PFD {self.f_pfd / 1e6:.3f} MHz, "
                             f"VCO {self.f_vco / 1e6:.1f} MHz")
        self.divisors = {"CLKI_DIV": ref, "CLKFB_DIV": fb, "CLKOP_DIV": op, "CLKOS_DIV": os}
        self.clki = Signal()
        self.clkop = Signal()
        self.clkos = Signal()
        self.lock = Signal()

    def elaborate(self, platform):
        m = Module()
        d = self.divisors
        m.submodules.pll = Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_FEEDBK_PATH="CLKOP",
            p_CLKI_DIV=d["CLKI_DIV"], p_CLKFB_DIV=d["CLKFB_DIV"],
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=d["CLKOP_DIV"],
            p_CLKOP_CPHASE=d["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0,
            p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=d["CLKOS_DIV"],
            p_CLKOS_CPHASE=d["CLKOS_DIV"] - 1, p_CLKOS_FPHASE=0,
            i_CLKI=self.clki, i_CLKFB=self.clkop, i_RST=0, i_STDBY=0, i_PHASESEL0=0,
            i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0,
            i_ENCLKOP=0, i_ENCLKOS=0,
            o_CLKOP=self.clkop, o_CLKOS=self.clkos, o_LOCK=self.lock,
            a_FREQUENCY_PIN_CLKI=f"{self.f_in / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{self.f_op / 1e6:g}",
            a_FREQUENCY_PIN_CLKOS=f"{self.f_os / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2")
        return m


class ULX3SReceiver(Elaboratable):
    """The receiver's board top: PLL, reset, DDR detector inputs and the role top."""

    SAMPLE_HZ = 150_000_000
    SYNC_HZ = 75_000_000

    def __init__(self, reference: ClockReference = ClockReference.OSCILLATOR):
        self.reference = reference
        if reference is ClockReference.OSCILLATOR:     # 25 MHz · 6 = 150; VCO 600 / 8 = 75
            self.pll = EcpPll(25e6, ref=1, fb=6, op=4, os=8)
        else:                                          # 10 MHz · 15 = 150; VCO 600 / 8 = 75
            self.pll = EcpPll(10e6, ref=1, fb=15, op=4, os=8)
        assert (self.pll.f_op, self.pll.f_os) == (self.SAMPLE_HZ, self.SYNC_HZ)
        self.receiver = Receiver(phases=2, uart=True, uart_divisor=self.SYNC_HZ // BAUD)

    def elaborate(self, platform):
        m = Module()
        pll = m.submodules.pll = self.pll
        if self.reference is ClockReference.OSCILLATOR:
            m.submodules.clk_in = clk_in = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        else:
            port = platform.request("clock_reference", 0, dir="-")
            m.submodules.clk_in = clk_in = io.Buffer("i", port)
        m.d.comb += pll.clki.eq(clk_in.i)
        sync_from_pll(m, pll.clkos, pll.lock)     # (nextpnr derives both outputs' constraints)
        m.domains.pins = ClockDomain("pins", reset_less=True)
        m.d.comb += ClockSignal("pins").eq(pll.clkop)

        rx = m.submodules.receiver = self.receiver
        m.d.comb += rx.sample_clk.eq(pll.clkop)
        # IDDRX1F: i[0] at the rising edge, i[1] at the falling edge before the next rising
        # one (both presented at that rising edge); the tagger wants phase 0 earliest
        port = platform.request("detector", 0, dir="-")
        m.submodules.detectors = ddr = io.DDRBuffer("i", port, i_domain="pins")
        for ch in range(4):
            m.d.comb += [rx.pins[2 * ch].eq(ddr.i[0][ch]), rx.pins[2 * ch + 1].eq(ddr.i[1][ch])]
        uart(m, platform, rx)
        leds(m, platform, {("led", 0): ~rx.idle, ("led", 1): pll.lock})
        return m


class ULX3STransmitter(Elaboratable):
    """The transmitter's board top: PLL, reset, laser and intensity outputs, the QRNG input
    and the role top."""

    SYNC_HZ = 96_000_000

    def __init__(self):
        self.pll = EcpPll(25e6, ref=5, fb=16, op=6, os=5)   # 80 MHz; VCO 480 / 5 = 96
        assert self.pll.f_os == self.SYNC_HZ
        self.transmitter = Transmitter(uart=True, uart_divisor=self.SYNC_HZ // BAUD)
        self.qrng = SerialRandomInput()

    def elaborate(self, platform):
        m = Module()
        pll = m.submodules.pll = self.pll
        m.submodules.clk_in = clk_in = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        m.d.comb += pll.clki.eq(clk_in.i)
        sync_from_pll(m, pll.clkos, pll.lock)
        tx = m.submodules.transmitter = self.transmitter
        m.submodules.qrng = qrng = self.qrng
        wiring.connect(m, qrng.words, tx.qrng)
        transmitter_pins(m, platform, tx, qrng)
        uart(m, platform, tx)
        dropped = Signal()                 # lit from the first dropped word to a reset
        with m.If(qrng.dropped):
            m.d.sync += dropped.eq(1)
        leds(m, platform, {("led", 0): ~tx.idle, ("led", 1): pll.lock, ("led", 2): dropped})
        return m
