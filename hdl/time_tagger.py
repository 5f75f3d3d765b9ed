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

from amaranth import Array, Cat, Const, DomainRenamer, Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import check_int, collision_free_read
from mozi.hdl.layouts import LOST_WIDTH, tag_event_layout

__all__ = ["DROP_GRAY_BITS", "MAX_CLOCK_RATIO", "AsyncEventFIFO", "TimeTagger"]

_PHASES = (1, 2, 4, 8)
#: Bits of the Gray-coded drop count that crosses to ``o_domain``: a drop per clock of the
#: tagger at most, read every clock of ``o_domain``, so the tagger's clock may be up to
#: :data:`MAX_CLOCK_RATIO` times faster before the count could wrap between two reads.
DROP_GRAY_BITS = 4
MAX_CLOCK_RATIO = (1 << DROP_GRAY_BITS) - 1


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
    domain : str
        The clock domain that samples :attr:`pins` and runs the pipeline.
    o_domain : str
        The clock domain of :attr:`o`, :attr:`dead_time`, :attr:`lost_count` and :attr:`drop`
        (default: ``domain``). When it differs, the output FIFO is an :class:`AsyncEventFIFO`
        (``fifo_depth`` rounded up to a power of two, plus its output register), ``dead_time`` goes
        through an :class:`~amaranth.lib.cdc.FFSynchronizer`, and drops cross as a Gray-coded
        count: ``domain``'s clock may be up to :data:`MAX_CLOCK_RATIO` times ``o_domain``'s,
        and both domains must be reset together as :class:`AsyncEventFIFO` requires.

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
    drop : Out(drop_width)
        Events dropped, as ``lost_count`` counts them: high for one clock per drop in one
        domain (``drop_width`` 1); across domains, the number counted in this clock of
        ``o_domain`` (``drop_width`` = :data:`DROP_GRAY_BITS`).
    """

    def __init__(self, *, channels: int = 4, phases: int = 1, timestamp_width: int = 48,
                 dead_time_width: int = 16, fifo_depth: int = 256,
                 lost_count_width: int = 32, domain: str = "sync", o_domain: str | None = None):
        self.domain = domain
        self.o_domain = domain if o_domain is None else o_domain
        self.crossing = self.o_domain != self.domain
        self.drop_width = DROP_GRAY_BITS if self.crossing else 1
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
            "drop": Out(self.drop_width),
        })

    def elaborate(self, platform):
        top = Module()
        m = Module()                    # the pipeline, in "sync" until renamed to `domain`
        C, P, pb = self.channels, self.phases, self.phase_bits
        DW = self.dead_time_width
        dead_time = Signal(DW)          # the port, in the pipeline's domain
        if self.crossing:
            top.submodules.dead_time_sync = FFSynchronizer(self.dead_time, dead_time,
                                                           o_domain=self.domain)
        else:
            top.d.comb += dead_time.eq(self.dead_time)

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
                ph_opt[f].eq(Mux(dead_time < P - f, 0, (dead_time[:pb] + f)[:pb])),
                r_opt[f].eq((dead_time + (f - 3 * P)) >> pb),
                zero_opt[f].eq(dead_time < 2 * P - f),
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
        if self.crossing:
            fifo = AsyncEventFIFO(width=self.event_layout.size, depth=self.fifo_depth,
                                  w_domain=self.domain, r_domain=self.o_domain)
        else:
            fifo = DomainRenamer(self.domain)(_EventFIFO(width=self.event_layout.size,
                                                         depth=self.fifo_depth))
        top.submodules.fifo = fifo
        # drops since the last write; the top bit, once set, saturates it (no wide compare)
        pending = Signal(LOST_WIDTH + 1)
        drop = Signal()
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
        top.submodules.pipeline = DomainRenamer(self.domain)(m)

        o = top.d[self.o_domain]
        if self.crossing:
            # a Gray count of the drops (never reset: a reset must not look like drops), read
            # in o_domain, where the difference between two reads is this clock's count
            G = DROP_GRAY_BITS
            binary = Signal(G, reset_less=True)
            gray = Signal(G, reset_less=True)
            with m.If(drop):
                m.d.sync += binary.eq(binary + 1)
            m.d.sync += gray.eq(_gray(binary))
            gray_o = Signal(G)
            top.submodules.drop_sync = FFSynchronizer(gray, gray_o, o_domain=self.o_domain)
            seen = Signal(G, reset_less=True)
            seen_next = Signal(G)
            for k in range(G):                     # Gray → binary: XOR of the higher bits
                top.d.comb += seen_next[k].eq(gray_o[k:].xor())
            o += [seen.eq(seen_next), self.drop.eq(seen_next - seen)]
        else:
            top.d.comb += self.drop.eq(drop)
        # the total counts drops one clock later, from a register (short paths)
        count = Signal(self.lost_count_width + 1)
        with top.If(~count[-1]):
            o += count.eq(count + self.drop)
        top.d.comb += self.lost_count.eq(count[:-1] | count[-1].replicate(self.lost_count_width))

        top.d.comb += [
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        return top


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


def _gray(value):
    """The reflected binary (Gray) code of ``value``: one bit changes per increment."""
    return value ^ (value >> 1)


def _binary(m: Module, domain: str, gray, out) -> None:
    """``out`` ← the binary value of ``gray``, two clocks later: bit k is the XOR of the bits
    k and up, in two registered steps of up to four inputs each (left to synthesis, the XORs
    become a chain as many LUTs deep as the code is wide)."""
    assert len(gray) <= 16
    quads = Signal.like(gray, name=out.name + "_quads")   # XOR of bits k .. k+3
    m.d[domain] += [quads.eq(gray ^ (gray >> 1) ^ (gray >> 2) ^ (gray >> 3)),
                    out.eq(quads ^ (quads >> 4) ^ (quads >> 8) ^ (quads >> 12))]


class AsyncEventFIFO(Elaboratable):
    """:class:`_EventFIFO` across two clock domains: written in ``w_domain``, read in
    ``r_domain``, its flags in flip-flops.

    A memory of ``depth`` words (rounded up to a power of two) and the block RAM's read
    register as the output register: ``depth + 1`` words in all. The pointers cross as Gray
    codes through two-flip-flop synchronisers and are decoded into registers; each side's
    flag is a flip-flop computed from its own pointer and the other's as last seen, so it is
    conservative (a word freed or written is seen a few clocks late) and never wrong. No path
    runs from ``w_en``/``r_en`` through a comparison to a counter: the write side's ``w_rdy``
    is one subtraction and one comparison from registers, ahead by a clock.

    Reset: each side is reset by its own domain's reset, and the two must overlap so that
    neither side leaves reset while the other still shows a pointer from before it: hold the
    read side's reset for at least 8 of its clocks and let the write side's (a synchronised
    copy of the same request) begin within them and last until after they end. The role top
    does so (:class:`mozi.firmware.receiver.Receiver`).
    """

    def __init__(self, *, width: int, depth: int, w_domain: str, r_domain: str):
        self.width = width
        self.mem_depth = 1 << max(1, (depth - 1).bit_length())
        self.depth = self.mem_depth + 1
        self.w_domain, self.r_domain = w_domain, r_domain
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.w_rdy = Signal(init=1)
        self.r_data = Signal(width)
        self.r_en = Signal()
        self.r_rdy = Signal()

    def elaborate(self, platform):
        m = Module()
        w, r = m.d[self.w_domain], m.d[self.r_domain]
        D = self.mem_depth
        bits = D.bit_length()          # one more than the address: full and empty differ
        m.submodules.storage = storage = Memory(shape=self.width, depth=D, init=[])
        w_port = storage.write_port(domain=self.w_domain)
        r_port = storage.read_port(domain=self.r_domain, transparent_for=())

        # write side: produce, its Gray code, and consume as last seen
        produce = Signal(bits)
        produce_gray = Signal(bits)
        consume_gray = Signal(bits)    # (the read side's)
        consume_seen_gray = Signal(bits)
        consume_seen = Signal(bits)
        do_write = Signal()
        used = Signal(bits)            # words in memory as the write side knows it
        m.submodules.consume_sync = FFSynchronizer(consume_gray, consume_seen_gray,
                                                   o_domain=self.w_domain)
        m.d.comb += [
            do_write.eq(self.w_en & self.w_rdy),
            w_port.addr.eq(produce[:-1]), w_port.data.eq(self.w_data), w_port.en.eq(do_write),
            used.eq(produce - consume_seen),
        ]
        _binary(m, self.w_domain, consume_seen_gray, consume_seen)
        w += [produce.eq(produce + do_write), produce_gray.eq(_gray(produce)),
              # room after this clock: used + do_write < D (a conservative used)
              self.w_rdy.eq(Mux(do_write, used < D - 1, used < D))]

        # read side: consume, its Gray code, and produce as last seen
        consume = Signal(bits)
        produce_seen_gray = Signal(bits)
        produce_seen = Signal(bits)
        do_read = Signal()             # memory → output register
        m.submodules.produce_sync = FFSynchronizer(produce_gray, produce_seen_gray,
                                                   o_domain=self.r_domain)
        m.d.comb += [
            do_read.eq((produce_seen != consume) & (~self.r_rdy | self.r_en)),
            r_port.addr.eq(consume[:-1]), r_port.en.eq(do_read),
            self.r_data.eq(r_port.data),
        ]
        _binary(m, self.r_domain, produce_seen_gray, produce_seen)
        r += [consume.eq(consume + do_read), consume_gray.eq(_gray(consume))]
        with m.If(do_read):
            r += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            r += self.r_rdy.eq(0)
        return m
