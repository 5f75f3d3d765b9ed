"""Slot assigner: tagger events → accepted detections with their slot index.

Bit-exact with :func:`mozi.sim.model.assign_slots` followed by
:func:`mozi.sim.model.merge_slot_events`. For each event::

    phase = timestamp * 2**frac_bits - offset
    phase < 0                     → rejected
    slot  = (phase // period) mod 2**slot_width,  residue = phase mod period
    window_start <= residue < window_end → accepted, else rejected

Rejected events are counted in :attr:`SlotAssigner.rejected_count`. Accepted events of the same
slot that follow each other are OR-merged: the core holds the latest accepted event until one of
another slot is accepted (then the held one is emitted) or :attr:`SlotAssigner.flush` is
strobed. The in-band ``lost`` count of every input event, accepted or rejected, is carried
forward (summed, saturating) onto the next event the core emits, so no loss is hidden.

Architecture (built for area: the receiver top must fit an iCE40UP5K)
--------------------------------------------------------------------
The event stays on :attr:`~SlotAssigner.i` while it is processed: the core reads the
timestamp, mask and lost count from the input payload and completes the handshake when it is
done, so it keeps no copy of the event. Nor does it keep copies of its registers: it reads
``period``, ``offset`` and the window while :attr:`~SlotAssigner.config_busy` is high, and
the register block must not change them then (the receiver top holds such a write back).

All the wide arithmetic goes through one subtractor :data:`CHUNK` bits wide, one chunk per
clock, over registers that rotate by a chunk: ``x = timestamp * 2**frac_bits - start``, ``x =
phase`` and the next ``start = timestamp * 2**frac_bits - residue``. The core keeps the absolute
start of the slot of the last event it divided, ``start = offset + q_prev * period``, with
``q_prev``. When that base is valid (no :attr:`~SlotAssigner.rebase` since, no rejection before
the division) and ``x = timestamp * 2**frac_bits - start >= 0`` (the normal case: timestamps
are monotonic), it divides that ``x`` and adds the quotient to ``q_prev``; otherwise it divides
``x = phase`` from scratch. The divider is restoring and MSB-first, one dividend bit per
clock on a ``period_width + 1``-bit remainder; leading all-zero chunks of ``x`` are skipped a
chunk per clock. Its subtractor also performs the two window comparisons. The slot is
``q_prev + quotient``, summed a chunk per clock.

Clocks per event (handshake to handshake, input waiting, output ready), see
:meth:`SlotAssigner.event_cycles`: ``base_cycles - (CHUNK - 1) * s`` for a division with
``s`` skipped chunks (the dividend has ``dividend_width - CHUNK * s`` significant bits or
fewer), plus ``chunks + 2`` when the base cannot be used, 1 when the event becomes the held
one and 2 when it displaces it; ``reject_cycles`` for an event before slot 0 or with period
0. For the receiver's widths (48-bit timestamps and slots, 16 fractional bits): about 54 clocks
for an event a few thousand ticks after the previous one.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import check_int
from mozi.hdl.layouts import LOST_WIDTH, slot_event_layout, tag_event_layout

__all__ = ["CHUNK", "SlotAssigner"]

_LOST_MAX = (1 << LOST_WIDTH) - 1

#: Widest chunk of the chunked arithmetic, in bits (one carry chain per clock; 48 MHz on an
#: iCE40UP5K).
CHUNK = 17


def _sat_lost(total):
    """Saturate a sum of ``lost`` counts to :data:`LOST_WIDTH` bits."""
    return Mux(total > _LOST_MAX, _LOST_MAX, total[:LOST_WIDTH])


def _ge_sub(v, bn):
    """``(v >= b, (v - b) mod 2**(len(v) - 1))`` given ``bn = ~b`` (equal widths), carry
    select: the high half is computed for both carries from the low half, in parallel with
    it, so the longest carry chain is half the width."""
    w = len(v)
    h = (w + 1) // 2
    one = Const(1, 1)
    low = (Cat(one, v[:h]) + Cat(one, bn[:h]))[1:]          # v_lo + ~b_lo + 1
    high0 = v[h:].as_unsigned() + bn[h:]                     # no carry from below
    high1 = (Cat(one, v[h:]) + Cat(one, bn[h:]))[1:]         # a carry from below
    high = Mux(low[h], high1, high0)
    return high[w - h], Cat(low[:h], high[:w - h])[:w - 1]


def _chunk_of(value, index, chunks: int, width: int):
    """Chunk ``index`` (a signal) of ``value`` zero- or sign-extended to ``chunks * width``."""
    ext = chunks * width - len(value)
    if value.shape().signed:
        full = Cat(value, value[-1].replicate(ext)) if ext else value.as_unsigned()
    else:
        full = Cat(value, Const(0, ext)) if ext else value
    return full.word_select(index, width)


class SlotAssigner(wiring.Component):
    """Timestamp → slot index with a runtime-programmable fixed-point period and window.

    Parameters
    ----------
    timestamp_width : int
        Width of the input timestamps (ticks).
    slot_width : int
        Width of the output slot index (wraps modulo ``2**slot_width``).
    frac_bits : int
        Fractional bits of ``period``, ``offset``, ``window_start`` and ``window_end``.
    channels : int
        Detector channels (width of ``mask``).
    period_width : int
        Width of ``period``, ``window_start`` and ``window_end``.
    rejected_width : int
        Width of the :attr:`rejected_count` total.

    Attributes
    ----------
    i : In(stream.Signature(tag_event_layout(timestamp_width, channels)))
        Tagger events (``timestamp``, ``mask``, ``lost``), in time order. An event is read
        from the payload while it is processed; the handshake ends its processing.
    o : Out(stream.Signature(slot_event_layout(slot_width, channels)))
        Accepted detections (``slot``, OR-merged ``mask``, summed saturating ``lost``).
    period : In(period_width)
        Slot period in ``2**-frac_bits`` ticks. 0 rejects every event.
    offset : In(signed(timestamp_width + frac_bits + 1))
        Start of slot 0 in ``2**-frac_bits`` ticks (two's complement).
    window_start, window_end : In(period_width)
        Acceptance window relative to the start of each slot, ``window_start <= residue <
        window_end`` (valid settings satisfy ``0 <= window_start < window_end <= period``;
        other settings are compared literally, so an empty window rejects everything).
    rebase : In(1)
        Strobe with every change of ``period`` or ``offset``: the next event is divided from
        scratch.
    config_busy : Out(1)
        The core is reading ``period``, ``offset`` and the window: they must not change.
    flush : In(1)
        Strobe: emit the held event once the event being processed, if any, is done. An event
        whose processing has not started (its first clock on ``i`` coincides with the strobe,
        or the core was busy) comes after the flush; same-slot events on either side of a
        flush are not merged.
    idle : Out(1)
        No event in processing and no flush pending.
    rejected_count : Out(rejected_width)
        Events dropped as out of window or before slot 0 since reset (saturating).
    reject : Out(1)
        High for one clock per rejected event, as ``rejected_count`` counts it (for a counter
        kept elsewhere).
    """

    def __init__(self, *, timestamp_width: int = 48, slot_width: int = 48, frac_bits: int = 16,
                 channels: int = 4, period_width: int = 24, rejected_width: int = 32):
        self.timestamp_width = check_int("timestamp_width", timestamp_width, 1)
        self.slot_width = check_int("slot_width", slot_width, 1)
        self.frac_bits = check_int("frac_bits", frac_bits, 0)
        self.channels = check_int("channels", channels, 1)
        self.period_width = check_int("period_width", period_width, 1)
        self.rejected_width = check_int("rejected_width", rejected_width, 1)
        self.offset_width = timestamp_width + frac_bits + 1
        # signed width holding timestamp * 2**F - offset (or - start) exactly
        w_phase = timestamp_width + frac_bits + 2
        #: Chunks of the phase-wide registers, and their width.
        self.chunks = -(-w_phase // CHUNK)
        self.chunk = -(-w_phase // self.chunks)
        #: Width of the divider's dividend register (a whole number of chunks).
        self.dividend_width = self.chunks * self.chunk
        self.slot_chunks = -(-slot_width // self.chunk)
        self._post = max(self.chunks + 1, self.slot_chunks, 3)
        #: Clocks of an event divided with no chunk skipped, from the base, kept in its slot.
        self.base_cycles = 7 + self.chunks + self.dividend_width + self._post
        #: Clocks of an event rejected before the division (``phase < 0`` or period 0).
        self.reject_cycles = 6 + 2 * self.chunks
        super().__init__({
            "i": In(stream.Signature(tag_event_layout(timestamp_width, channels))),
            "o": Out(stream.Signature(slot_event_layout(slot_width, channels))),
            "period": In(period_width),
            "offset": In(signed(self.offset_width)),
            "window_start": In(period_width),
            "window_end": In(period_width),
            "rebase": In(1),
            "config_busy": Out(1),
            "flush": In(1),
            "idle": Out(1),
            "rejected_count": Out(rejected_width),
            "reject": Out(1),
        })

    def event_cycles(self, x: int | None, *, from_base: bool, load: int = 0) -> int:
        """Clocks the core takes for one event, handshake to handshake, with the event
        waiting on ``i`` and the output ready.

        ``x`` is the dividend (``None``: rejected before the division); ``from_base`` whether
        it came from the base; ``load`` 0 for an event rejected by the window or merged into
        the held one, 1 for one that becomes the held event, 2 for one that displaces it.
        """
        if x is None:
            return self.reject_cycles
        skipped = 0
        while skipped < self.chunks and \
                x >> (self.dividend_width - self.chunk * (skipped + 1)) == 0:
            skipped += 1
        return (self.base_cycles - (self.chunk - 1) * skipped + load
                + (0 if from_base else self.chunks + 2))

    def elaborate(self, platform):
        m = Module()
        F, S, PW = self.frac_bits, self.slot_width, self.period_width
        n, C, N = self.chunks, self.chunk, self.dividend_width
        ns = self.slot_chunks
        ev = self.i.payload

        # --- state ----------------------------------------------------------------------------
        base_valid = Signal()
        start = Signal(N)           # absolute start of the last divided event's slot (signed)
        q_prev = Signal(ns * C)     # its slot (low slot_width bits meaningful)
        x = Signal(N)               # the dividend; the quotient as the divider runs
        r = Signal(PW)              # the divider's remainder; the residue afterwards
        bits = Signal(range(N + 1))  # dividend bits still to bring down
        bits_zero = Signal()        # bits == 0, and bits == 1: registered with bits
        bits_one = Signal()
        j = Signal(range(max(n + 1, self._post) + 1))   # chunk index
        borrow = Signal()
        carry = Signal()
        held_valid = Signal()
        held = Signal(self.o.payload.shape())
        lost_acc = Signal(LOST_WIDTH)
        lost_new, lost_merged = Signal(LOST_WIDTH), Signal(LOST_WIDTH)
        flush_pending = Signal()
        m.d.comb += self.o.payload.eq(held)

        # --- the chunk subtractor: timestamp * 2**F - b, chunk j - 1, from operands loaded
        # (selected by registers only) on the clock before; b is start, offset or residue
        ts_f = Cat(Const(0, F), ev.timestamp)
        sub_src = Signal(2)         # 0: start (rotating), 1: offset, 2: residue
        sub_a, sub_b = Signal(C), Signal(C)
        m.d.sync += [
            sub_a.eq(_chunk_of(ts_f, j, n, C)),
            sub_b.eq(Mux(sub_src == 0, start[:C],
                         Mux(sub_src == 1, _chunk_of(self.offset, j, n, C),
                             _chunk_of(r, j, n, C)))),
        ]
        sub_out = Signal(C + 1)
        m.d.comb += sub_out.eq(sub_a - sub_b - borrow)
        sub_d, sub_borrow = sub_out[:C], sub_out[C]
        loading = Signal()          # j < n: the operands of chunk j are loaded this clock
        writing = Signal()          # j > 0: chunk j - 1 is written this clock
        m.d.comb += [loading.eq(j < n), writing.eq(j != 0)]

        # --- the divider's step, also the window comparisons: v >= b -----------------------
        b_n = Signal(PW + 1)        # ~b, registered: one bare carry chain
        # the dividend bit brought down (x's top bit; 0 when comparing), in a register of its
        # own so that the carry chain starts at flip-flops
        step_in = Signal()
        v = Signal(PW + 1)
        m.d.comb += v.eq(Cat(step_in, r))
        fits, diff = _ge_sub(v, b_n)
        period_zero = Signal()
        m.d.sync += period_zero.eq(self.period == 0)

        # --- slot sum: q_prev + quotient, a chunk per clock ------------------------------------
        add_out = Signal(C + 1)
        m.d.comb += add_out.eq(q_prev[:C] + x[:C] + carry)

        # --- lost bookkeeping (the payload and held are stable while they are used) --------
        m.d.sync += [lost_new.eq(_sat_lost(ev.lost + lost_acc)),
                     lost_merged.eq(_sat_lost(held.lost + lost_new))]

        # --- output: the held event is offered as it is; o.ready only clears o.valid ------
        out_free = Signal()
        m.d.comb += out_free.eq(~self.o.valid)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # --- rejected_count: two halves, the carry and the saturation precomputed ---------
        rej_max = (1 << self.rejected_width) - 1
        rej_full = Signal()
        rw_lo = (self.rejected_width + 1) // 2
        rej_lo = self.rejected_count[:rw_lo]
        rej_hi = self.rejected_count[rw_lo:]
        rej_lo_full = Signal()
        m.d.sync += [rej_full.eq(self.rejected_count == rej_max),
                     rej_lo_full.eq(rej_lo == (1 << rw_lo) - 1)]
        rej_pulse = self.reject     # counted one clock after the decision (short paths)
        m.d.sync += rej_pulse.eq(0)
        with m.If(rej_pulse & ~rej_full):
            m.d.sync += rej_lo.eq(rej_lo + 1)
            if len(rej_hi):
                with m.If(rej_lo_full):
                    m.d.sync += rej_hi.eq(rej_hi + 1)

        def reject():
            m.d.sync += [rej_pulse.eq(1), lost_acc.eq(lost_new)]

        slot = q_prev[:S]
        same_slot = Signal()        # held_valid and held.slot == slot, registered in COMPARE
        accept = Signal()           # in the window, registered in COMPARE
        ge_ws, ge_we = Signal(), Signal()
        # which chunks of the finished dividend are zero, registered; shifted with it in SKIP
        chunk_zero = Cat(x[i * C:(i + 1) * C] == 0 for i in range(n))
        zero_chunks = Signal(n)

        # b_n: ~period for the divider by default; ~(2 * window_start), ~(2 * window_end)
        # for the comparisons of 2 * residue in POST
        b_sel = Signal(2)
        m.d.sync += b_n.eq(Mux(b_sel == 1, Cat(Const(1, 1), ~self.window_start),
                               Mux(b_sel == 2, Cat(Const(1, 1), ~self.window_end),
                                   Cat(~self.period, Const(1, 1)))))

        def subtract_into_x(then: str):
            """x = ts_f - (the operand sub_src selects), a chunk per clock, then ``then``."""
            m.d.comb += self.config_busy.eq(1)
            m.d.sync += j.eq(j + 1)
            with m.If(writing):
                m.d.sync += [x.eq(Cat(x[C:], sub_d)), borrow.eq(sub_borrow)]
            with m.If(j == n):
                m.next = then

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(flush_pending):
                    with m.If(~held_valid):
                        m.d.sync += flush_pending.eq(0)
                    with m.Elif(out_free):
                        m.d.sync += [self.o.valid.eq(1), held_valid.eq(0),
                                     flush_pending.eq(0)]
                with m.Elif(self.i.valid & ~self.flush):
                    m.d.sync += [j.eq(0), borrow.eq(0), sub_src.eq(0)]
                    m.next = "SUB_BASE"
            # x = ts_f - start (start rotates a chunk per load, back in place after n)
            with m.State("SUB_BASE"):
                subtract_into_x("CHECK_BASE")
                with m.If(loading):
                    m.d.sync += start.eq(Cat(start[C:], start[:C]))
            with m.State("CHECK_BASE"):
                m.d.comb += self.config_busy.eq(1)
                m.d.sync += [j.eq(0), borrow.eq(0), sub_src.eq(1), r.eq(0), bits.eq(N),
                             bits_zero.eq(N == 0), bits_one.eq(N == 1),
                             zero_chunks.eq(chunk_zero)]
                with m.If(base_valid & ~x[N - 1]):
                    m.next = "SKIP"
                with m.Else():
                    m.next = "SUB_OFFSET"
            # x = ts_f - offset: the phase
            with m.State("SUB_OFFSET"):
                subtract_into_x("CHECK_OFFSET")
            with m.State("CHECK_OFFSET"):
                m.d.comb += self.config_busy.eq(1)
                m.d.sync += [q_prev.eq(0), zero_chunks.eq(chunk_zero)]
                with m.If(x[N - 1] | period_zero):         # phase < 0, or no period
                    reject()
                    m.d.sync += base_valid.eq(0)
                    m.next = "FINISH"
                with m.Else():
                    m.next = "SKIP"
            # leading all-zero chunks of the dividend: their quotient bits are 0
            with m.State("SKIP"):
                m.d.comb += self.config_busy.eq(1)
                with m.If(bits_zero):
                    m.d.sync += [j.eq(0), carry.eq(0), borrow.eq(0), b_sel.eq(1),
                                 sub_src.eq(2)]
                    m.next = "POST"
                with m.Elif(zero_chunks[-1]):
                    m.d.sync += [x.eq(x << C), bits.eq(bits - C), bits_zero.eq(bits == C),
                                 bits_one.eq(bits == C + 1),
                                 zero_chunks.eq(zero_chunks << 1)]
                with m.Else():
                    m.d.sync += step_in.eq(x[N - 1])
                    m.next = "STEP"
            # restoring division: bring down x's top bit, subtract the period if it fits
            with m.State("STEP"):
                m.d.comb += self.config_busy.eq(1)
                m.d.sync += [r.eq(Mux(fits, diff, v[:PW])), x.eq(Cat(fits, x[:N - 1])),
                             bits.eq(bits - 1), bits_one.eq(bits == 2),
                             step_in.eq(x[N - 2] if N > 1 else 0)]
                with m.If(bits_one):
                    m.d.sync += [j.eq(0), carry.eq(0), borrow.eq(0), b_sel.eq(1),
                                 sub_src.eq(2), step_in.eq(0)]
                    m.next = "POST"
            # slot = q_prev + quotient; start = ts_f - residue; the window comparisons
            with m.State("POST"):
                m.d.comb += self.config_busy.eq(1)
                m.d.sync += j.eq(j + 1)
                with m.If(writing & (j <= n)):
                    m.d.sync += [start.eq(Cat(start[C:], sub_d)), borrow.eq(sub_borrow)]
                with m.If(j < ns):
                    m.d.sync += [q_prev.eq(Cat(q_prev[C:], add_out[:C])),
                                 x.eq(x >> C), carry.eq(add_out[C])]
                with m.If(j == 0):
                    m.d.sync += b_sel.eq(2)
                with m.If(j == 1):
                    m.d.sync += [ge_ws.eq(fits), b_sel.eq(0)]
                with m.If(j == 2):
                    m.d.sync += ge_we.eq(fits)
                with m.If(j == self._post - 1):
                    m.next = "COMPARE"
            with m.State("COMPARE"):
                m.d.sync += [same_slot.eq(held_valid & (held.slot == slot)),
                             accept.eq(ge_ws & ~ge_we)]
                m.next = "DECIDE"
            # the new base, then reject, merge into the held event, or replace it
            with m.State("DECIDE"):
                m.d.sync += base_valid.eq(1)
                with m.If(~accept):
                    reject()
                    m.next = "FINISH"
                with m.Elif(out_free):
                    with m.If(same_slot):
                        m.d.sync += [held.mask.eq(held.mask | ev.mask),
                                     held.lost.eq(lost_merged), lost_acc.eq(0)]
                        m.next = "FINISH"
                    with m.Elif(held_valid):           # a new slot pushes the held one out
                        m.d.sync += [self.o.valid.eq(1), held_valid.eq(0)]
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(out_free):
                    m.d.sync += [held_valid.eq(1), held.slot.eq(slot), held.mask.eq(ev.mask),
                                 held.lost.eq(lost_new), lost_acc.eq(0)]
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.i.ready.eq(1)
                m.next = "IDLE"
        m.d.comb += self.idle.eq(fsm.ongoing("IDLE") & ~flush_pending)

        with m.If(self.flush):
            m.d.sync += flush_pending.eq(1)
        with m.If(self.rebase):     # after DECIDE's update: a change of base always wins
            m.d.sync += base_valid.eq(0)
        return m
