"""Alice's sifter: merge-join of her per-slot records with Bob's (slot, basis) reports.

The specification is :func:`mozi.sim.model.sift_alice`. Alice's records (4 bits per slot,
:func:`mozi.sim.model.alice_record`) stream in ``lanes`` consecutive slots per beat; Bob's
reports stream in with strictly increasing slots. The sifter skips record beats until the one
holding the reported slot and answers each report with Alice's basis match flag, bit and
intensity for that slot.

Blocks
------
The two streams are cut into *blocks* by ``last`` flags: a block is a run of record beats, the
final one with ``last = 1``, together with a run of reports, the final one with ``last = 1``
(so a block holds at least one beat and at least one report). Each block opens with one
transfer on the ``first_slot`` stream, the slot of the block's first record (tie its ``valid``
high to use it as a plain register: it is then sampled once at the start of every block).
Within a block the answer to each report is exactly ``sift_alice(records, report_slots,
report_basis, first_slot=first_slot)``; the answer to the block's last report carries
``last = 1``. After the last report the remaining record beats of the block are skipped at one
beat per clock; the block ends once both last flags have been consumed, and the next block
starts with the next ``first_slot``.

Protocol errors
---------------
A report whose slot is not above the previous accepted report of the block
(:attr:`SiftError.NOT_INCREASING`), lies before the record stream's current beat
(:attr:`SiftError.BEHIND`, e.g. below ``first_slot``), or lies beyond the block's last record
(:attr:`SiftError.BEYOND`) is dropped without an answer (it still counts as the block's last
report if it carries ``last``). ``error`` then rises and stays high until reset;
``error_code`` holds the code of the first error and ``dropped`` counts dropped reports.
``sift_alice`` raises ``ValueError`` on a block exactly when the core drops at least one of its
reports; on every other block the answers are bit-exact with it.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from mozi.hdl.common import StreamRegister, saturating_counter

__all__ = [
    "AliceSifter",
    "SiftError",
    "alice_record_layout",
    "record_beat_layout",
    "report_layout",
    "sift_result_layout",
]


class SiftError(enum.Enum, shape=2):
    """Protocol error codes reported on :attr:`AliceSifter.error_code`."""

    #: No error since reset.
    NONE = 0
    #: A report's slot is not above the previous accepted report of the block.
    NOT_INCREASING = 1
    #: A report's slot lies before the current record beat (below ``first_slot``).
    BEHIND = 2
    #: A report's slot lies beyond the block's last record.
    BEYOND = 3


#: One of Alice's per-slot records, packed as ``bit | basis << 1 | intensity << 2``.
alice_record_layout = data.StructLayout({
    "bit": 1,
    "basis": 1,
    "intensity": 2,
})


def record_beat_layout(lanes: int = 1) -> data.StructLayout:
    """Record stream payload: ``lanes`` consecutive records (lane 0 = lowest slot) and ``last``.

    Record ``k`` of the beat occupies payload bits ``4k … 4k+3``; ``last`` is the top bit.
    """
    return data.StructLayout({
        "records": data.ArrayLayout(alice_record_layout, lanes),
        "last": 1,
    })


def report_layout(slot_width: int = 48) -> data.StructLayout:
    """Bob's report: the slot of a detection, his basis there, and the block's ``last`` flag."""
    return data.StructLayout({
        "slot": slot_width,
        "basis": 1,
        "last": 1,
    })


def sift_result_layout(slot_width: int = 48) -> data.StructLayout:
    """Sifter answer per accepted report: the slot and Alice's match flag, bit and intensity."""
    return data.StructLayout({
        "slot": slot_width,
        "match": 1,
        "bit": 1,
        "intensity": 2,
        "last": 1,
    })


