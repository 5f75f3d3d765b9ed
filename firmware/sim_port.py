"""The wide byte-stream port a role top is driven through in co-simulation.

A UART moves one byte per bit-times-ten; a simulation that stepped Python for every byte (or
every clock) would spend its time in the bridge, not in the gateware. :class:`WidePort` wraps a
role top's byte streams so that the co-simulation bridge (``sim/rtl_bridge.cpp``) moves a
*beat* of up to ``width`` bytes per handshake in each direction, and exposes ``idle`` so that
the bridge can block on its socket while the gateware is idle.

The port is the co-simulation's top: it has a clock input and no reset, and every register
starts at its initial value, as in an FPGA after configuration. (A reset input would put all
the design's next-state logic on the simulator's input path and evaluate it again at every
clock edge: the verilated receiver ran three times slower with one.)
"""

from amaranth import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WidePort"]


class WidePort(wiring.Component):
    """A role top behind beats of ``width`` bytes.

    Parameters
    ----------
    top : wiring.Component
        With ``i: In(stream.Signature(8))``, ``o: Out(stream.Signature(8))`` and ``idle: Out(1)``.
    width : int
        Bytes per beat.

    Ports
    -----
    clk : In(1)
        The clock of the ``sync`` domain (reset-less).
    in_data : In(8 * width), in_count : In(range(width + 1)), in_valid : In(1), in_ready : Out(1)
        A beat of ``in_count`` bytes, byte ``k`` in bits ``8k .. 8k+7``; ready when the
        previous beat has been handed to the top.
    out_data : Out(8 * width), out_count : Out(range(width + 1)), out_valid : Out(1),
    out_ready : In(1)
        A beat of the top's output, offered when full, when the top is idle (its response is
        complete) or after ``FLUSH_CYCLES`` clocks without a byte.
    out_quiet : Out(1)
        No output byte is on its way (the last beat, if any, has been taken): the bridge
        forwards what it holds.
    idle : Out(1)
        The top is idle and neither beat register holds a byte: nothing happens until input
        arrives.
    """

    #: Clocks without an output byte after which a partial beat is offered anyway.
    FLUSH_CYCLES = 255

    def __init__(self, top, width: int = 32):
        self.top = top
        self.width = width
        super().__init__({
            "clk": In(1),
            "in_data": In(8 * width), "in_count": In(range(width + 1)),
            "in_valid": In(1), "in_ready": Out(1),
            "out_data": Out(8 * width), "out_count": Out(range(width + 1)),
            "out_valid": Out(1), "out_ready": In(1),
            "out_quiet": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync", reset_less=True)
        m.d.comb += sync.clk.eq(self.clk)
        W = self.width
        m.submodules.top = top = self.top
        if hasattr(top, "sample_clk"):       # the receiver's tagger: the same clock here
            m.d.comb += top.sample_clk.eq(self.clk)
        # input beat → bytes
        beat = Signal(8 * W)
        count = Signal(range(W + 1))
        pos = Signal(range(W + 1))
        m.d.comb += [self.in_ready.eq(pos == count),
                     top.i.valid.eq(pos != count),
                     top.i.payload.eq(beat.word_select(pos, 8))]
        with m.If(top.i.valid & top.i.ready):
            m.d.sync += pos.eq(pos + 1)
        with m.If(self.in_valid & self.in_ready):
            m.d.sync += [beat.eq(self.in_data), count.eq(self.in_count), pos.eq(0)]
        # bytes → output beat
        ocount = Signal(range(W + 1))
        offering = Signal()
        quiet = Signal(range(self.FLUSH_CYCLES + 1))    # clocks since the last byte
        m.d.comb += [self.out_count.eq(ocount), self.out_valid.eq(offering),
                     top.o.ready.eq(~offering & (ocount != W))]
        with m.If(top.o.valid & top.o.ready):
            m.d.sync += [self.out_data.word_select(ocount, 8).eq(top.o.payload),
                         ocount.eq(ocount + 1), quiet.eq(0)]
        with m.Elif(~offering & (ocount != 0)):
            # a partial beat goes out once the top has finished its response, or after a
            # pause in a long one (so a slow stream of bytes does not wake the bridge for each)
            with m.If((ocount == W) | top.idle | (quiet == self.FLUSH_CYCLES)):
                m.d.sync += [offering.eq(1), quiet.eq(0)]
            with m.Else():
                m.d.sync += quiet.eq(quiet + 1)
        with m.If(offering & self.out_ready):
            m.d.sync += [offering.eq(0), ocount.eq(0)]
        m.d.comb += [self.out_quiet.eq(~top.o.valid & (ocount == 0) & ~offering),
                     self.idle.eq(top.idle & (pos == count) & (ocount == 0) & ~offering)]
        return m
