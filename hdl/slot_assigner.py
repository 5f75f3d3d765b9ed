"""Slot assigner: tagger events → accepted detections with their slot index.

Bit-exact with :func:`mozi.sim.model.assign_slots` followed by
:func:`mozi.sim.model.merge_slot_events`. For each event, with the register values present on
the clock the event is accepted on :attr:`SlotAssigner.i`::

    phase = timestamp * 2**frac_bits - offset
    phase < 0                     → rejected
    slot  = (phase // period) mod 2**slot_width,  residue = phase mod period
    window_start <= residue < window_end → accepted, else rejected

Rejected events are counted in :attr:`SlotAssigner.rejected_count`. Accepted events of the same
slot that follow each other are OR-merged: the core holds the latest accepted event until one of
another slot is accepted (then the held one is emitted) or :attr:`SlotAssigner.flush` is
strobed. The in-band ``lost`` count of every input event, accepted or rejected, is carried
forward (summed, saturating) onto the next event the core emits, so no loss is hidden.

Division
--------
The quotient is computed exactly by a sequential restoring divider whose datapath is only
``period_width + 2`` bits wide, and which only divides the *new* part of the phase. The core
keeps the absolute start of the slot of the last event it divided, ``start = offset + q_prev *
period`` (in ``2**-frac_bits`` ticks), with ``q_prev``. When the next event has the same
``period`` and ``offset`` and ``timestamp * 2**frac_bits >= start`` (the normal case:
timestamps are monotonic), it divides ``x = timestamp * 2**frac_bits - start`` and adds the
quotient to ``q_prev``; otherwise it divides ``x = phase`` from scratch. The divider shifts
``x`` right until it is below ``period`` (``k`` shifts, ``k`` = bit length of the quotient),
then brings the ``k`` bits back in, one restoring step per two clocks (trial subtraction, then
select). Timing per event, from its handshake on ``i`` to the next handshake (output not
stalled), available as :attr:`SlotAssigner.base_cycles` and :attr:`SlotAssigner.reject_cycles`:

* ``base_cycles + 3 k`` clocks with ``k = bit_length(x // period)`` — ``16 + 3 k`` for the
  receiver's widths (48-bit timestamps and slots, 16 fractional bits): 16 clocks for an event
  in the slot of the previous one, about ``16 + 3 log2(gap / period)`` for a gap between
  detections, at most ``16 + 3 * 65`` for the first event or after a register change;
* ``reject_cycles`` (8) for an event before slot 0 (``phase < 0``) or with ``period = 0``.

Exact for arbitrary gaps; wrap-around of the timestamp simply takes the from-scratch path.
The schedule is built for the iCE40UP5K at 48 MHz: every carry chain is at most :data:`CHAIN`
bits and ends in a register of its own, wide subtractions and the slot sum are computed in
chunks over several clocks (registered borrows), wide comparisons are computed over two clocks
from registered chunk flags (the divider's "t >= period" speculatively, on the value t will
have two clocks later), the restoring step uses a carry-select subtractor on a registered
``~period``, and the controller is one-hot with every decision one LUT over flip-flops. The
output register counts as free only once ``o.valid`` is low, so the consumer's ``ready``
reaches nothing but ``o.valid``.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import check_int
from mozi.hdl.layouts import LOST_WIDTH, slot_event_layout, tag_event_layout

__all__ = ["SlotAssigner"]

_LOST_MAX = (1 << LOST_WIDTH) - 1


#: Longest carry chain the core builds, in bits (48 MHz on an iCE40UP5K needs short chains:
#: routing in and out of a chain costs as much as a dozen carry steps).
CHAIN = 16
#: Comparisons wider than this are split in two halves compared in parallel.
COMPARE = 12


def _ge_stage1(v, pn):
    """First half of ``v >= p``, given ``pn = ~p`` (``v`` at least as wide): four flags.

    ``(v[w:] != 0, high half of v[:w] > p's, high halves equal, low half of v[:w] >= p's)``
    with ``w = len(pn)``; :func:`_ge_stage2` combines them. The comparisons are carry-outs
    of ``v + ~p`` (+ 1), so with ``~p`` in a register each is one bare carry chain.
    """
    w = len(pn)
    hz = v[w:].any() if len(v) > w else Const(0)
    if w <= COMPARE:
        return Cat(hz, _carry_out(v[:w], pn, 1), Const(0), Const(0))
    h = w // 2
    return Cat(hz, _carry_out(v[h:w], pn[h:], 0), v[h:w] == ~pn[h:],
               _carry_out(v[:h], pn[:h], 1))


def _carry_out(a, b, cin: int):
    """The carry out of ``a + b + cin`` (equal widths): ``a > ~b`` or, with ``cin``,
    ``a >= ~b``."""
    w = len(a)
    if cin:
        return (Cat(Const(1, 1), a) + Cat(Const(1, 1), b))[w + 1]
    return (a.as_unsigned() + b.as_unsigned())[w]


def _ge_stage2(g):
    """``v >= p`` from the registered flags of :func:`_ge_stage1`."""
    return g[0] | g[1] | (g[2] & g[3])


def _ge_pipelined(m: Module, a, b, *, name: str):
    """``a >= b`` (unsigned, equal widths), registered twice: valid two clocks after ``a``
    and ``b`` settle. The first register holds ``>`` and ``==`` of chunks of at most 8 bits,
    the second their combination."""
    w = len(a)
    n = -(-w // 8)
    step = -(-w // n)
    gts, eqs = [], []
    for i in range(n):
        lo_b, hi_b = i * step, min(w, (i + 1) * step)
        gt, eq = Signal(name=f"{name}_gt{i}"), Signal(name=f"{name}_eq{i}")
        m.d.sync += [gt.eq(a[lo_b:hi_b] > b[lo_b:hi_b]), eq.eq(a[lo_b:hi_b] == b[lo_b:hi_b])]
        gts.append(gt)
        eqs.append(eq)
    ge = Signal(name=name)
    acc = 1                                 # the empty low part: equal, so ">="
    for gt, eq in zip(gts, eqs, strict=True):
        acc = gt | (eq & acc)
    m.d.sync += ge.eq(acc)
    return ge


def _chunks(a, b, size: int = 8):
    """Pairs of corresponding slices of ``a`` and ``b`` (equal widths), ``size`` bits each."""
    return [(a.as_unsigned()[i:i + size], b.as_unsigned()[i:i + size])
            for i in range(0, len(a), size)]


def _all_pipelined(m: Module, flags, *, name: str):
    """AND of ``flags``, registered twice: the flags, then their AND."""
    flags_r = Signal(len(flags), name=f"{name}_parts")
    result = Signal(name=name)
    m.d.sync += [flags_r.eq(flags), result.eq(flags_r.all())]
    return result


def _sub_select(a, bn):
    """``a - b`` given ``bn = ~b`` (equal widths; one extra borrow bit on top), carry select.

    The high half is computed for both possible borrows in parallel with the low half, so
    the longest carry chain is half the width; ``a - b = a + ~b + 1``, and with ``~b`` from
    a register every chain is a bare adder.
    """
    w = len(a)
    h = w // 2
    one = Const(1, 1)
    low = (Cat(one, a[:h]) + Cat(one, bn[:h]))[1:]          # carry on top: no borrow
    high0 = (Cat(one, a[h:]) + Cat(one, bn[h:]))[1:]        # a - b, no borrow from below
    high1 = a[h:].as_unsigned() + bn[h:]                     # a - b - 1
    high = Mux(low[h], high0, high1)
    return Cat(low[:h], high[:w - h], ~high[w - h])


def _chunked(m: Module, a, b, width: int, *, sub: bool, name: str):
    """``a - b`` (or ``a + b``) mod ``2**width`` in chunks of at most :data:`CHAIN` bits.

    Chunk ``i`` is a register written on every clock from chunk ``i - 1``'s registered
    carry, so the result is valid ``n`` clocks after ``a`` and ``b`` settle. Returns
    ``(result, n)``.
    """
    n = -(-width // CHAIN)
    step = -(-width // n)
    a, b = a.as_unsigned(), b.as_unsigned()
    parts, carry = [], None
    for i in range(n):
        lo_b, hi_b = i * step, min(width, (i + 1) * step)
        w = hi_b - lo_b
        part = Signal(w, name=f"{name}{i}")
        total = (a[lo_b:hi_b] - b[lo_b:hi_b]) if sub else (a[lo_b:hi_b] + b[lo_b:hi_b])
        if carry is not None:
            total = (total - carry) if sub else (total + carry)
        m.d.sync += part.eq(total[:w])
        if i + 1 < n:
            nxt = Signal(name=f"{name}{i}_carry")
            m.d.sync += nxt.eq(total[w])        # borrow (sub) or carry (add)
            carry = nxt
        parts.append(part)
    return Cat(*parts), n


def _sat_lost(total):
    """Saturate a sum of ``lost`` counts to :data:`LOST_WIDTH` bits."""
    return Mux(total > _LOST_MAX, _LOST_MAX, total[:LOST_WIDTH])


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
        Tagger events (``timestamp``, ``mask``, ``lost``), in time order.
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
    flush : In(1)
        Strobe: emit the held event once every event accepted on ``i`` up to and including
        this clock has been processed (events of the same slot on either side of a flush are
        not merged). While a flush is pending ``i.ready`` is low.
    rejected_count : Out(rejected_width)
        Events dropped as out of window or before slot 0 since reset (saturating).

    Notes
    -----
    Registers are sampled when an event is accepted on ``i``, so the host may reprogram them
    at any time; each event uses one consistent set. Throughput: ``base_cycles + 3 k`` clocks
    per event (see the module docstring).
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
        w_phase = timestamp_width + frac_bits + 2
        self._n_sub = max(-(-w_phase // CHAIN), 3) + 1
        self._n_sum = max(-(-w_phase // CHAIN), -(-slot_width // CHAIN) + 2, 3)
        #: Clocks per event with a quotient of bit length ``k``: ``base_cycles + 3 * k``.
        self.base_cycles = 5 + self._n_sub + self._n_sum
        #: Clocks per event rejected before the division (``phase < 0`` or ``period = 0``).
        self.reject_cycles = 2 + self._n_sub
        super().__init__({
            "i": In(stream.Signature(tag_event_layout(timestamp_width, channels))),
            "o": Out(stream.Signature(slot_event_layout(slot_width, channels))),
            "period": In(period_width),
            "offset": In(signed(self.offset_width)),
            "window_start": In(period_width),
            "window_end": In(period_width),
            "flush": In(1),
            "rejected_count": Out(rejected_width),
        })

    def elaborate(self, platform):
        m = Module()
        F, S, PW = self.frac_bits, self.slot_width, self.period_width
        # signed width holding timestamp * 2**F - offset, and - start, exactly
        W = self.timestamp_width + F + 2
        X = W - 1                   # width of a non-negative dividend

        # Timing discipline (iCE40): every carry chain ends in a register of its own, written
        # on every clock (no multiplexer after the chain); the FSM only copies registers.

        # --- the event being processed (latched on the input handshake) ---------------------
        ts_f = Signal(W)            # timestamp * 2**F, zero-extended
        ev_mask = Signal(self.channels)
        ev_lost = Signal(LOST_WIDTH)
        period_l = Signal(PW)
        offset_l = Signal(signed(self.offset_width))
        ws_l = Signal(PW)
        we_l = Signal(PW)

        # --- the base of the incremental division -------------------------------------------
        base_valid = Signal()
        start = Signal(signed(W))   # absolute start of the last divided event's slot
        q_prev = Signal(S)
        period_b = Signal(PW)
        offset_b = Signal(signed(self.offset_width))

        # --- chunked subtractions xa = ts_f - start, xb = ts_f - offset, and checks --------
        offset_w = Signal(W)
        m.d.comb += offset_w.eq(offset_l)           # sign-extended to W bits
        xa, n_sub = _chunked(m, ts_f, start, W, sub=True, name="xa")
        xb, _ = _chunked(m, ts_f, offset_w, W, sub=True, name="xb")
        # same period and offset as the base, and period != 0: chunk flags, then their AND
        # (registered twice); fast_ok one clock later
        same_period = _all_pipelined(m, Cat(a == b for a, b in _chunks(period_l, period_b)),
                                     name="same_period")
        same_offset = _all_pipelined(m, Cat(a == b for a, b in _chunks(offset_l, offset_b)),
                                     name="same_offset")
        period_nz = ~_all_pipelined(m, Cat(a == 0 for a, _ in _chunks(period_l, period_l)),
                                    name="period_zero")
        fast_ok = Signal()
        m.d.sync += fast_ok.eq(base_valid & same_period & same_offset)
        use_a_v, use_b_v = fast_ok & ~xa[-1], period_nz & ~xb[-1]
        ld_a, ld_b = Signal(), Signal()            # SELECT's decision, registered
        n_sub = max(n_sub, 3) + 1   # fast_ok takes three clocks, the decision one more
        assert n_sub == self._n_sub

        # --- divider -------------------------------------------------------------------------
        t = Signal(X)               # the dividend shifted right; then the partial remainder
        lo = Signal(X)              # bits shifted out of t, the next one to bring back on top
        q = Signal(S)
        qb = Signal(S)
        k = Signal(range(X + 1))
        k_zero = Signal()
        # The controller is one-hot, one flip-flop per state (see below).
        s_idle = Signal(init=1)
        s_sub, s_select, s_cond, s_shift, s_trial, s_restore, s_sum, s_done = (
            Signal(name=f"s_{n}") for n in (
                "sub", "select", "cond", "shift", "trial", "restore", "sum", "done"))

        # "t >= period" for the t of the current clock decides SHIFT (do_shift below). It is
        # computed over two clocks (_ge_stage1, registered; then cond_next = _ge_stage2,
        # registered within do_shift) on the value t will have by then: in SELECT on both
        # candidate dividends xa and xb, in COND on t >> 1 and in SHIFT on t >> 2 (correct
        # whenever SHIFT goes on shifting; when it stops, the result is not used again).
        t1 = t >> 1
        period_n = Signal(PW)       # ~period, registered (valid from the second SUB clock)
        m.d.sync += period_n.eq(~period_l)
        g_a, g_b, g_t1, g_t2 = (Signal(4, name=n)
                                for n in ("cond_a", "cond_b", "cond_t1", "cond_t2"))
        from_a = Signal()           # in COND: t was loaded from xa
        m.d.sync += [
            g_a.eq(_ge_stage1(xa[:X], period_n)),
            g_b.eq(_ge_stage1(xb[:X], period_n)),
            g_t1.eq(_ge_stage1(t1, period_n)),
            g_t2.eq(_ge_stage1(t >> 2, period_n)),
            from_a.eq(ld_a),
        ]
        cond_next = Signal()
        m.d.comb += cond_next.eq(Mux(s_cond, Mux(from_a, _ge_stage2(g_a), _ge_stage2(g_b)),
                                     Mux(k_zero, _ge_stage2(g_t1), _ge_stage2(g_t2))))
        r2 = Cat(lo[-1], t[:PW])                    # partial remainder * 2 + next bit
        trial = Signal(PW + 2)                      # r2 - period, top bit = borrow
        m.d.sync += trial.eq(_sub_select(r2, Cat(period_n, 1)))

        # --- slot, window and next base, registered ------------------------------------------
        residue = t[:PW]
        residue_w = Signal(W)
        m.d.comb += residue_w.eq(residue)
        slot, n_slot = _chunked(m, qb, q, S, sub=False, name="slot")
        new_start, n_new = _chunked(m, ts_f, residue_w, W, sub=True, name="start_new")
        # the window check in two registered steps (t is stable during SUM)
        win_ge = _ge_pipelined(m, residue, ws_l, name="win_ge")
        win_lt = ~_ge_pipelined(m, residue, we_l, name="win_lt")
        n_sum = max(n_new, n_slot + 2, 3)  # + 2: the slot comparison and the decision below;
        #                                   3: the window check and the decision
        assert n_sum == self._n_sum

        # --- merge stage and output ----------------------------------------------------------
        held_valid = Signal()
        held = Signal(self.o.payload.shape())
        lost_acc = Signal(LOST_WIDTH)
        lost_new, lost_merged = Signal(LOST_WIDTH), Signal(LOST_WIDTH)
        # held.slot == slot as registered 8-bit chunk flags, combined in the decisions
        slot_pairs = _chunks(held.slot, slot)
        slot_eq = Signal(len(slot_pairs))
        same_slot = slot_eq.all()
        accept, merge, displace, fresh, stall = (Signal(name=n) for n in (
            "accept", "merge", "displace", "fresh", "stall"))
        m.d.sync += [
            lost_new.eq(_sat_lost(ev_lost + lost_acc)),
            lost_merged.eq(_sat_lost(held.lost + lost_new)),
            slot_eq.eq(Cat(a == b for a, b in slot_pairs)),
            # DONE's decisions, from registers only (stall: may have to wait for the output)
            accept.eq(win_ge & win_lt),
            merge.eq(win_ge & win_lt & held_valid & same_slot),
            displace.eq(held_valid & ~same_slot),     # a new slot pushes the held event out
            fresh.eq(win_ge & win_lt & ~(held_valid & same_slot)),
            stall.eq(win_ge & win_lt & held_valid & ~same_slot),
        ]
        # rejected_count: two halves, the carry and the saturation precomputed (rejections
        # are at least four clocks apart, so these flags are never stale when used)
        rej_max = (1 << self.rejected_width) - 1
        rej_full = Signal()
        rw_lo = (self.rejected_width + 1) // 2
        rej_lo = self.rejected_count[:rw_lo]
        rej_hi = self.rejected_count[rw_lo:]
        rej_lo_full = Signal()
        m.d.sync += [rej_full.eq(self.rejected_count == rej_max),
                     rej_lo_full.eq(rej_lo == (1 << rw_lo) - 1)]
        wait = Signal(range(max(n_sub, n_sum) + 1))
        flush_pending = Signal()
        # The output register is free once its event has been taken: o.ready only clears
        # o.valid, so the consumer's handshake logic never reaches the merge decisions.
        out_free = Signal()
        m.d.comb += out_free.eq(~self.o.valid)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(out_free):        # the payload follows `held` while nothing is offered
            m.d.sync += self.o.payload.eq(held)

        rej_pulse = Signal()        # counted one clock after the decision (short paths)
        m.d.sync += rej_pulse.eq(0)
        with m.If(rej_pulse & ~rej_full):
            m.d.sync += rej_lo.eq(rej_lo + 1)
            if len(rej_hi):
                with m.If(rej_lo_full):
                    m.d.sync += rej_hi.eq(rej_hi + 1)

        def reject():
            m.d.sync += [rej_pulse.eq(1), lost_acc.eq(lost_new)]

        def emit_held():            # only when out_free: the payload is loaded above
            m.d.sync += self.o.valid.eq(1)

        # The controller is one-hot, one flip-flop per state, and every decision it takes is
        # either a registered flag or one LUT over registered flags: the wide registers below
        # (t, lo, q, qb, 48 to 65 bits each) see their selects straight from flip-flops.
        go = Signal()           # an event is taken on i
        sub_end = Signal()
        do_shift = Signal()
        shift_stop = Signal()
        k_is1 = Signal()        # k == 1, registered (k does not change in TRIAL)
        sum_end = Signal()
        done_exit = Signal()
        m.d.comb += [
            self.i.ready.eq(s_idle & ~flush_pending),
            go.eq(s_idle & ~flush_pending & self.i.valid),
            sub_end.eq(s_sub & (wait == 0)),
            shift_stop.eq(s_shift & ~do_shift),
            sum_end.eq(s_sum & (wait == 0)),
            done_exit.eq(s_done & (~stall | out_free)),   # else wait for room on the output
        ]
        m.d.sync += [
            k_is1.eq(k == 1),
            # SELECT's decision, taken on the last SUB clock and registered
            ld_a.eq(sub_end & use_a_v),
            ld_b.eq(sub_end & ~use_a_v & use_b_v),
            s_idle.eq((s_idle & ~go) | (s_select & ~ld_a & ~ld_b) | done_exit),
            s_sub.eq(go | (s_sub & (wait != 0))),
            s_select.eq(sub_end),
            s_cond.eq(s_select & (ld_a | ld_b)),
            s_shift.eq(s_cond | do_shift),
            # do_shift = s_shift & "t >= period", retimed into one flip-flop: the selects of
            # t, lo and k come straight from it
            do_shift.eq((s_cond | do_shift) & cond_next),
            s_trial.eq((shift_stop & ~k_zero) | (s_restore & ~k_is1)),
            s_restore.eq(s_trial),
            s_sum.eq((shift_stop & k_zero) | (s_restore & k_is1) | (s_sum & (wait != 0))),
            s_done.eq(sum_end | (s_done & ~done_exit)),
            # SUB and SUM count down; IDLE and the divider states preload their length
            wait.eq(Mux(s_idle, n_sub - 1, Mux(s_sub | s_sum, wait - 1, n_sum - 1))),
        ]

        # IDLE: flush, or take an event.
        with m.If(s_idle):
            with m.If(flush_pending):
                with m.If(~held_valid):
                    m.d.sync += flush_pending.eq(0)
                with m.Elif(out_free):
                    emit_held()
                    m.d.sync += [held_valid.eq(0), flush_pending.eq(0)]
        with m.If(go):
            m.d.sync += [
                ts_f.eq(self.i.payload.timestamp << F),
                ev_mask.eq(self.i.payload.mask),
                ev_lost.eq(self.i.payload.lost),
                period_l.eq(self.period),
                offset_l.eq(self.offset),
                ws_l.eq(self.window_start),
                we_l.eq(self.window_end),
            ]

        # SELECT: load the dividend (xa incrementally, xb from scratch) or reject.
        with m.If(s_select):
            m.d.sync += [lo.eq(0), q.eq(0), k.eq(0), k_zero.eq(1)]
            with m.If(~ld_a & ~ld_b):              # phase < 0, or no period
                reject()
                m.d.sync += base_valid.eq(0)
        with m.If(ld_a):
            m.d.sync += qb.eq(q_prev)
        with m.Elif(ld_b):
            m.d.sync += qb.eq(0)

        # The divider's partial remainder: SHIFT right while t >= period, then one restoring
        # step per TRIAL (trial = r2 - period) and RESTORE pair.
        fits = ~trial[-1]
        with m.If(do_shift):
            m.d.sync += [t.eq(t1), lo.eq(Cat(lo[1:], t[0])), k.eq(k + 1), k_zero.eq(0)]
        with m.Elif(s_restore):
            m.d.sync += [
                t.eq(Mux(fits, trial[:PW + 1], r2)),
                lo.eq(lo << 1),
                q.eq(Cat(fits, q)),
                k.eq(k - 1),
            ]
        with m.Elif(ld_a):
            m.d.sync += t.eq(xa)
        with m.Elif(ld_b):
            m.d.sync += t.eq(xb)

        # DONE: the new base, then reject, merge into the held event, or replace it.
        with m.If(s_done):
            m.d.sync += [start.eq(new_start), q_prev.eq(slot),
                         period_b.eq(period_l), offset_b.eq(offset_l), base_valid.eq(1)]
            with m.If(~accept):
                reject()
            with m.If(merge):
                m.d.sync += [
                    held.mask.eq(held.mask | ev_mask),
                    held.lost.eq(lost_merged),
                    lost_acc.eq(0),
                ]
            with m.If(fresh & (~displace | out_free)):
                with m.If(displace):
                    emit_held()
                m.d.sync += [
                    held_valid.eq(1),
                    held.slot.eq(slot),
                    held.mask.eq(ev_mask),
                    held.lost.eq(lost_new),
                    lost_acc.eq(0),
                ]
        with m.If(self.flush):
            m.d.sync += flush_pending.eq(1)
        return m
