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
The quotient is computed exactly by a sequential shift-and-subtract divider that only works
on the *new* part of the phase. The core keeps the last phase it divided, with its quotient and
residue (``phase_prev = q_prev * period + r_prev``). When the next event has the same
``period`` and ``offset`` and a phase not below ``phase_prev`` (the normal case: timestamps are
monotonic), it divides ``x = r_prev + (phase - phase_prev)`` and adds the quotient to
``q_prev``; otherwise it divides ``x = phase`` from scratch. The divider first doubles the
divisor until it exceeds ``x`` (``k`` doublings, ``k`` = bit length of the quotient), then
restores ``k`` quotient bits, one per clock. An event therefore takes ``4 + 2 k`` clocks, with
``k = bit_length(x // period)``: 4 clocks for an event in the slot (or within the slot) of the
previous one, about ``4 + 2 log2(gap / period)`` for a gap between detections, and at most
``4 + 2 (timestamp_width + frac_bits + 2)`` for the first event or after a register change.
Exact for arbitrary gaps; wrap-around of the timestamp simply takes the from-scratch path.
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
    at any time; each event uses one consistent set. Throughput: ``4 + 2 k`` clocks per event
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
        F, S = self.frac_bits, self.slot_width
        # a non-negative phase is below 2**(T+F) + 2**(T+F) = 2**phase_width
        phase_width = self.timestamp_width + F + 1
        x_width = max(phase_width, self.period_width) + 1
        d_width = x_width + 1

        # --- the event being processed (latched on the input handshake) ---------------------
        ph = Signal(phase_width)
        ph_neg = Signal()
        ev_mask = Signal(self.channels)
        ev_lost = Signal(LOST_WIDTH)
        period_l = Signal(self.period_width)
        offset_l = Signal(signed(self.offset_width))
        ws_l = Signal(self.period_width)
        we_l = Signal(self.period_width)
        same = Signal()          # period and offset equal to those of the base

        # --- the base of the incremental division -------------------------------------------
        base_valid = Signal()
        p_prev = Signal(phase_width)
        q_prev = Signal(S)
        r_prev = Signal(self.period_width)

        # --- divider -------------------------------------------------------------------------
        x = Signal(x_width)
        d = Signal(d_width)
        q = Signal(S)
        qb = Signal(S)
        k = Signal(range(d_width + 1))

        # --- merge stage and output ----------------------------------------------------------
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

        phase_in = (self.i.payload.timestamp << F) - self.offset    # unsigned - signed → signed

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
                            ph.eq(phase_in),
                            ph_neg.eq(phase_in < 0),
                            ev_mask.eq(self.i.payload.mask),
                            ev_lost.eq(self.i.payload.lost),
                            period_l.eq(self.period),
                            offset_l.eq(self.offset),
                            ws_l.eq(self.window_start),
                            we_l.eq(self.window_end),
                            same.eq(base_valid & (self.period == period_l)
                                    & (self.offset == offset_l)),
                        ]
                        m.next = "PREP"

            with m.State("PREP"):
                with m.If(ph_neg | (period_l == 0)):
                    reject()
                    m.d.sync += base_valid.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    with m.If(same & (ph >= p_prev)):
                        m.d.sync += [x.eq(r_prev + (ph - p_prev)), qb.eq(q_prev)]
                    with m.Else():
                        m.d.sync += [x.eq(ph), qb.eq(0)]
                    m.d.sync += [d.eq(period_l), q.eq(0), k.eq(0)]
                    m.next = "UP"

            with m.State("UP"):
                with m.If(d <= x):
                    m.d.sync += [d.eq(d << 1), k.eq(k + 1)]
                with m.Elif(k == 0):
                    m.next = "DONE"
                with m.Else():
                    m.next = "DOWN"

            with m.State("DOWN"):
                half = d >> 1
                with m.If(x >= half):
                    m.d.sync += [x.eq(x - half), q.eq(Cat(1, q))]
                with m.Else():
                    m.d.sync += q.eq(Cat(0, q))
                m.d.sync += [d.eq(half), k.eq(k - 1)]
                with m.If(k == 1):
                    m.next = "DONE"

            with m.State("DONE"):
                slot = Signal(S)
                residue = x[:self.period_width]
                m.d.comb += slot.eq(qb + q)
                m.d.sync += [p_prev.eq(ph), q_prev.eq(slot), r_prev.eq(residue),
                             base_valid.eq(1)]
                with m.If((residue < ws_l) | (residue >= we_l)):
                    reject()
                    m.next = "IDLE"
                with m.Else():
                    lost_new = _sat_lost(ev_lost + lost_acc)
                    with m.If(held_valid & (held.slot == slot)):
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
                            held.slot.eq(slot),
                            held.mask.eq(ev_mask),
                            held.lost.eq(lost_new),
                            lost_acc.eq(0),
                        ]
                        m.next = "IDLE"
                    # else: wait in DONE for room on the output

        with m.If(self.flush):
            m.d.sync += flush_pending.eq(1)
        return m
