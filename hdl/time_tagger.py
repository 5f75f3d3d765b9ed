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
3. per channel: the dead time that an edge accepted in this clock would start (selected by
   the edge's phase among values precomputed from :attr:`TimeTagger.dead_time` for every
   phase);
4. per channel: the dead-time check (the only loop-carried state: one LUT from its
   registers to the accept decision, one more to every register it updates), giving the
   accepted mask;
5. the earliest accepted edge, the timestamp and the event register;
6. the event is written to the FIFO with the pending ``lost`` count, or dropped and counted
   when the FIFO is full. The FIFO (:class:`_EventFIFO`, same capacity and interface as
   Amaranth's ``SyncFIFOBuffered``) keeps its ready flags in flip-flops, and
   :attr:`TimeTagger.lost_count` counts a drop one clock after it.

Dead time is tracked per channel as the number of ticks ``R``, counted from the start of the
current clock, that the channel still ignores, held as ``R = cycles * phases + phase``: after
an edge accepted at phase ``f`` it is ``f + dead_time - phases`` (saturating at 0), and it
falls by ``phases`` every clock. The first edge of a clock at phase ``f`` is accepted iff
``cycles == 0 and f >= phase``; this is exactly the model's ``t >= t_last + dead_time`` and never
wraps, however long the run. The core holds ``phase``, an ``idle`` flag (``cycles == 0``) and,
instead of ``cycles``, ``cycles - 2`` counting down, whose sign bit says that the last dead
clock is running (so no wide comparison sits in the loop). A change of
:attr:`TimeTagger.dead_time` applies to edges accepted from two clocks after it.
"""

from amaranth import Array, Cat, Const, Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import check_int, collision_free_read, saturating_counter
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
        Total number of events dropped since reset (saturating; counted one clock after the
        drop).
    drop : Out(1)
        High for one clock per dropped event, as ``lost_count`` counts it.
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
            "drop": Out(1),
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

        # What an edge at phase f would start, for every f, registered (the port is
        # quasi-static): S = first + dead_time - P; ph of max(S, 0), R = S // P - 2 and
        # whether S < P. Stage 3 only selects among these by the edge's phase.
        ph_opt = Array(Signal(pb, name=f"deadph_opt{f}", reset_less=True) for f in range(P))
        r_opt = Array(Signal(signed(DW + 2), name=f"deadr_opt{f}", reset_less=True)
                      for f in range(P))
        zero_opt = Signal(P, reset_less=True)
        for f in range(P):
            m.d.sync += [      # S < 0 iff dead_time < P - f; S = dead_time + f (mod P)
                ph_opt[f].eq(Mux(self.dead_time < P - f, 0, (self.dead_time[:pb] + f)[:pb])),
                r_opt[f].eq((self.dead_time + (f - 3 * P)) >> pb),
                zero_opt[f].eq(self.dead_time < 2 * P - f),
            ]

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

            # Stage 3: what an edge accepted here would start. The new dead time is
            # S = max(first + dead_time - P, 0) = cyc * P + ph; stage 4 keeps ph and, instead
            # of cyc, R = cyc - 2 (its sign bit tells that the last dead clock is running),
            # plus whether cyc is 0 (the channel stays idle). ge3[v]: the first edge of the
            # clock is at phase >= v.
            rise3 = Signal(P, name=f"rise3_{ch}")
            ge3 = Signal(P, name=f"ge3_{ch}")
            ph3 = Signal(pb, name=f"deadph3_{ch}")
            r3 = Signal(signed(DW + 2), name=f"deadr3_{ch}")
            zero3 = Signal(name=f"deadzero3_{ch}")
            m.d.sync += [
                rise3.eq(rise2),
                ge3.eq(Cat(rise2.any() & (first2 >= v) for v in range(P))),
                ph3.eq(ph_opt[first2]),
                r3.eq(r_opt[first2]),
                zero3.eq(zero_opt.bit_select(first2, 1) if pb else zero_opt[0]),
            ]

            # Stage 4: the dead-time check, the only loop-carried state: one LUT from the
            # state registers to `ok`, and one more to every register it selects.
            r = Signal(signed(DW + 2), name=f"deadr_{ch}")
            ph = Signal(pb, name=f"deadph_{ch}")
            idle = Signal(init=1, name=f"deadidle_{ch}")
            ok = Signal(name=f"ok{ch}")
            m.d.comb += ok.eq(idle & (ge3.bit_select(ph, 1) if pb else ge3[0]))
            m.d.sync += r.eq(Mux(ok, r3, r - 1))     # free-running while idle (unused then)
            with m.If(ok):
                m.d.sync += [ph.eq(ph3), idle.eq(zero3)]
            with m.Elif(idle):
                m.d.sync += ph.eq(0)
            with m.Else():
                m.d.sync += idle.eq(r[-1])           # cyc was 1: the channel is idle again
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
        fifo = m.submodules.fifo = _EventFIFO(width=self.event_layout.size,
                                              depth=self.fifo_depth)
        # drops since the last write; the top bit, once set, saturates it (no wide compare)
        pending = Signal(LOST_WIDTH + 1)
        drop = self.drop
        m.d.sync += drop.eq(0)
        entry = Signal(self.event_layout)
        m.d.comb += [
            entry.timestamp.eq(event.timestamp),
            entry.mask.eq(event.mask),
            entry.lost.eq(pending[:LOST_WIDTH] | pending[LOST_WIDTH].replicate(LOST_WIDTH)),
            fifo.w_data.eq(entry),
        ]
        with m.If(event_valid):
            with m.If(fifo.w_rdy):
                m.d.comb += fifo.w_en.eq(1)
                m.d.sync += pending.eq(0)
            with m.Else():
                with m.If(~pending[LOST_WIDTH]):
                    m.d.sync += pending.eq(pending + 1)
                m.d.sync += drop.eq(1)
        # the total counts drops one clock later, from a register (short paths)
        saturating_counter(m, self.lost_count, drop)

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


class _EventFIFO(Elaboratable):
    """First-word-fall-through FIFO of ``depth`` words with registered ``w_rdy``.

    The same interface and capacity as :class:`amaranth.lib.fifo.SyncFIFOBuffered` (a memory
    of ``depth - 1`` words and the output register; ``r_data`` is valid while ``r_rdy``), but
    its flags are flip-flops kept up to date from "one from full" / "one from empty"
    comparisons, so ``w_en`` and ``r_en`` reach only a couple of LUTs on their way to the
    counters: a write is accepted whenever fewer than ``depth`` words are held.
    """

    def __init__(self, *, width: int, depth: int):
        self.width, self.depth = width, depth
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.w_rdy = Signal(init=1)
        self.r_data = Signal(width)
        self.r_en = Signal()
        self.r_rdy = Signal()

    def elaborate(self, platform):
        m = Module()
        D = self.depth
        # Memory of a power of two words > depth - 1: pointers wrap by themselves and never
        # meet while a word is being read (so the read needs no collision logic).
        mem_depth = 1 << (D - 1).bit_length()
        m.submodules.storage = storage = Memory(shape=self.width, depth=mem_depth, init=[])
        w_port = storage.write_port()
        do_read = Signal()                  # memory → output register
        r_port, r_data = collision_free_read(m, storage, en=do_read)
        produce = Signal(range(mem_depth))
        consume = Signal(range(mem_depth))
        inner = Signal(range(D))            # words in the memory
        inner_nz = Signal()                 # inner != 0
        total = Signal(range(D + 1))        # inner + r_rdy

        do_write = Signal()
        taken = Signal()                    # output register → consumer
        m.d.comb += [
            do_write.eq(self.w_en & self.w_rdy),
            do_read.eq(inner_nz & (~self.r_rdy | self.r_en)),
            taken.eq(self.r_rdy & self.r_en),
            w_port.addr.eq(produce),
            w_port.data.eq(self.w_data),
            w_port.en.eq(do_write),
            r_port.addr.eq(consume),
            self.r_data.eq(r_data),
        ]
        with m.If(do_write):
            m.d.sync += produce.eq(produce + 1)
        with m.If(do_read):
            m.d.sync += [consume.eq(consume + 1), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)

        with m.If(do_write & ~do_read):
            m.d.sync += [inner.eq(inner + 1), inner_nz.eq(1)]
        with m.If(do_read & ~do_write):
            m.d.sync += [inner.eq(inner - 1), inner_nz.eq(inner != 1)]

        with m.If(do_write & ~taken):
            m.d.sync += [total.eq(total + 1), self.w_rdy.eq(total != D - 1)]
        with m.If(taken & ~do_write):
            m.d.sync += [total.eq(total - 1), self.w_rdy.eq(1)]
        return m

