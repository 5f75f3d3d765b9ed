"""The roles on the iCEBreaker (iCE40UP5K): PLL, DDR detector inputs, UART on the FTDI.

Pin map (3.3 V LVCMOS):

==========  ========  ====================  ==========================
PMOD pin    FPGA pin  receiver              transmitter
==========  ========  ====================  ==========================
1A 1        4         detector H            laser trigger H
1A 2        2         detector V            laser trigger V
1A 3        47        detector D            laser trigger D
1A 4        45        detector A            laser trigger A
1B 1        43        10 MHz reference      intensity select bit 0
1B 2        38        —                     intensity select bit 1
1B 3        34        —                     QRNG bit clock (in)
1B 4        31        —                     QRNG data (in)
==========  ========  ====================  ==========================

The 10 MHz reference is optional (``ClockReference.EXTERNAL``: the PLL takes it instead of the
oscillator, :data:`PLL_EXTERNAL`). The transmitter does not fit the UP5K (``docs/boards.md``
has the figures); its top is here so that the build says so with numbers.

The link is the FTDI's second channel (``uart`` 0: FPGA pins 6 rx, 9 tx), at 3 Mbaud after
configuration (``mozi.firmware.protocol.LINK_BAUD``, the host's default). The green LED
is not used (its pin carries the PLL's second output); the red one shows that the device is
busy (not ``idle``).

Clocks: the 12 MHz oscillator feeds one ``SB_PLL40_2F_PAD``, whose output A (48 MHz) is the
TimeTagger's ``sample`` clock and output B (``GENCLK_HALF``, 24 MHz) everything else's. The
detector pins are sampled by the ``SB_IO`` input registers on both edges of the 48 MHz clock
(two phases a clock: 10.4 ns ticks). ``sync`` is held in reset until the PLL locks. The
phase order (the rising edge's sample first) and :data:`PIN_LATENCY` are checked from the pins
by ``tests/boards/tb_pins.py``, with Yosys's model of ``SB_IO``.
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.build import Attrs, Clock, Pins, Resource
from amaranth.lib import io, wiring
from amaranth_boards.icebreaker import ICEBreakerPlatform
from mozi.boards.common import BAUD, ClockReference, leds, sync_from_pll, transmitter_pins, uart
from mozi.boards.qrng import SerialRandomInput
from mozi.firmware.receiver import Receiver
from mozi.firmware.transmitter import Transmitter

__all__ = ["EXTERNAL_SAMPLE_HZ", "PIN_LATENCY", "PLL", "PLL_EXTERNAL", "RESOURCES",
           "SAMPLE_HZ", "SYNC_HZ", "ICEBreakerReceiver", "ICEBreakerTransmitter", "icebreaker"]

_LVCMOS = Attrs(IO_STANDARD="SB_LVCMOS")
RESOURCES = [
    Resource("detector", 0, Pins("1 2 3 4", dir="i", conn=("pmod", 0)), _LVCMOS),
    Resource("laser", 0, Pins("1 2 3 4", dir="o", conn=("pmod", 0)), _LVCMOS),
    Resource("intensity", 0, Pins("1 2", dir="o", conn=("pmod", 1)), _LVCMOS),
    Resource("qrng", 0, Pins("3 4", dir="i", conn=("pmod", 1)), _LVCMOS),
    Resource("clock_reference", 0, Pins("1", dir="i", conn=("pmod", 1)), Clock(10e6),
             _LVCMOS),
]
#: The PLL for 12 MHz in (``icepll -i 12 -o 48``): F_VCO = 12 MHz · (DIVF + 1) = 768 MHz,
#: out = F_VCO / 2**DIVQ = 48 MHz; output B at half that.
PLL = {"DIVR": 0, "DIVF": 63, "DIVQ": 4, "FILTER_RANGE": 1}
SAMPLE_HZ = 48_000_000
SYNC_HZ = SAMPLE_HZ // 2
#: The PLL for a 10 MHz reference (``icepll -i 10 -o 48``): the phase detector needs >= 10
#: MHz, so DIVR = 0 and F_VCO = 10 MHz · 77 = 770 MHz, out 48.125 MHz (48.0 is not reachable).
#: The UART keeps divisor 8: 3.008 Mbaud, 0.26 % fast, well inside a UART's tolerance.
PLL_EXTERNAL = {"DIVR": 0, "DIVF": 76, "DIVQ": 4, "FILTER_RANGE": 1}
EXTERNAL_SAMPLE_HZ = 48_125_000
#: The pins' levels at the rising edge that starts sampling clock ``c - PIN_LATENCY`` (phase
#: 0) and at the falling edge after it (phase 1) are the tagger's samples of cycle ``c``: the
#: ``SB_IO`` input registers and the register that brings the falling edge's sample to the
#: rising edge take one clock more than a sample presented on ``Receiver.pins`` (a fixed
#: offset of every timestamp, measured from the pins by ``tests/boards/tb_pins.py``).
PIN_LATENCY = 1


def icebreaker() -> ICEBreakerPlatform:
    """The iCEBreaker with the roles' pins added."""
    p = ICEBreakerPlatform()
    p.add_resources(RESOURCES)
    return p


