"""The transmitter's random source on a board: an external QRNG's serial bit stream.

The satellite draws each slot's basis, bit and intensity from a quantum random number
generator, not from anything in the FPGA. On a board that generator is an external module
with a two-wire synchronous output: a bit clock and a data line that changes on the clock's
falling edge and is read on its rising edge (SPI mode 0, the generator driving the clock).
:class:`SerialRandomInput` synchronises both wires to ``sync``, shifts in one bit per rising
edge of the bit clock (the first bit is bit 0 of the word) and offers each 64-bit word on
``words``, the role top's ``qrng`` stream.

The bit clock may run at up to a quarter of ``sync`` (each of its levels must last at least
two ``sync`` clocks for the synchroniser to see it). A word completed while the previous one
has not been taken is discarded whole and counted in ``dropped``; which words are discarded
depends only on timing, never on their bits, so the words that reach the pattern generator are
as random as the generator's. With nothing connected no word ever completes and every slot is
dark (the pattern generator counts ``PG_UNDERRUNS``): without randomness the lasers stay off.
"""


from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["WORD_BITS", "SerialRandomInput"]

WORD_BITS = 64


class SerialRandomInput(wiring.Component):
    """An external QRNG's bit clock and data pins → 64-bit words.

    Ports
    -----
    bit_clk, data : In(1)
        The generator's pins, asynchronous to ``sync``.
    words : Out(stream.Signature(64))
        One word per 64 bits, held until taken.
    dropped : Out(1)
        Pulses for one clock when a completed word is discarded (``words`` was full).
    """

    bit_clk: In(1)
    data: In(1)
    words: Out(stream.Signature(WORD_BITS))
    dropped: Out(1)

    def elaborate(self, platform):
        m = Module()
        clk_s, data_s, clk_prev = Signal(), Signal(), Signal()
        # one synchroniser depth for both wires keeps each bit next to its clock edge
        m.submodules.sync_clk = FFSynchronizer(self.bit_clk, clk_s)
        m.submodules.sync_data = FFSynchronizer(self.data, data_s)
        m.d.sync += clk_prev.eq(clk_s)
        rise = Signal()
        m.d.comb += rise.eq(clk_s & ~clk_prev)

        shift = Signal(WORD_BITS)
        count = Signal(range(WORD_BITS))       # bits in ``shift`` before this one
        full = Signal()                        # this rising edge completes a word
        m.d.comb += full.eq(rise & (count == WORD_BITS - 1))
        with m.If(rise):
            m.d.sync += [shift.eq((shift >> 1) | (data_s << (WORD_BITS - 1))),
                         count.eq(count + 1)]

        w = self.words
        with m.If(w.valid & w.ready):
            m.d.sync += w.valid.eq(0)
        m.d.sync += self.dropped.eq(0)
        with m.If(full):
            with m.If(~w.valid | w.ready):
                m.d.sync += [w.payload.eq((shift >> 1) | (data_s << (WORD_BITS - 1))),
                             w.valid.eq(1)]
            with m.Else():
                m.d.sync += self.dropped.eq(1)
        return m