class AliceSifter(wiring.Component):
    """Merge-join of Alice's record stream with Bob's reports, exactly as ``sift_alice``.

    Parameters
    ----------
    slot_width : int
        Width of slot indices (default 48). Slots do not wrap: a block must lie below
        ``2**slot_width``.
    lanes : int
        Records per beat of the record stream, a power of two (default 1). The sifter consumes
        one beat per clock whenever it skips records, so it sifts ``lanes`` slots per clock.

    Ports
    -----
    records : In(stream.Signature(record_beat_layout(lanes)))
        Alice's records for consecutive slots, ``lanes`` per beat, ``last`` on a block's final
        beat.
    reports : In(stream.Signature(report_layout(slot_width)))
        Bob's (slot, basis) reports, strictly increasing within a block, ``last`` on a block's
        final report.
    first_slot : In(stream.Signature(slot_width))
        Block headers: the slot of the first record of each block, one transfer per block,
        taken before any record or report of that block.
    o : Out(stream.Signature(sift_result_layout(slot_width)))
        One answer per accepted report, in report order: ``slot``, ``match`` (Alice's basis
        equals Bob's), ``bit`` and ``intensity`` (Alice's), ``last`` (the block's last report).
    error : Out(1)
        Sticky: a report has been dropped as a protocol error since reset.
    error_code : Out(SiftError)
        The code of the first protocol error since reset (:attr:`SiftError.NONE` if none).
    dropped : Out(32)
        Number of reports dropped as protocol errors since reset (saturating).

    Notes
    -----
    With every input valid and the output ready, a block of ``B`` beats and ``R`` reports
    takes ``1 + B + R' + E`` clocks: one for its header, one per beat (a beat is consumed in
    the clock that skips it or answers its first report), plus one per accepted report that
    shares its beat with an earlier report (``R'``, answered from the held copy of that beat;
    always 0 when ``lanes == 1``) and one per dropped report (``E``). So the core sifts
    ``lanes`` slots per clock except for a clock per extra report in a beat. The answer
    appears one clock after its report is consumed (registered output). Records are only
    skipped while a report is waiting (its slot tells how far to skip), or after the block's
    last report.
    """

    def __init__(self, slot_width: int = 48, lanes: int = 1):
        if not isinstance(slot_width, int) or isinstance(slot_width, bool) or slot_width < 1:
            raise TypeError(f"slot_width must be a positive integer, not {slot_width!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise TypeError(f"lanes must be a positive integer, not {lanes!r}")
        if lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two, not {lanes}")
        self.slot_width = slot_width
        self.lanes = lanes
        super().__init__({
            "records": In(stream.Signature(record_beat_layout(lanes))),
            "reports": In(stream.Signature(report_layout(slot_width))),
            "first_slot": In(stream.Signature(slot_width)),
            "o": Out(stream.Signature(sift_result_layout(slot_width))),
            "error": Out(1),
            "error_code": Out(SiftError),
            "dropped": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.slot_width
        lanes = self.lanes
        lane_bits = (lanes - 1).bit_length()
        rec = self.records
        rep = self.reports

        # Block state. The head beat of the record stream holds slots pos_start … pos_end - 1
        # (registers one bit wider than a slot, so that they never wrap). When lanes > 1, the
        # beat a report was answered from is consumed at once and kept in ``held`` (slots
        # pos_start - lanes … pos_start - 1) for later reports in that same beat.
        pos_end = Signal(w + 1, init=lanes)
        pos_start = Signal(w + 1)
        # ``lo`` is the lowest slot the next report may have: the previous report + 1, or the
        # head beat's first slot after a skip. One comparison against it decides "drop as
        # NOT_INCREASING or BEHIND"; ``prev`` only tells the two codes apart.
        lo = Signal(w + 1)
        prev = Signal(w)           # slot of the previous accepted report of the block
        have_prev = Signal()
        rec_done = Signal()        # the block's last beat has been consumed
        rep_done = Signal()        # the block's last report has been consumed
        fresh = Signal(init=1)     # between blocks: waiting for the next block's first_slot

        s = rep.payload.slot
        err_inc = Signal()
        too_low = Signal()
        in_beat = Signal()
        in_held = Signal()
        m.d.comb += [
            err_inc.eq(have_prev & (s <= prev)),
            too_low.eq(s < lo),
            in_beat.eq(s < pos_end),
        ]
        if lane_bits:
            held = Signal(data.ArrayLayout(alice_record_layout, lanes))
            held_valid = Signal()
            m.d.comb += in_held.eq(held_valid & (s < pos_start))
            # Beats are aligned to first_slot, not to 0: the lane is (s - pos_end) mod lanes.
            lane = Signal(lane_bits)
            m.d.comb += lane.eq(s[:lane_bits] - pos_end[:lane_bits])
            record = Signal(alice_record_layout)
            with m.Switch(lane):
                for k in range(lanes):
                    with m.Case(k):
                        m.d.comb += record.eq(Mux(in_held, held[k], rec.payload.records[k]))
        else:
            record = rec.payload.records[0]

        m.submodules.out = out = StreamRegister(self.o.payload.shape())
        wiring.connect(m, out.o, wiring.flipped(self.o))
        can_emit = out.i.ready

        # Decide which transfers happen this clock.
        take_rec = Signal()     # consume the head beat
        take_rep = Signal()     # consume the head report
        answer = Signal()       # ... and answer it
        reject = Signal()       # ... and drop it as an error
        code = Signal(SiftError)
        with m.If(err_inc):
            m.d.comb += code.eq(SiftError.NOT_INCREASING)
        with m.Elif(too_low):
            m.d.comb += code.eq(SiftError.BEHIND)
        with m.Else():
            m.d.comb += code.eq(SiftError.BEYOND)

        with m.If(fresh):
            pass  # nothing moves until the block header is in
        with m.Elif(rep_done):
            # Drain the block's remaining beats.
            m.d.comb += take_rec.eq(~rec_done)
        with m.Elif(too_low):
            m.d.comb += reject.eq(1)
        with m.Elif(in_held):
            m.d.comb += answer.eq(can_emit)
        with m.Elif(rec_done):
            # Every further report of the block lies beyond its records.
            m.d.comb += reject.eq(1)
        with m.Elif(rec.valid & rep.valid):
            # Only a waiting report tells whether the head beat may be skipped. Answering
            # from the head beat consumes it too (it stays in ``held``).
            with m.If(in_beat):
                m.d.comb += [
                    answer.eq(can_emit),
                    take_rec.eq(can_emit),
                ]
            with m.Else():
                m.d.comb += take_rec.eq(1)
        m.d.comb += [
            rec.ready.eq(take_rec),
            rep.ready.eq(answer | reject),
            take_rep.eq(rep.valid & (answer | reject)),
        ]
        rec_fire = Signal()
        m.d.comb += rec_fire.eq(rec.valid & take_rec)

        with m.If(rep.valid & reject):
            m.d.sync += self.error.eq(1)
            with m.If(~self.error):
                m.d.sync += self.error_code.eq(code)

        saturating_counter(m, self.dropped, rep.valid & reject)

        # Block bookkeeping.
        rec_done_next = rec_done | (rec_fire & rec.payload.last)
        rep_done_next = rep_done | (take_rep & rep.payload.last)
        with m.If(rec_fire):
            m.d.sync += [
                pos_start.eq(pos_end),
                pos_end.eq(pos_end + lanes),
                lo.eq(pos_end),
            ]
            if lane_bits:
                m.d.sync += [
                    held.eq(rec.payload.records),
                    held_valid.eq(answer),
                ]
        # the output register (answer implies can_emit: what is offered is taken)
        m.d.comb += [
            out.i.valid.eq(rep.valid & answer),
            out.i.payload.slot.eq(s),
            out.i.payload.match.eq(record.basis == rep.payload.basis),
            out.i.payload.bit.eq(record.bit),
            out.i.payload.intensity.eq(record.intensity),
            out.i.payload.last.eq(rep.payload.last),
        ]
        with m.If(rep.valid & answer):
            m.d.sync += [
                prev.eq(s),
                have_prev.eq(1),
            ]
            if lane_bits:
                m.d.sync += lo.eq(s + 1)
            # (with one lane an answer always consumes its beat, and pos_end == s + 1)
        m.d.comb += self.first_slot.ready.eq(fresh)
        with m.If(fresh & self.first_slot.valid):
            m.d.sync += [
                fresh.eq(0),
                pos_start.eq(self.first_slot.payload),
                pos_end.eq(self.first_slot.payload + lanes),
                lo.eq(self.first_slot.payload),
            ]
        m.d.sync += [
            rec_done.eq(rec_done_next),
            rep_done.eq(rep_done_next),
        ]
        with m.If(rec_done_next & rep_done_next):
            # End of block: wait for the next block's header.
            m.d.sync += [
                rec_done.eq(0),
                rep_done.eq(0),
                have_prev.eq(0),
                fresh.eq(1),
            ]
            if lane_bits:
                m.d.sync += held_valid.eq(0)
        return m
