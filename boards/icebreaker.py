"""The receiver on the iCEBreaker (iCE40UP5K): PLL, DDR detector inputs, UART on the FTDI.

Pin map (PMOD1A, the iCEBreaker's left PMOD; 3.3 V LVCMOS):

============  ==========  =========================================
PMOD1A pin    FPGA pin    signal
============  ==========  =========================================
1             4           detector H
2             2           detector V
3             47          detector D
4             45          detector A
============  ==========  =========================================

The link is the FTDI's second channel (``uart`` 0: FPGA pins 6 rx, 9 tx), at 3 Mbaud after
configuration (the host's default, ``mozi.host.serial_device.DEFAULT_BAUD``). The green LED
is not used (its pin carries the PLL's second output); the red one shows that the device is
busy (not ``idle``).

Clocks: the 12 MHz oscillator feeds one ``SB_PLL40_2F_PAD``, whose output A (48 MHz) is the
TimeTagger's ``sample`` clock and output B (``GENCLK_HALF``, 24 MHz) everything else's. The
detector pins are sampled by the ``SB_IO`` input registers on both edges of the 48 MHz clock
(two phases a clock: 10.4 ns ticks). ``sync`` is held in reset until the PLL locks. The
phase order (the rising edge's sample first) follows the ``SB_IO`` documentation; no pin-level
simulation checks it yet.
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.build import Attrs, Pins, Resource
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from amaranth_boards.icebreaker import ICEBreakerPlatform
from mozi.firmware.receiver import Receiver

__all__ = ["BAUD", "DETECTORS", "SAMPLE_HZ", "SYNC_HZ", "ICEBreakerReceiver", "icebreaker"]

#: The detector inputs, H V D A, on PMOD1A pins 1-4.
DETECTORS = Resource("detector", 0, Pins("1 2 3 4", dir="i", conn=("pmod", 0)),
                     Attrs(IO_STANDARD="SB_LVCMOS"))
#: The PLL for 12 MHz in (``icepll -i 12 -o 48``): F_VCO = 12 MHz · (DIVF + 1) = 768 MHz,
#: out = F_VCO / 2**DIVQ = 48 MHz; output B at half that.
PLL = {"DIVR": 0, "DIVF": 63, "DIVQ": 4, "FILTER_RANGE": 1}
SAMPLE_HZ = 48_000_000
SYNC_HZ = SAMPLE_HZ // 2
#: The link's rate after configuration.
BAUD = 3_000_000


def icebreaker() -> ICEBreakerPlatform:
    """The iCEBreaker with the detector inputs added."""
    p = ICEBreakerPlatform()
    p.add_resources([DETECTORS])
    return p


class ICEBreakerReceiver(Elaboratable):
    """The board top: PLL, reset, DDR detector inputs and the receiver role top."""

    def __init__(self):
        self.receiver = Receiver(phases=2, uart=True, uart_divisor=SYNC_HZ // BAUD)

    def elaborate(self, platform):
        m = Module()
        # pin 35 is the UP5K's PLL pad: its PLL takes the oscillator there, not from fabric
        clk12 = platform.request("clk12", 0, dir="-")
        sample_clk, sync_clk, locked = Signal(), Signal(), Signal()
        m.submodules.pll = Instance(
            "SB_PLL40_2F_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT_PORTA="GENCLK",
            p_PLLOUT_SELECT_PORTB="GENCLK_HALF",
            **{f"p_{k}": v for k, v in PLL.items()},
            i_PACKAGEPIN=clk12.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBALA=sample_clk, o_PLLOUTGLOBALB=sync_clk, o_LOCK=locked)
        # (nextpnr derives the outputs' constraints from the oscillator's and the divisors)
        m.domains.sync = sync = ClockDomain("sync")
        # the input registers' domain: the receiver's own `sample` domain is local to it
        m.domains.pins = ClockDomain("pins", reset_less=True)
        m.d.comb += [sync.clk.eq(sync_clk), ClockSignal("pins").eq(sample_clk)]
        m.submodules.reset = ResetSynchronizer(~locked, domain="sync")

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

        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)    # (the UART synchronises)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [rx.rx.eq(uart_rx.i), uart_tx.o.eq(rx.tx)]
        # (the green LED's pin, 37, is the PLL's second output: not used)
        m.submodules.led = led = io.Buffer("o", platform.request("led_r", 0, dir="-"))
        m.d.comb += led.o.eq(~rx.idle)
        return m
