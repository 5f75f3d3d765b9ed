"""Time tagger: oversampled detector pins → ``(timestamp, mask, lost)`` event stream.

Bit-exact with :func:`mozi.sim.model.tag_edges`. The board layer samples every detector pin
``phases`` times per clock (plain pins for ``phases = 1``, DDR input registers for 2, SERDES for
4 or 8) and feeds the samples to :attr:`TimeTagger.pins`; the core finds the rising edges,
applies each channel's dead time, merges the accepted edges of one clock into one event and
queues it in a FIFO. When the FIFO is full the event is dropped and counted, and the next event
that enters the FIFO carries the number dropped just before it in its ``lost`` field.

Pipeline (latency two clocks from a sample on ``pins`` to the event entering the FIFO):

1. ``pins`` are registered (the sample register; cycle ``c`` of the model is the ``c``-th
   clock after reset is released, its samples captured on that clock's rising edge);
2. rising edges (also across the clock boundary, against the last sample of the previous
   clock), the first edge per channel, the dead-time check, the merged event and the FIFO
   write are computed from the sample register in one clock.

Dead time is tracked per channel as the number of ticks, counted from the start of the
current clock, that the channel still ignores: after an edge accepted at phase ``f`` it is
``f + dead_time - phases``, and it falls by ``phases`` every clock (saturating at 0). The first
edge of a clock at phase ``f`` is accepted iff ``f >= remaining``; this is exactly the model's
``t >= t_last + dead_time`` and never wraps, however long the run.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from mozi.hdl.layouts import LOST_WIDTH, tag_event_layout

__all__ = ["TimeTagger"]

_PHASES = (1, 2, 4, 8)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    return value


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
        self.channels = _check_int("channels", channels, 1)
        if isinstance(phases, bool) or not isinstance(phases, int):
            raise TypeError(f"phases must be an integer, not {phases!r}")
        if phases not in _PHASES:
            raise ValueError(f"phases must be one of {_PHASES}, not {phases!r}")
        self.phases = phases
        self.phase_bits = phases.bit_length() - 1
        self.timestamp_width = _check_int("timestamp_width", timestamp_width,
                                          self.phase_bits + 1)
        self.dead_time_width = _check_int("dead_time_width", dead_time_width, 1)
        self.fifo_depth = _check_int("fifo_depth", fifo_depth, 2)
        self.lost_count_width = _check_int("lost_count_width", lost_count_width, 1)
        self.event_layout = tag_event_layout(timestamp_width, channels)
        super().__init__({
            "pins": In(channels * phases),
            "dead_time": In(dead_time_width),
            "o": Out(stream.Signature(self.event_layout)),
            "lost_count": Out(lost_count_width),
        })

    def elaborate(self, platform):
        m = Module()
        C, P = self.channels, self.phases

        # Stage 1: sample register and the coarse counter that goes with it. The counter starts
        # at all ones so that it reads 0 while the first sample after reset is in `smp`.
        coarse_width = self.timestamp_width - self.phase_bits
        smp = Signal(C * P)
        coarse = Signal(coarse_width, init=(1 << coarse_width) - 1)
        m.d.sync += [smp.eq(self.pins), coarse.eq(coarse + 1)]

        # Stage 2: edges, dead time, merge.
        prev_last = Signal(C)  # last sample of each channel in the previous clock
        m.d.sync += prev_last.eq(Cat(smp[ch * P + P - 1] for ch in range(C)))

        accepted = Signal(C)
        rise_acc = []
        for ch in range(C):
            s = smp[ch * P:(ch + 1) * P]
            prev = Cat(prev_last[ch], s[:P - 1]) if P > 1 else prev_last[ch]
            rise = Signal(P, name=f"rise{ch}")
            m.d.comb += rise.eq(s & ~prev)
            first = Signal(range(P), name=f"first{ch}")
            first_v = Const(0, range(P))
            for p in reversed(range(P)):
                first_v = Mux(rise[p], p, first_v)
            m.d.comb += first.eq(first_v)

            remaining = Signal(self.dead_time_width, name=f"dead{ch}")
            ok = Signal(name=f"ok{ch}")
            m.d.comb += ok.eq(rise.any() & (first >= remaining))
            after_edge = first + self.dead_time - P          # signed
            after_idle = remaining - P                       # signed
            with m.If(ok):
                m.d.sync += remaining.eq(Mux(after_edge[-1], 0, after_edge))
            with m.Else():
                m.d.sync += remaining.eq(Mux(after_idle[-1], 0, after_idle))
            m.d.comb += accepted[ch].eq(ok)
            rise_acc.append(Mux(ok, rise, 0))

        # The earliest accepted edge is the lowest set bit of the OR of the accepted channels'
        # rising-edge vectors (each channel's own first edge is its lowest set bit).
        any_rise = Signal(P)
        m.d.comb += any_rise.eq(_or_all(rise_acc))
        earliest = Signal(range(P))
        earliest_v = Const(0, range(P))
        for p in reversed(range(P)):
            earliest_v = Mux(any_rise[p], p, earliest_v)
        m.d.comb += earliest.eq(earliest_v)

        event = Signal(self.event_layout)
        m.d.comb += event.mask.eq(accepted)
        if self.phase_bits:
            m.d.comb += event.timestamp.eq(Cat(earliest[:self.phase_bits], coarse))
        else:
            m.d.comb += event.timestamp.eq(coarse)

        # Output FIFO with counted drops.
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=self.event_layout.size,
                                                    depth=self.fifo_depth)
        pending = Signal(LOST_WIDTH)
        lost_max = (1 << LOST_WIDTH) - 1
        total_max = (1 << self.lost_count_width) - 1
        m.d.comb += [
            event.lost.eq(pending),
            fifo.w_data.eq(event),
        ]
        with m.If(accepted.any()):
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


def _or_all(values):
    acc = values[0]
    for v in values[1:]:
        acc = acc | v
    return acc
