"""Time tagger: oversampled detector pins → ``(timestamp, mask, lost)`` event stream.

Bit-exact with :func:`mozi.sim.model.tag_edges`. The board layer samples every detector pin
``phases`` times per clock (plain pins for ``phases = 1``, DDR input registers for 2, SERDES for
4 or 8) and feeds the samples to :attr:`TimeTagger.pins`; the core finds the rising edges,
applies each channel's dead time, merges the accepted edges of one clock into one event and
queues it in a FIFO. When the FIFO is full the event is dropped and counted, and the next event
that enters the FIFO carries the number dropped just before it in its ``lost`` field.

Pipeline (six clocks from a sample on ``pins`` to the event entering the FIFO), each stage
no more than a few LUT levels deep so the core closes timing at 48 MHz on an iCE40UP5K:

1. ``pins`` are registered (the sample register; cycle ``c`` of the model is the ``c``-th
   clock after reset is released, its samples captured on that clock's rising edge);
2. per channel: the rising edges (also across the clock boundary, against the last sample of
   the previous clock) and the first of them;
3. per channel: the dead time that an edge accepted in this clock would start;
4. per channel: the dead-time check (the only loop-carried state), giving the accepted mask;
5. the earliest accepted edge, the timestamp and the event register;
6. the event is written to the FIFO with the pending ``lost`` count, or dropped and counted
   when the FIFO is full.

Dead time is tracked per channel as the number of ticks ``R``, counted from the start of the
current clock, that the channel still ignores, held as ``R = cycles * phases + phase``: after
an edge accepted at phase ``f`` it is ``f + dead_time - phases`` (saturating at 0), and it
falls by ``phases`` every clock. The first edge of a clock at phase ``f`` is accepted iff
``cycles == 0 and f >= phase``; this is exactly the model's ``t >= t_last + dead_time`` and never
wraps, however long the run. A change of :attr:`TimeTagger.dead_time` applies to edges
accepted from two clocks after it.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import check_int
from mozi.hdl.layouts import LOST_WIDTH, tag_event_layout

__all__ = ["TimeTagger"]

_PHASES = (1, 2, 4, 8)


class TimeTagger(wiring.Component):
    """Multi-channel time tagger with per-channel dead time and counted overflow.

    Parameters
    ----------
    channels : int
        Number of detector channels (4 for H, V, D, A).
    phases : int
        Samples per clock per channel: 1, 2, 4 or 8. Timestamps are in ticks of
        ``clock period / phases``.
    timestamp_width : int
        Width of the timestamp in bits; timestamps wrap modulo ``2**timestamp_width``. Must
        exceed ``log2(phases)``.
    dead_time_width : int
        Width of the :attr:`dead_time` port (dead time in ticks, up to
        ``2**dead_time_width - 1``).
    fifo_depth : int
        Depth of the output FIFO in events (at least 2). 256 fills one iCE40 EBR in depth.
    lost_count_width : int
        Width of the :attr:`lost_count` total.

    Attributes
    ----------
    pins : In(channels * phases)
        Sample ``p`` of channel ``ch`` is bit ``ch * phases + p``; phase 0 is the earliest.
    dead_time : In(dead_time_width)
        Per-channel dead time in ticks (0 disables it). A value is applied to each edge when
        that edge is accepted; it may be changed at any time.
    o : Out(stream.Signature(tag_event_layout(timestamp_width, channels)))
        Events: ``timestamp`` (ticks of the earliest accepted edge of the clock, wrapping),
        ``mask`` (channels with an accepted edge in that clock, bit ``ch``) and ``lost``
        (events dropped for lack of FIFO room immediately before this one, saturating at
        ``2**LOST_WIDTH - 1``).
    lost_count : Out(lost_count_width)
        Total number of events dropped since reset (saturating).
    """

    def __init__(self, *, channels: int = 4, phases: int = 1, timestamp_width: int = 48,
                 dead_time_width: int = 16, fifo_depth: int = 256,
                 lost_count_width: int = 32):
        self.channels = check_int("channels", channels, 1)
        if isinstance(phases, bool) or not isinstance(phases, int):
            raise TypeError(f"phases must be an integer, not {phases!r}")
        if phases not in _PHASES:
            raise ValueError(f"phases must be one of {_PHASES}, not {phases!r}")
        self.phases = phases
        self.phase_bits = phases.bit_length() - 1
        self.timestamp_width = check_int("timestamp_width", timestamp_width,
                                          self.phase_bits + 1)
        self.dead_time_width = check_int("dead_time_width", dead_time_width, 1)
        self.fifo_depth = check_int("fifo_depth", fifo_depth, 2)
        self.lost_count_width = check_int("lost_count_width", lost_count_width, 1)
        self.event_layout = tag_event_layout(timestamp_width, channels)
        super().__init__({
            "pins": In(channels * phases),
            "dead_time": In(dead_time_width),
            "o": Out(stream.Signature(self.event_layout)),
            "lost_count": Out(lost_count_width),
        })

    def elaborate(self, platform):
        m = Module()
        C, P, pb = self.channels, self.phases, self.phase_bits
        DW = self.dead_time_width

        # Stage 1: sample register.
        smp = Signal(C * P)
        m.d.sync += smp.eq(self.pins)

        # The coarse counter, split in two halves with a registered carry (a short carry
        # chain), starts at -4 so that it reads c while stage 5 handles the samples of cycle c.
        coarse = _split_counter(m, self.timestamp_width - pb, init=-4)

        # dead_time - phases, registered (the port is quasi-static)
        dmp = Signal(signed(DW + 2), reset_less=True)
        m.d.sync += dmp.eq(self.dead_time - P)

        prev_last = Signal(C)  # last sample of each channel in the previous clock
        m.d.sync += prev_last.eq(Cat(smp[ch * P + P - 1] for ch in range(C)))

        accepted = Signal(C)       # stage 4 output, registered
        rise_acc = []              # stage 4 output: rising edges of accepted channels
        for ch in range(C):
            # Stage 2: rising edges and the first one.
            s = smp[ch * P:(ch + 1) * P]
            prev = Cat(prev_last[ch], s[:P - 1]) if P > 1 else prev_last[ch]
            rise2 = Signal(P, name=f"rise2_{ch}")
            first2 = Signal(range(P), name=f"first2_{ch}")
            first_v = Const(0, range(P))
            for p in reversed(range(P)):
                first_v = Mux(s[p] & ~prev[p], p, first_v)
            m.d.sync += [rise2.eq(s & ~prev), first2.eq(first_v)]

            # Stage 3: the dead time an edge accepted here would start, ≥ 0.
            rise3 = Signal(P, name=f"rise3_{ch}")
            first3 = Signal(range(P), name=f"first3_{ch}")
            start3 = Signal(DW + 1, name=f"deadnew_{ch}")
            start_v = first2 + dmp
            m.d.sync += [rise3.eq(rise2), first3.eq(first2),
                         start3.eq(Mux(start_v < 0, 0, start_v))]

            # Stage 4: the dead-time check. R = cyc * P + ph; idle: R < P (cyc == 0).
            cyc = Signal(DW + 1, name=f"deadcyc_{ch}")
            ph = Signal(pb, name=f"deadph_{ch}")
            idle = Signal(init=1, name=f"deadidle_{ch}")
            ok = Signal(name=f"ok{ch}")
            m.d.comb += ok.eq(rise3.any() & idle & (first3 >= ph))
            with m.If(ok):
                m.d.sync += [cyc.eq(start3[pb:]), ph.eq(start3[:pb]),
                             idle.eq(start3[pb:] == 0)]
            with m.Elif(idle):
                m.d.sync += ph.eq(0)
            with m.Else():
                m.d.sync += [cyc.eq(cyc - 1), idle.eq(cyc == 1)]
            m.d.sync += accepted[ch].eq(ok)
            racc = Signal(P, name=f"racc{ch}")
            m.d.sync += racc.eq(Mux(ok, rise3, 0))
            rise_acc.append(racc)

        # Stage 5: the earliest accepted edge is the lowest set bit of the OR of the accepted
        # channels' rising-edge vectors (each channel's own first edge is its lowest set bit).
        any_rise = _or_all(rise_acc)
        earliest_v = Const(0, range(P))
        for p in reversed(range(P)):
            earliest_v = Mux(any_rise[p], p, earliest_v)
        event = Signal(self.event_layout)
        event_valid = Signal()
        m.d.sync += [event.mask.eq(accepted), event_valid.eq(accepted.any())]
        if pb:
            m.d.sync += event.timestamp.eq(Cat(earliest_v[:pb], coarse))
        else:
            m.d.sync += event.timestamp.eq(coarse)

        # Stage 6: output FIFO with counted drops.
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=self.event_layout.size,
                                                    depth=self.fifo_depth)
        pending = Signal(LOST_WIDTH)
        lost_max = (1 << LOST_WIDTH) - 1
        total_max = (1 << self.lost_count_width) - 1
        entry = Signal(self.event_layout)
        m.d.comb += [
            entry.timestamp.eq(event.timestamp),
            entry.mask.eq(event.mask),
            entry.lost.eq(pending),
            fifo.w_data.eq(entry),
        ]
        with m.If(event_valid):
            with m.If(fifo.w_rdy):
                m.d.comb += fifo.w_en.eq(1)
                m.d.sync += pending.eq(0)
            with m.Else():
                with m.If(pending != lost_max):
                    m.d.sync += pending.eq(pending + 1)
                with m.If(self.lost_count != total_max):
                    m.d.sync += self.lost_count.eq(self.lost_count + 1)

        m.d.comb += [
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        return m


def _split_counter(m: Module, width: int, init: int):
    """A free-running ``width``-bit counter built from two halves and a registered carry.

    Returns a value that reads ``init``, ``init + 1``, … (mod ``2**width``) on successive
    clocks after reset; the high half's increment uses a carry computed one clock ahead, so
    the longest carry chain is about ``width / 2`` bits.
    """
    init %= 1 << width
    low_w = (width + 1) // 2
    high_w = width - low_w
    low = Signal(low_w, init=init & ((1 << low_w) - 1), name="coarse_lo")
    m.d.sync += low.eq(low + 1)
    if not high_w:
        return low
    low_max = (1 << low_w) - 1
    carry = Signal(init=int((init & low_max) == low_max), name="coarse_carry")
    high = Signal(high_w, init=init >> low_w, name="coarse_hi")
    m.d.sync += [carry.eq(low == low_max - 1), high.eq(high + carry)]
    return Cat(low, high)


def _or_all(values):
    acc = values[0]
    for v in values[1:]:
        acc = acc | v
    return acc