class ICEBreakerReceiver(Elaboratable):
    """The board top: PLL, reset, DDR detector inputs and the receiver role top. With
    ``ClockReference.EXTERNAL`` the PLL takes a 10 MHz reference on PMOD1B pin 1 instead of
    the oscillator (:data:`PLL_EXTERNAL`)."""

    def __init__(self, reference: ClockReference = ClockReference.OSCILLATOR):
        self.reference = reference
        self.receiver = Receiver(phases=2, uart=True, uart_divisor=SYNC_HZ // BAUD)

    def elaborate(self, platform):
        m = Module()
        sample_clk, sync_clk, locked = Signal(), Signal(), Signal()
        outputs = dict(p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT_PORTA="GENCLK",
                       p_PLLOUT_SELECT_PORTB="GENCLK_HALF", i_RESETB=1, i_BYPASS=0,
                       o_PLLOUTGLOBALA=sample_clk, o_PLLOUTGLOBALB=sync_clk, o_LOCK=locked)
        if self.reference is ClockReference.OSCILLATOR:
            # pin 35 is the UP5K's PLL pad: its PLL takes the oscillator there, not from fabric
            clk12 = platform.request("clk12", 0, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_2F_PAD", **{f"p_{k}": v for k, v in PLL.items()},
                i_PACKAGEPIN=clk12.io, **outputs)
        else:
            port = platform.request("clock_reference", 0, dir="-")
            m.submodules.clk_in = clk_in = io.Buffer("i", port)
            m.submodules.pll = Instance(
                "SB_PLL40_2F_CORE", **{f"p_{k}": v for k, v in PLL_EXTERNAL.items()},
                i_REFERENCECLK=clk_in.i, **outputs)
        # (nextpnr derives the outputs' constraints from the oscillator's and the divisors)
        sync_from_pll(m, sync_clk, locked)
        # the input registers' domain: the receiver's own `sample` domain is local to it
        m.domains.pins = ClockDomain("pins", reset_less=True)
        m.d.comb += ClockSignal("pins").eq(sample_clk)

        rx = self.receiver
        m.submodules.receiver = rx
        m.d.comb += rx.sample_clk.eq(sample_clk)
        # both edges of the sampling clock: i[0] at the rising edge, i[1] half a clock later
        # (both re-registered on the rising edge); the tagger wants channel-major, phase 0
        # earliest
        port = platform.request("detector", 0, dir="-")
        m.submodules.detectors = ddr = io.DDRBuffer("i", port, i_domain="pins")
        for ch in range(4):
            m.d.comb += [rx.pins[2 * ch].eq(ddr.i[0][ch]), rx.pins[2 * ch + 1].eq(ddr.i[1][ch])]

        uart(m, platform, rx)
        # (the green LED's pin, 37, is the PLL's second output: not used)
        leds(m, platform, {("led_r", 0): ~rx.idle})
        return m


class ICEBreakerTransmitter(Elaboratable):
    """The transmitter's board top: a 24 MHz PLL (UART divisor 8), reset, laser and
    intensity outputs, the QRNG input and the role top. It does not fit the UP5K."""

    def __init__(self):
        self.transmitter = Transmitter(uart=True, uart_divisor=SYNC_HZ // BAUD)
        self.qrng = SerialRandomInput()

    def elaborate(self, platform):
        m = Module()
        clk12 = platform.request("clk12", 0, dir="-")
        clk, locked = Signal(), Signal()
        m.submodules.pll = Instance(
            "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
            **{f"p_{k}": v for k, v in PLL.items() if k != "DIVQ"}, p_DIVQ=PLL["DIVQ"] + 1,
            i_PACKAGEPIN=clk12.io, i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        sync_from_pll(m, clk, locked)
        tx = m.submodules.transmitter = self.transmitter
        m.submodules.qrng = qrng = self.qrng
        wiring.connect(m, qrng.words, tx.qrng)
        transmitter_pins(m, platform, tx, qrng)
        uart(m, platform, tx)
        leds(m, platform, {("led_r", 0): ~tx.idle})
        return m
