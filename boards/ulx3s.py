"""The receiver and the transmitter on the ULX3S (ECP5-85F): PLL, DDR inputs, UART on the FTDI.

Pin map (the GPIO headers, 3.3 V LVCMOS; ``GPn`` is the header's label, then the FPGA ball):

=========  ======  ==========================  ==============================
header     ball    receiver                    transmitter
=========  ======  ==========================  ==============================
GP0        B11     —                           laser trigger H
GP1        A10     —                           laser trigger V
GP2        A9      —                           laser trigger D
GP3        B9      —                           laser trigger A
GP4        A7      clock reference (optional)  intensity select bit 0
GP5        C8      —                           intensity select bit 1
GP6        C6      —                           QRNG bit clock (in)
GP7        A6      —                           QRNG data (in)
GP14       U18     detector H                  —
GP15       N17     detector V                  —
GP16       N16     detector D                  —
GP17       L16     detector A                  —
=========  ======  ==========================  ==============================

The detectors are on GP14-GP17 because the ECP5 has its 4:1 input gearing (``IDDRX2F``) only
in the I/O on its left and right edges, and GP0-GP3 are on the top edge (nextpnr refuses them:
"only supported for left and right IO").

The link is the FTDI (``uart`` 0: balls M1 rx, L4 tx) at 3 Mbaud after configuration, the
host's default rate. LED 0 shows that the device is busy (not ``idle``), LED 1 that the PLL
has locked, and the transmitter's LED 2 that a QRNG word was dropped since reset. The
tagger takes ``IDDRX2F``'s ``Q0`` as the earliest of its four samples (``ODDRX2F`` sends
``D0`` first, and ECP5 DDR PHYs pair ``Q0…Q3`` with ``D0…D3``). ``tests/boards/tb_pins.py``
runs this top from its pins with models of the ECP5 cells written from that description (Yosys
has none of the I/O gearing), so the order itself is the models' assumption.

Clocks, from the 25 MHz oscillator through one ``EHXPLLL``:

* receiver: ``CLKOP`` 300 MHz is the edge clock (``ECLKSYNCB``) of the detectors' ``IDDRX2F``
  gearboxes, which sample on both of its edges: four samples per 150 MHz clock (``CLKDIVF``,
  the TimeTagger's clock), 1.67 ns ticks. ``CLKOS`` 75 MHz runs the rest (UART divisor 25). With the
  optional clock reference (``ClockReference.EXTERNAL``) the PLL takes a 10 MHz reference on
  GP4 instead of the oscillator, so the tags count the station's reference time.
* transmitter: ``CLKOS`` 96 MHz runs the whole top (UART divisor 32); ``CLKOP``, 80 MHz, only
  closes the PLL's feedback loop. 3 Mbaud needs a clock that is a multiple of 3 MHz; the
  nearest above 100 MHz that a 25 MHz input reaches, 102 MHz, misses timing (the top reaches
  99.0 MHz with its pins), so the transmitter runs at the one below.
"""

from __future__ import annotations

from amaranth import Elaboratable, Instance, Module, Signal
from amaranth.build import Attrs, Clock, Pins, Resource
from amaranth.lib import io, wiring
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from mozi.boards.common import BAUD, ClockReference, leds, sync_from_pll, transmitter_pins, uart
from mozi.boards.qrng import SerialRandomInput
from mozi.firmware.receiver import Receiver
from mozi.firmware.transmitter import Transmitter

__all__ = ["EcpPll", "ULX3SReceiver", "ULX3STransmitter", "ulx3s"]

_LVCMOS = Attrs(IO_TYPE="LVCMOS33")
RESOURCES = [
    Resource("detector", 0, Pins("14+ 15+ 16+ 17+", dir="i", conn=("gpio", 0)), _LVCMOS),
    Resource("clock_reference", 0, Pins("4+", dir="i", conn=("gpio", 0)), Clock(10e6), _LVCMOS),
    Resource("laser", 0, Pins("0+ 1+ 2+ 3+", dir="o", conn=("gpio", 0)),
             Attrs(IO_TYPE="LVCMOS33", DRIVE="8", SLEWRATE="FAST")),
    Resource("intensity", 0, Pins("4+ 5+", dir="o", conn=("gpio", 0)),
             Attrs(IO_TYPE="LVCMOS33", DRIVE="8", SLEWRATE="FAST")),
    Resource("qrng", 0, Pins("6+ 7+", dir="i", conn=("gpio", 0)), _LVCMOS),
]


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


