"""The link's physical layer on a board: a UART (8N1) with a runtime divisor.

:class:`UART` turns the ``rx`` pin into a byte stream and a byte stream into the ``tx`` pin,
at ``divisor`` clocks per bit (``UART_DIVISOR``; the iCEBreaker's FTDI reaches 3 Mbaud, i.e.
a divisor of 16 at 48 MHz). Received bytes wait in a small FIFO for the link's deframer; a
byte that finds the FIFO full is lost and counted (``LINK_OVERFLOWS``), and so is a byte whose
stop bit is not 1 — the deframer's CRC then drops the frame, so a lost byte costs a retry,
never a wrong request.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_DIVISOR", "UART"]

#: Smallest divisor: the receiver samples each bit at its middle, divisor / 2 after its edge.
MIN_DIVISOR = 4


class UART(wiring.Component):
    """8N1 UART receiver and transmitter.

    Parameters
    ----------
    fifo_depth : int
        Received bytes held for the consumer of ``o``.

    Ports
    -----
    rx : In(1), tx : Out(1, init=1)
        The pins (idle high).
    divisor : In(16)
        Clocks per bit (>= :data:`MIN_DIVISOR`).
    o : Out(stream.Signature(8))
        Received bytes.
    i : In(stream.Signature(8))
        Bytes to send.
    lost : Out(1)
        A byte is lost this clock: the FIFO was full, or its stop bit was 0 (the link counts
        these in ``LINK_OVERFLOWS``).
    tx_busy : Out(1)
        A byte is being sent.
    """

    rx: In(1)
    tx: Out(1, init=1)
    divisor: In(16)
    o: Out(stream.Signature(8))
    i: In(stream.Signature(8))
    lost: Out(1)
    tx_busy: Out(1)

    def __init__(self, fifo_depth: int = 32):
        self.fifo_depth = fifo_depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        wiring.connect(m, fifo.r_stream, wiring.flipped(self.o))
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)
        lost = self.lost

        # ---- receiver ---------------------------------------------------------------------
        r_timer = Signal(16)
        r_bits = Signal(4)
        r_shift = Signal(8)
        with m.FSM(name="rx_fsm"):
            with m.State("IDLE"):
                with m.If(~rx):                               # start bit edge
                    # the synchroniser and this state delay the edge by 2 clocks and START
                    # samples T + 1 clocks on: T = divisor / 2 - 1 samples the bit's middle
                    # (the timers count from T + 1 down to 1: no subtractor on the divisor)
                    m.d.sync += r_timer.eq(self.divisor >> 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(r_timer == 1):
                    with m.If(rx):                            # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [r_timer.eq(self.divisor), r_bits.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += r_timer.eq(r_timer - 1)
            with m.State("DATA"):
                with m.If(r_timer == 1):
                    m.d.sync += [r_shift.eq(Mux(rx, 0x80, 0) | (r_shift >> 1)),
                                 r_timer.eq(self.divisor), r_bits.eq(r_bits + 1)]
                    with m.If(r_bits == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += r_timer.eq(r_timer - 1)
            with m.State("STOP"):
                with m.If(r_timer == 1):
                    m.d.comb += [fifo.w_stream.payload.eq(r_shift),
                                 fifo.w_stream.valid.eq(rx),
                                 lost.eq(~rx | ~fifo.w_stream.ready)]
                    m.next = "WAIT_HIGH"
                with m.Else():
                    m.d.sync += r_timer.eq(r_timer - 1)
            with m.State("WAIT_HIGH"):                       # a framing error holds rx low
                with m.If(rx):
                    m.next = "IDLE"

        # ---- transmitter ------------------------------------------------------------------
        t_timer = Signal(16)
        t_bits = Signal(4)
        t_shift = Signal(10)
        with m.FSM(name="tx_fsm"):
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    # start bit, 8 data bits LSB first, stop bit
                    m.d.sync += [t_shift.eq((self.i.payload << 1) | (1 << 9)),
                                 t_timer.eq(self.divisor), t_bits.eq(0),
                                 self.tx.eq(0)]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += self.tx_busy.eq(1)
                with m.If(t_timer == 1):
                    with m.If(t_bits == 9):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [self.tx.eq(t_shift[1]), t_shift.eq(t_shift >> 1),
                                     t_bits.eq(t_bits + 1), t_timer.eq(self.divisor)]
                with m.Else():
                    m.d.sync += t_timer.eq(t_timer - 1)
        return m
