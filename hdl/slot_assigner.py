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
``period_width + 1`` bits wide, and which only divides the *new* part of the phase. The core
keeps the absolute start of the slot of the last event it divided, ``start = offset + q_prev *
period`` (in ``2**-frac_bits`` ticks), with ``q_prev``. When the next event has the same
``period`` and ``offset`` and ``timestamp * 2**frac_bits >= start`` (the normal case:
timestamps are monotonic), it divides ``x = timestamp * 2**frac_bits - start`` and adds the
quotient to ``q_prev``; otherwise it divides ``x = phase`` from scratch. The divider shifts
``x`` right until it is below ``period`` (``k`` shifts, ``k`` = bit length of the quotient),
then shifts the ``k`` bits back in, one restoring step per clock. Timing per event, from its
handshake on ``i`` to the next handshake (output not stalled):

* ``6 + 2 k`` clocks with ``k = bit_length(x // period)``: 6 clocks for an event in the slot
  of the previous one, about ``6 + 2 log2(gap / period)`` for a gap between detections, at
  most ``6 + 2 (timestamp_width + frac_bits + 1)`` for the first event or after a register
  change;
* 3 clocks for an event before slot 0 (``phase < 0``) or with ``period = 0``.

Exact for arbitrary gaps; wrap-around of the timestamp simply takes the from-scratch path.
Every wide (``timestamp_width + frac_bits + 2``-bit) subtraction is split over two clocks so
that no carry chain is longer than about half of it (iCE40 timing).
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from mozi.hdl.layouts import LOST_WIDTH, slot_event_layout, tag_event_layout

__all__ = ["SlotAssigner"]

_LOST_MAX = (1 << LOST_WIDTH) - 1


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    return value


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
    at any time; each event uses one consistent set. Throughput: ``6 + 2 k`` clocks per event
    (see the module docstring).
    """

    def __init__(self, *, timestamp_width: int = 48, slot_width: int = 48, frac_bits: int = 16,
                 channels: int = 4, period_width: int = 32, rejected_width: int = 32):
        self.timestamp_width = _check_int("timestamp_width", timestamp_width, 1)
        self.slot_width = _check_int("slot_width", slot_width, 1)
        self.frac_bits = _check_int("frac_bits", frac_bits, 0)
        self.channels = _check_int("channels", channels, 1)
        self.period_width = _check_int("period_width", period_width, 1)
        self.rejected_width = _check_int("rejected_width", rejected_width, 1)
        self.offset_width = timestamp_width + frac_bits + 1
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
        H = (W + 1) // 2            # wide subtractions: low H bits, then the rest
        X = W - 1                   # width of a non-negative dividend

        # --- the event being processed (latched on the input handshake) ---------------------
        ts_f = Signal(W)            # timestamp * 2**F, zero-extended
        ev_mask = Signal(self.channels)
        ev_lost = Signal(LOST_WIDTH)
        period_l = Signal(PW)
        offset_l = Signal(signed(self.offset_width))
        ws_l = Signal(PW)
        we_l = Signal(PW)
        fast_ok = Signal()          # base valid, with this period and offset

        # --- the base of the incremental division -------------------------------------------
        base_valid = Signal()
        start = Signal(signed(W))   # absolute start of the last divided event's slot
        q_prev = Signal(S)

        # --- two-clock subtractions: xa = ts_f - start, xb = ts_f - offset ------------------
        xa_lo = Signal(H)
        xa_borrow = Signal()
        xb_lo = Signal(H)
        xb_borrow = Signal()
        offset_w = Signal(W)
        m.d.comb += offset_w.eq(offset_l)           # sign-extended to W bits
        start_w = start.as_unsigned()

        # --- divider -------------------------------------------------------------------------
        t = Signal(X)               # the dividend shifted right; then the partial remainder
        lo = Signal(X)              # bits shifted out of t, the next one to bring back on top
        q = Signal(S)
        qb = Signal(S)
        k = Signal(range(X + 1))
        residue_w = Signal(W)
        m.d.comb += residue_w.eq(t[:PW])            # the remainder, in SUM and DONE

        # --- merge stage and output ----------------------------------------------------------
        slot_r = Signal(S)
        in_win = Signal()
        new_lo = Signal(H)
        new_borrow = Signal()
        held_valid = Signal()
        held = Signal(self.o.payload.shape())
        lost_acc = Signal(LOST_WIDTH)
        flush_pending = Signal()
        out_free = Signal()
        m.d.comb += out_free.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def reject():
            rej_max = (1 << self.rejected_width) - 1
            with m.If(self.rejected_count != rej_max):
                m.d.sync += self.rejected_count.eq(self.rejected_count + 1)
            m.d.sync += lost_acc.eq(_sat_lost(lost_acc + ev_lost))

        def emit_held():
            m.d.sync += [self.o.payload.eq(held), self.o.valid.eq(1)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(flush_pending):
                    with m.If(~held_valid):
                        m.d.sync += flush_pending.eq(0)
                    with m.Elif(out_free):
                        emit_held()
                        m.d.sync += [held_valid.eq(0), flush_pending.eq(0)]
                with m.Else():
                    m.d.comb += self.i.ready.eq(1)
                    with m.If(self.i.valid):
                        m.d.sync += [
                            ts_f.eq(self.i.payload.timestamp << F),
                            ev_mask.eq(self.i.payload.mask),
                            ev_lost.eq(self.i.payload.lost),
                            period_l.eq(self.period),
                            offset_l.eq(self.offset),
                            ws_l.eq(self.window_start),
                            we_l.eq(self.window_end),
                            fast_ok.eq(base_valid & (self.period == period_l)
                                       & (self.offset == offset_l)),
                        ]
                        m.next = "SUB_LO"

            with m.State("SUB_LO"):
                diff_a = ts_f[:H] - start_w[:H]
                diff_b = ts_f[:H] - offset_w[:H]
                m.d.sync += [
                    xa_lo.eq(diff_a[:H]), xa_borrow.eq(diff_a[H]),
                    xb_lo.eq(diff_b[:H]), xb_borrow.eq(diff_b[H]),
                ]
                m.next = "SUB_HI"

            with m.State("SUB_HI"):
                xa_hi = (ts_f[H:] - start_w[H:] - xa_borrow)[:W - H]
                xb_hi = (ts_f[H:] - offset_w[H:] - xb_borrow)[:W - H]
                m.d.sync += [lo.eq(0), q.eq(0), k.eq(0)]
                with m.If(fast_ok & ~xa_hi[-1]):
                    m.d.sync += [t.eq(Cat(xa_lo, xa_hi)), qb.eq(q_prev)]
                    m.next = "SHIFT"
                with m.Elif(~xb_hi[-1] & (period_l != 0)):
                    m.d.sync += [t.eq(Cat(xb_lo, xb_hi)), qb.eq(0)]
                    m.next = "SHIFT"
                with m.Else():                      # phase < 0, or no period
                    reject()
                    m.d.sync += base_valid.eq(0)
                    m.next = "IDLE"

            with m.State("SHIFT"):
                with m.If((t[PW:] != 0) | (t[:PW] >= period_l)):
                    m.d.sync += [t.eq(t >> 1), lo.eq(Cat(lo[1:], t[0])), k.eq(k + 1)]
                with m.Elif(k == 0):
                    m.next = "SUM"
                with m.Else():
                    m.next = "RESTORE"

            with m.State("RESTORE"):
                r2 = Cat(lo[-1], t[:PW])            # partial remainder * 2 + next bit
                trial = r2 - period_l
                fits = ~trial[-1]
                m.d.sync += [
                    t.eq(Mux(fits, trial[:PW + 1], r2)),
                    lo.eq(lo << 1),
                    q.eq(Cat(fits, q)),
                    k.eq(k - 1),
                ]
                with m.If(k == 1):
                    m.next = "SUM"

            with m.State("SUM"):
                residue = t[:PW]
                new_diff = ts_f[:H] - residue_w[:H]
                m.d.sync += [
                    slot_r.eq(qb + q),
                    in_win.eq((residue >= ws_l) & (residue < we_l)),
                    new_lo.eq(new_diff[:H]),
                    new_borrow.eq(new_diff[H]),
                ]
                m.next = "DONE"

            with m.State("DONE"):
                new_hi = (ts_f[H:] - residue_w[H:] - new_borrow)[:W - H]
                m.d.sync += [start.eq(Cat(new_lo, new_hi)), q_prev.eq(slot_r),
                             base_valid.eq(1)]
                with m.If(~in_win):
                    reject()
                    m.next = "IDLE"
                with m.Else():
                    with m.If(held_valid & (held.slot == slot_r)):
                        m.d.sync += [
                            held.mask.eq(held.mask | ev_mask),
                            held.lost.eq(_sat_lost(held.lost + ev_lost + lost_acc)),
                            lost_acc.eq(0),
                        ]
                        m.next = "IDLE"
                    with m.Elif(~held_valid | out_free):
                        with m.If(held_valid):
                            emit_held()
                        m.d.sync += [
                            held_valid.eq(1),
                            held.slot.eq(slot_r),
                            held.mask.eq(ev_mask),
                            held.lost.eq(_sat_lost(ev_lost + lost_acc)),
                            lost_acc.eq(0),
                        ]
                        m.next = "IDLE"
                    # else: wait in DONE for room on the output

        with m.If(self.flush):
            m.d.sync += flush_pending.eq(1)
        return m