class DdrX2Input(Elaboratable):
    """ECP5 4:1 input gearing for each pin of ``port``: ``IDDRX2F`` samples the pin on both
    edges of ``eclk`` (from ``ECLKSYNCB``) and presents four samples per ``sclk`` = ``eclk`` / 2
    (``CLKDIVF``). ``i[k]`` holds each pin's sample ``k`` (0 the earliest)."""

    PHASES = 4

    def __init__(self, port, eclk_in: Signal):
        self.port = port
        self.eclk_in = eclk_in
        self.sclk = Signal()
        self.i = [Signal(len(port), name=f"i{k}") for k in range(self.PHASES)]

    def elaborate(self, platform):
        m = Module()
        eclk = Signal()
        m.submodules.eclksync = Instance("ECLKSYNCB", i_ECLKI=self.eclk_in, i_STOP=0,
                                         o_ECLKO=eclk)
        m.submodules.clkdiv = Instance("CLKDIVF", p_DIV="2.0", i_CLKI=eclk, i_RST=0,
                                       i_ALIGNWD=0, o_CDIVX=self.sclk)
        m.submodules.buf = buf = io.Buffer("i", self.port)
        for bit in range(len(self.port)):
            m.submodules[f"iddr{bit}"] = Instance(
                "IDDRX2F", i_D=buf.i[bit], i_SCLK=self.sclk, i_ECLK=eclk, i_RST=0,
                **{f"o_Q{k}": self.i[k][bit] for k in range(self.PHASES)})
        return m


class ULX3SReceiver(Elaboratable):
    """The receiver's board top: PLL, reset, 4:1 detector inputs and the role top."""

    EDGE_HZ = 300_000_000
    SAMPLE_HZ = EDGE_HZ // 2
    SYNC_HZ = 75_000_000

    def __init__(self, reference: ClockReference = ClockReference.OSCILLATOR):
        self.reference = reference
        if reference is ClockReference.OSCILLATOR:     # 25 MHz · 12 = 300; VCO 600 / 8 = 75
            self.pll = EcpPll(25e6, ref=1, fb=12, op=2, os=8)
        else:                                          # 10 MHz · 30 = 300; VCO 600 / 8 = 75
            self.pll = EcpPll(10e6, ref=1, fb=30, op=2, os=8)
        assert (self.pll.f_op, self.pll.f_os) == (self.EDGE_HZ, self.SYNC_HZ)
        self.receiver = Receiver(phases=DdrX2Input.PHASES, uart=True,
                                 uart_divisor=self.SYNC_HZ // BAUD)

    def elaborate(self, platform):
        m = Module()
        pll = m.submodules.pll = self.pll
        if self.reference is ClockReference.OSCILLATOR:
            m.submodules.clk_in = clk_in = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        else:
            port = platform.request("clock_reference", 0, dir="-")
            m.submodules.clk_in = clk_in = io.Buffer("i", port)
        m.d.comb += pll.clki.eq(clk_in.i)
        sync_from_pll(m, pll.clkos, pll.lock)     # (nextpnr derives the clocks' constraints)
        rx = m.submodules.receiver = self.receiver
        port = platform.request("detector", 0, dir="-")
        m.submodules.detectors = ddr = DdrX2Input(port, pll.clkop)
        m.d.comb += rx.sample_clk.eq(ddr.sclk)
        # the tagger's pins are channel-major, phase 0 the earliest
        for ch in range(4):
            m.d.comb += [rx.pins[4 * ch + k].eq(ddr.i[k][ch]) for k in range(DdrX2Input.PHASES)]
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
