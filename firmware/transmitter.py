"""The satellite's transmitter firmware: Alice's sifter with its record memory, and the link.

:class:`Transmitter` is the role top. ``LOAD_RECORDS`` writes Alice's 4-bit records (the
satellite's record of what it sent in each slot) into the record memory, segment by segment;
``SIFT_REPORTS`` then streams Bob's reports through :class:`~mozi.hdl.alice_sifter.AliceSifter`
— one sifter block per loaded segment that holds reports, its records streamed from the
memory — and answers ``match | bit << 1 | intensity << 2`` per report, exactly as
:class:`mozi.host.devices.model.ModelTransport` does (its rules are in
:mod:`mozi.firmware.protocol`).

Errors have no effect: a ``LOAD_RECORDS`` is written beyond the committed records and only
committed when the whole payload has been checked; a ``SIFT_REPORTS`` commits its counters
only when every report has been answered.
"""

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect
from mozi.firmware import protocol as proto
from mozi.firmware.link import (
    UART_REGISTERS,
    BufferReader,
    Link,
    command_end,
    connect_host,
    host_port,
    register_port_name,
)
from mozi.firmware.protocol import ErrorCode, Opcode
from mozi.firmware.uart import UART
from mozi.hdl.alice_sifter import AliceSifter
from mozi.hdl.pattern_generator import VACUUM, PatternGenerator
from mozi.hdl.toeplitz_hasher import ToeplitzHasher

__all__ = ["PATTERN_DEPTH", "RECORD_DEPTH", "SEGMENT_DEPTH", "Transmitter"]

#: Records the record memory holds (``TX_RECORD_CAPACITY``).
RECORD_DEPTH = 1 << 16
#: Segments the segment table holds (``TX_SEGMENT_CAPACITY``).
SEGMENT_DEPTH = 1024
#: Records the pattern generator's FIFO holds (``PG_RECORD_CAPACITY``).
PATTERN_DEPTH = 4096
SLOT_WIDTH = 48


def _segment_layout():
    return data.StructLayout({"first": SLOT_WIDTH, "count": range(RECORD_DEPTH + 1),
                              "base": range(RECORD_DEPTH)})


class Transmitter(wiring.Component):
    """Satellite role top: AliceSifter, record memory, segment table, pattern generator,
    Toeplitz hasher and the host link.

    The pattern generator turns the random source's words into the laser triggers and the
    intensity select, one slot every ``PG_SLOT_CLOCKS`` clocks while ``PG_ENABLE``, and keeps
    each slot's record in a FIFO the host reads with ``PATTERN_RECORDS``. The sifter works on
    the records the host loads (``LOAD_RECORDS``), so a replay needs no generator.

    Parameters
    ----------
    max_payload : int
        Frame buffer size of the link.
    uart, uart_divisor
        As for :class:`mozi.firmware.receiver.Receiver`.

    Ports
    -----
    i : In(stream.Signature(8)), o : Out(stream.Signature(8))
        The host link's bytes (simulation), or ``rx``/``tx`` pins with ``uart``.
    qrng : In(stream.Signature(64))
        The random source: one word per slot (a slot that finds none is dark).
    lasers : Out(4), intensity : Out(2)
        The pattern generator's laser trigger pulses (H, V, D, A) and intensity select.
    idle : Out(1)
        The device waits for input.
    """

    REGISTERS = ("TX_RECORDS", "TX_REPORTS", "TX_MATCHES", "TX_RECORD_CAPACITY",
                 "TX_SEGMENT_CAPACITY", "PG_ENABLE", "PG_SLOT_CLOCKS", "PG_T_BASIS",
                 "PG_T_INT0", "PG_T_INT1", "PG_SLOTS", "PG_UNDERRUNS", "PG_RECORDS_LOST",
                 "PG_RECORD_CAPACITY", "TH_MAX_N", "TH_MAX_M")

    def __init__(self, *, max_payload: int = proto.DEVICE_MAX_PAYLOAD, uart: bool = False,
                 uart_divisor: int = 16, hasher: dict | None = None):
        self.max_payload = max_payload
        self.uart = UART() if uart else None
        #: Privacy amplification on the satellite: a :class:`ToeplitzHasher` of 8 lanes
        #: (one wire byte per beat) with these parameters.
        self.hasher = ToeplitzHasher(lanes=8, **(hasher or {"tile": 64, "max_n": 4096,
                                                            "max_m": 1024}))
        self.link = Link(role=2 | 4, registers=self.REGISTERS + (UART_REGISTERS if uart else ()),
                         opcodes=(Opcode.LOAD_RECORDS, Opcode.SIFT_REPORTS,
                                  Opcode.PATTERN_RECORDS, Opcode.TOEPLITZ_START,
                                  Opcode.TOEPLITZ_DATA, Opcode.TOEPLITZ_READ),
                         init={"UART_DIVISOR": uart_divisor, "PG_SLOT_CLOCKS": 1},
                         max_payload=max_payload)
        self.sifter = AliceSifter(slot_width=SLOT_WIDTH, lanes=1)
        self.pattern = PatternGenerator()
        self.pattern_fifo = SyncFIFOBuffered(width=4, depth=PATTERN_DEPTH)
        super().__init__({**host_port(uart), "qrng": In(stream.Signature(64)),
                          "lasers": Out(4), "intensity": Out(2, init=VACUUM), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        link, sifter = self.link, self.sifter
        m.submodules.link = link
        sifter_reset = Signal()
        m.submodules.sifter = ResetInserter(sifter_reset | link.soft_reset)(sifter)
        m.submodules.records = rec_mem = Memory(shape=4, depth=RECORD_DEPTH, init=[])
        m.submodules.segments = seg_mem = Memory(shape=_segment_layout(), depth=SEGMENT_DEPTH,
                                                 init=[])
        rec_w, rec_r = rec_mem.write_port(), rec_mem.read_port()
        seg_w, seg_r = seg_mem.write_port(), seg_mem.read_port()
        connect_host(m, self, link, self.uart)
        reg = {name: getattr(link, register_port_name(name)) for name in self.REGISTERS}

        # counters (committed per request)
        add_records = Signal(range(RECORD_DEPTH + 1))
        sent = Signal(range(self.max_payload + 1))      # reports handed to the sifter
        matches = Signal(range(self.max_payload + 1))
        commit_load = Signal()
        commit_sift = Signal()
        for name, amount, strobe in (("TX_RECORDS", add_records, commit_load),
                                     ("TX_REPORTS", sent, commit_sift),
                                     ("TX_MATCHES", matches, commit_sift)):
            total = Signal(33, name=name.lower())
            with m.If(link.soft_reset):
                m.d.sync += total.eq(0)
            with m.Elif(strobe & ~total[32]):
                m.d.sync += total.eq(total + amount)
            m.d.comb += reg[name].eq(total[:32] | total[32].replicate(32))
        m.d.comb += [reg["TX_RECORD_CAPACITY"].eq(RECORD_DEPTH),
                     reg["TX_SEGMENT_CAPACITY"].eq(SEGMENT_DEPTH),
                     reg["TH_MAX_N"].eq(self.hasher.max_n),
                     reg["TH_MAX_M"].eq(self.hasher.max_m)]

        # ---- pattern generator: a slot every PG_SLOT_CLOCKS clocks, records to the FIFO --
        pg, pg_fifo = self.pattern, self.pattern_fifo
        m.submodules.pattern = ResetInserter(link.soft_reset)(pg)
        m.submodules.pattern_fifo = ResetInserter(link.soft_reset)(pg_fifo)
        connect(m, wiring.flipped(self.qrng), pg.rand)
        connect(m, pg.records, pg_fifo.w_stream)
        # the slot timer counts down the clocks left in the slot to 0, reloading from a
        # register (no subtraction, no comparison with a count on the way to the counter);
        # a slot starts in the first clock of enable and then every PG_SLOT_CLOCKS clocks
        slot_clocks = reg["PG_SLOT_CLOCKS"]
        slot_last = Signal.like(slot_clocks)      # PG_SLOT_CLOCKS - 1 (it is >= 1)
        left = Signal.like(slot_clocks)           # clocks of the slot after this one
        slot_start = Signal()                     # this clock starts a slot
        reload = Signal()
        m.d.comb += reload.eq(~reg["PG_ENABLE"] | (left == 0))
        m.d.sync += [slot_last.eq(slot_clocks - 1), slot_start.eq(reload),
                     left.eq(Mux(reload, slot_last, left - 1))]
        pr_left = Signal(range(PATTERN_DEPTH + 1))    # PATTERN_RECORDS: records to send
        pr_high, pr_low = Signal(4), Signal(4)
        pr_pad = Signal()                             # the low nibble is padding
        pg_slots = Signal(32)                     # saturating
        with m.If(link.soft_reset):
            m.d.sync += pg_slots.eq(0)
        with m.Elif(pg.slot & pg.enable & ~pg_slots.all()):
            m.d.sync += pg_slots.eq(pg_slots + 1)
        m.d.comb += [
            pg.slot.eq(slot_start), pg.enable.eq(reg["PG_ENABLE"]),
            pg.t_basis.eq(reg["PG_T_BASIS"]), pg.t_int0.eq(reg["PG_T_INT0"]),
            pg.t_int1.eq(reg["PG_T_INT1"]),
            self.lasers.eq(pg.lasers), self.intensity.eq(pg.intensity),
            reg["PG_SLOTS"].eq(pg_slots), reg["PG_UNDERRUNS"].eq(pg.underruns),
            reg["PG_RECORDS_LOST"].eq(pg.records_lost),
            reg["PG_RECORD_CAPACITY"].eq(PATTERN_DEPTH),
            link.w_ok.eq((link.w_addr != proto.register("PG_SLOT_CLOCKS").address) |
                         (link.w_value != 0)),
        ]

        # ---- Toeplitz hasher: wire bytes (MSB-first) ↔ 8-lane beats (LSB-first) --------
        th = self.hasher
        # a registered reset: the request FSM's decisions reach none of the hasher's logic
        th_reset = Signal()
        m.d.sync += th_reset.eq(0)
        m.submodules.hasher = ResetInserter(th_reset | link.soft_reset)(th)
        # the seed and x bytes reach the hasher through two-entry FIFOs: valid, payload and
        # ready all registered, so the request FSM's logic ends at their inputs
        seed_q = SyncFIFOBuffered(width=len(th.seed.payload.as_value()), depth=2)
        x_q = SyncFIFOBuffered(width=len(th.x.payload.as_value()), depth=2)
        m.submodules.seed_q = ResetInserter(th_reset | link.soft_reset)(seed_q)
        m.submodules.x_q = ResetInserter(th_reset | link.soft_reset)(x_q)
        for q, port in ((seed_q, th.seed), (x_q, th.x)):
            m.d.comb += [port.valid.eq(q.r_stream.valid), port.payload.eq(q.r_stream.payload),
                         q.r_stream.ready.eq(port.ready)]
        seed_w, x_w = seed_q.w_stream, x_q.w_stream
        y_bytes = (th.max_m + 7) // 8
        m.submodules.y_mem = y_mem = Memory(shape=8, depth=y_bytes, init=[])
        y_w, y_r = y_mem.write_port(), y_mem.read_port()
        m.submodules.y_reader = y_rd = BufferReader(y_bytes)
        m.d.comb += [y_r.addr.eq(y_rd.addr), y_r.en.eq(y_rd.en), y_rd.data.eq(y_r.data)]
        job = Signal()                           # a job was started (and not aborted)
        job_n = Signal(32)
        job_m = Signal(32)
        cfg_valid = Signal()                     # TS_CFG offers the job to the hasher
        # cfg straight from registers: the hasher derives its job's counts from cfg in the
        # clock it takes it, through two adders
        m.d.comb += [th.cfg.valid.eq(cfg_valid), th.cfg.payload.n.eq(job_n),
                     th.cfg.payload.m.eq(job_m)]
        seed_left = Signal(33)                   # wire bytes of the seed still to come
        x_left = Signal(33)                      # … and of x
        y_count = Signal(range(y_bytes + 1))
        y_done = Signal()                        # the job's status beat has been taken
        y_pos = Signal(range(y_bytes + 1))
        m.d.comb += [th.y.ready.eq(1), th.status.ready.eq(1),
                     y_w.addr.eq(y_count), y_w.data.eq(th.y.payload.data[::-1]),
                     y_w.en.eq(th.y.valid)]
        with m.If(th.y.valid):
            m.d.sync += y_count.eq(y_count + 1)
        with m.If(th.status.valid):
            m.d.sync += y_done.eq(1)
        with m.If(th_reset):                     # the abandoned job's last beats
            m.d.sync += [y_count.eq(0), y_done.eq(0)]
        with m.If(link.soft_reset):
            m.d.sync += job.eq(0)

        # committed contents: records [0, loaded), segments [0, n_seg)
        loaded = Signal(range(RECORD_DEPTH + 1))
        n_seg = Signal(range(SEGMENT_DEPTH + 1))
        prev_end = Signal(SLOT_WIDTH + 1)        # end slot of the last committed segment
        with m.If(link.soft_reset):
            m.d.sync += [loaded.eq(0), n_seg.eq(0), prev_end.eq(0)]

        cmd = link.cmd.payload
        rx = link.cmd_rx
        length = Signal.like(cmd.length)
        pos = Signal.like(cmd.length)            # payload bytes read
        take = rx.valid & rx.ready
        with m.If(take):
            m.d.sync += pos.eq(pos + 1)

        finish = command_end(m, link)

        def read_head(nbytes):
            # take a payload byte; the first nbytes shift into head (MSB first), the rest of
            # a malformed payload is read and dropped
            m.d.comb += rx.ready.eq(1)
            with m.If(rx.valid & (pos < nbytes)):
                m.d.sync += head.eq(Cat(rx.payload, head[:-8]))

        # wide checks of a request, registered before the FSM decides on them (Fmax)
        c_short, c_past, c_full, c_order, c_over = (Signal(name=n) for n in (
            "c_short", "c_past", "c_full", "c_order", "c_over"))

        # ---- LOAD_RECORDS state ------------------------------------------------------------
        head = Signal(80)                        # first u48, count u32
        # the checks of TOEPLITZ_START and PATTERN_RECORDS on their payload, registered from
        # head on every clock: head is complete a clock before the *_CHECK state
        c_ts_bad, c_ts_big, c_pr_bad, c_pr_big = (Signal(name=n) for n in (
            "c_ts_bad", "c_ts_big", "c_pr_bad", "c_pr_big"))
        m.d.sync += [
            c_ts_bad.eq((length != 8) | (head[32:64] == 0) | (head[:32] == 0)),
            c_ts_big.eq((head[32:64] > self.hasher.max_n) | (head[:32] > self.hasher.max_m)),
            c_pr_bad.eq((length != 2) | (head[:16] == 0)),
            c_pr_big.eq((head[:16] + 1) >> 1 > self.max_payload - 2),
        ]

        hcount = Signal(4)
        seg_first = Signal(SLOT_WIDTH)
        seg_count = Signal(32)
        nib_left = Signal(33)                    # records of the segment still to write
        tmp_loaded = Signal(range(RECORD_DEPTH + 2))
        tmp_seg = Signal(range(SEGMENT_DEPTH + 2))
        tmp_end = Signal(SLOT_WIDTH + 1)
        bad = Signal()
        too_large = Signal()
        order = Signal()
        byte = Signal(8)
        low = Signal()                           # the byte's low nibble is next
        seg = Signal(_segment_layout())
        m.d.comb += [seg_w.data.eq(seg), seg_w.addr.eq(tmp_seg)]

        # ---- SIFT_REPORTS state ------------------------------------------------------------
        reports = Signal(range(self.max_payload + 1))
        rest = Signal.like(length)
        rep = Signal(7 * 8)
        rcount = Signal(3)
        held = Signal()                          # a report waits for the next one
        held_slot = Signal(SLOT_WIDTH)
        held_basis = Signal()
        seg_idx = Signal(range(SEGMENT_DEPTH + 1))
        cur = Signal(_segment_layout())
        # wide comparisons are registered a clock before they are used (Fmax)
        cur_end = Signal(SLOT_WIDTH + 1)            # cur.first + cur.count
        cur_rec_end = Signal(range(2 * RECORD_DEPTH + 1))     # cur.base + cur.count
        cur_valid = Signal()
        cur_open = Signal()                      # the sifter block of `cur` has begun
        answered = Signal(range(self.max_payload + 1))
        failed = Signal()
        ending = Signal()                        # every report read: flush the held one
        # The sifter's inputs come from stream registers (two-word FIFOs), so that neither
        # this FSM nor the record memory's output feeds its comparators in the same clock.
        q_reset = sifter_reset | link.soft_reset
        m.submodules.report_q = report_q = ResetInserter(q_reset)(SyncFIFOBuffered(
            width=len(sifter.reports.payload.as_value()), depth=2))
        m.submodules.first_q = first_q = ResetInserter(q_reset)(SyncFIFOBuffered(
            width=SLOT_WIDTH, depth=2))
        m.submodules.record_q = record_q = ResetInserter(q_reset)(SyncFIFOBuffered(
            width=len(sifter.records.payload.as_value()), depth=4))
        connect(m, report_q.r_stream, sifter.reports)
        connect(m, first_q.r_stream, sifter.first_slot)
        connect(m, record_q.r_stream, sifter.records)
        reports_in, first_in = report_q.w_stream, first_q.w_stream
        # record streamer for the open block: reads issued while the FIFO has room
        st_busy = Signal()
        st_idx = Signal(range(2 * RECORD_DEPTH + 1))
        st_end = Signal(range(2 * RECORD_DEPTH + 1))
        st_start = Signal()
        issued = Signal()
        landed = Signal()
        landed_last = Signal()
        issued_last = Signal()
        held_rec = Signal(4)
        issue = Signal()
        m.d.comb += [
            issue.eq(st_busy & (st_idx != st_end) &
                     (record_q.level + issued + landed < record_q.depth)),
            rec_r.addr.eq(st_idx), rec_r.en.eq(issue),
            record_q.w_stream.valid.eq(landed),
            record_q.w_stream.payload.eq(Cat(held_rec, landed_last)),
        ]
        m.d.sync += [issued.eq(issue), issued_last.eq(issue & (st_idx + 1 == st_end)),
                     landed.eq(issued), landed_last.eq(issued_last), held_rec.eq(rec_r.data)]
        with m.If(issue):
            m.d.sync += st_idx.eq(st_idx + 1)
        with m.If(st_busy & (st_idx == st_end) & ~issued & ~landed):
            m.d.sync += st_busy.eq(0)
        with m.If(st_start):
            m.d.sync += [st_busy.eq(1), st_idx.eq(cur.base), st_end.eq(cur_rec_end)]
        # sifter answers → response bytes
        o = sifter.o
        m.d.comb += o.ready.eq(1)
        with m.If(o.valid):
            m.d.comb += [link.cmd_tx.valid.eq(1),
                         link.cmd_tx.payload.eq(Cat(o.payload.match, o.payload.bit,
                                                    o.payload.intensity, Const(0, 4)))]
        with m.If(o.valid):
            m.d.sync += [answered.eq(answered + 1), matches.eq(matches + o.payload.match)]
        rep_slot = rep[8:56]
        rep_basis = rep[0]
        m.d.comb += [first_in.payload.eq(cur.first), seg_r.addr.eq(seg_idx)]
        y_left = Signal(range(y_bytes + 1))     # bytes of y not read yet (a register)
        chunk = Signal(range(y_bytes + 1))      # bytes the next TOEPLITZ_READ returns
        m.d.comb += chunk.eq(Mux(y_left > self.max_payload, self.max_payload, y_left))
        rep_in_block = Signal()                     # the new report lies in `cur`
        f_in = Signal()                             # the held report lies in `cur`
        f_below = Signal()                          # … before it: a gap, or not increasing
        f_last = Signal()                           # no segment left to fetch

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += link.cmd.ready.eq(1)
                with m.If(link.cmd.valid):
                    m.d.sync += [length.eq(cmd.length), pos.eq(0), bad.eq(0), too_large.eq(0),
                                 order.eq(0), tmp_loaded.eq(loaded), tmp_seg.eq(n_seg),
                                 tmp_end.eq(prev_end), hcount.eq(0), add_records.eq(0)]
                    with m.If(cmd.opcode == Opcode.LOAD_RECORDS.value):
                        m.next = "LR_HEAD"
                    with m.Elif(cmd.opcode == Opcode.SIFT_REPORTS.value):
                        m.d.sync += [rest.eq(cmd.length), reports.eq(0)]
                        m.next = "SR_COUNT"
                    with m.Elif(cmd.opcode == Opcode.PATTERN_RECORDS.value):
                        m.next = "PR_READ"
                    with m.Elif(cmd.opcode == Opcode.TOEPLITZ_START.value):
                        m.next = "TS_READ"
                    with m.Elif(cmd.opcode == Opcode.TOEPLITZ_DATA.value):
                        m.next = "TD_CHECK"
                    with m.Else():
                        m.next = "TR_CHECK"
            # ---- TOEPLITZ_START: n u32, m u32; any job in progress is abandoned ----
            with m.State("TS_READ"):
                with m.If(pos == length):
                    m.d.sync += th_reset.eq(1)
                    m.d.sync += [job.eq(0), y_count.eq(0), y_done.eq(0), y_pos.eq(0),
                                 seed_left.eq(0), x_left.eq(0)]
                    m.next = "TS_CHECK"
                with m.Else():
                    read_head(8)
            with m.State("TS_CHECK"):
                n_, m_ = head[32:64], head[:32]
                with m.If(c_ts_bad):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Elif(c_ts_big):
                    finish(error=ErrorCode.TOO_LARGE)
                with m.Else():
                    m.d.sync += [job_n.eq(n_), job_m.eq(m_), cfg_valid.eq(1),
                                 seed_left.eq((n_ + m_ - 1 + 7) >> 3),
                                 x_left.eq((n_ + 7) >> 3), y_left.eq((m_ + 7) >> 3)]
                    m.next = "TS_CFG"
            with m.State("TS_CFG"):                 # cfg_valid is set on the way here
                with m.If(th.cfg.ready):
                    m.d.sync += [job.eq(1), cfg_valid.eq(0)]
                    finish(Opcode.ACK)
            # ---- TOEPLITZ_DATA: the next bytes of packbits(seed) ‖ packbits(x) ----
            with m.State("TD_CHECK"):
                m.d.sync += c_over.eq(length > seed_left + x_left)
                m.next = "TD_CHECK2"
            with m.State("TD_CHECK2"):
                with m.If(~job | c_over):
                    m.next = "TD_REFUSE"
                with m.Else():
                    m.next = "TD_BYTE"
            with m.State("TD_REFUSE"):
                m.d.comb += rx.ready.eq(1)
                with m.If(pos == length):
                    finish(error=ErrorCode.SEQUENCE)
            with m.State("TD_BYTE"):
                in_seed = seed_left != 0
                beat_ok = Mux(in_seed, seed_w.ready, x_w.ready)
                with m.If(pos == length):
                    finish(Opcode.ACK)
                with m.Else():
                    m.d.comb += [seed_w.payload.eq(Cat(rx.payload[::-1], seed_left == 1)),
                                 x_w.payload.eq(Cat(rx.payload[::-1], x_left == 1)),
                                 seed_w.valid.eq(rx.valid & in_seed),
                                 x_w.valid.eq(rx.valid & ~in_seed),
                                 rx.ready.eq(beat_ok)]
                    with m.If(rx.valid & beat_ok):
                        with m.If(in_seed):
                            m.d.sync += seed_left.eq(seed_left - 1)
                        with m.Else():
                            m.d.sync += x_left.eq(x_left - 1)
            # ---- TOEPLITZ_READ: the next bytes of packbits(y), once the job is done ----
            # ---- PATTERN_RECORDS: max count u16 → count u16, records 2 per byte -------------
            with m.State("PR_READ"):
                with m.If(pos == length):
                    m.next = "PR_CHECK"
                with m.Else():
                    read_head(2)
            with m.State("PR_CHECK"):
                want = head[:16]
                with m.If(c_pr_bad):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Elif(c_pr_big):
                    finish(error=ErrorCode.TOO_LARGE)
                with m.Else():
                    # the records there now: the FIFO only grows while they are read
                    m.d.sync += pr_left.eq(Mux(want < pg_fifo.level, want, pg_fifo.level))
                    m.next = "PR_COUNT_HI"
            with m.State("PR_COUNT_HI"):
                m.d.comb += [link.cmd_tx.valid.eq(1), link.cmd_tx.payload.eq(pr_left[8:])]
                m.next = "PR_COUNT_LO"
            with m.State("PR_COUNT_LO"):
                m.d.comb += [link.cmd_tx.valid.eq(1), link.cmd_tx.payload.eq(pr_left[:8])]
                m.next = "PR_HIGH"
            def pop_record(into, next_state):
                m.d.comb += pg_fifo.r_stream.ready.eq(1)
                with m.If(pg_fifo.r_stream.valid):
                    m.d.sync += [into.eq(pg_fifo.r_stream.payload), pr_left.eq(pr_left - 1)]
                    m.next = next_state

            with m.State("PR_HIGH"):                  # the earlier record: the high nibble
                with m.If(pr_left == 0):
                    finish(Opcode.PATTERN)
                with m.Else():
                    pop_record(pr_high, "PR_LOW")
            with m.State("PR_LOW"):
                with m.If(pr_left == 0):              # an odd count: zero padded
                    m.d.sync += pr_pad.eq(1)
                    m.next = "PR_SEND"
                with m.Else():
                    m.d.sync += pr_pad.eq(0)
                    pop_record(pr_low, "PR_SEND")
            with m.State("PR_SEND"):
                # from registers that take the FIFO's data as it is (its block RAM's
                # clock-to-out leaves no time for logic before them): the padding here
                m.d.comb += [link.cmd_tx.valid.eq(1),
                             link.cmd_tx.payload.eq(Cat(Mux(pr_pad, 0, pr_low), pr_high))]
                m.next = "PR_HIGH"
            with m.State("TR_CHECK"):
                with m.If(length != 0):
                    m.next = "TR_BAD"
                with m.Elif(~job | (seed_left != 0) | (x_left != 0)):
                    finish(error=ErrorCode.SEQUENCE)
                with m.Elif(y_done):
                    with m.If(y_left == 0):
                        finish(error=ErrorCode.SEQUENCE)
                    with m.Else():
                        m.d.comb += [y_rd.start.eq(1), y_rd.base.eq(y_pos),
                                     y_rd.length.eq(chunk)]
                        m.d.sync += [y_pos.eq(y_pos + chunk), y_left.eq(y_left - chunk)]
                        m.next = "TR_SEND"
            with m.State("TR_BAD"):
                m.d.comb += rx.ready.eq(1)
                with m.If(pos == length):
                    finish(error=ErrorCode.BAD_REQUEST)
            with m.State("TR_SEND"):
                m.d.comb += [link.cmd_tx.valid.eq(y_rd.o.valid),
                             link.cmd_tx.payload.eq(y_rd.o.payload),
                             y_rd.o.ready.eq(link.cmd_tx.ready)]
                with m.If(~y_rd.busy):
                    finish(Opcode.TOEPLITZ_RESULT)
            # ---- LOAD_RECORDS: segments of first u48, count u32, nibbles ----
            with m.State("LR_HEAD"):
                with m.If(hcount == 10):
                    m.d.sync += [seg_first.eq(head[32:80]), seg_count.eq(head[:32])]
                    m.next = "LR_SEG"
                with m.Elif(pos == length):
                    with m.If(hcount != 0):
                        m.d.sync += bad.eq(1)
                    m.next = "LR_END"
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [head.eq(Cat(rx.payload, head[:72])), hcount.eq(hcount + 1)]
            with m.State("LR_SEG"):                  # the checks, registered
                m.d.sync += [
                    c_short.eq((seg_count == 0) | (length - pos < (seg_count + 1) >> 1)),
                    c_past.eq(seg_first + seg_count > (1 << SLOT_WIDTH)),
                    c_full.eq((tmp_loaded + seg_count > RECORD_DEPTH) |
                              (tmp_seg == SEGMENT_DEPTH)),
                    c_order.eq(seg_first < tmp_end),
                ]
                m.next = "LR_SEG2"
            with m.State("LR_SEG2"):
                with m.If(c_short):
                    m.d.sync += bad.eq(1)
                    m.next = "LR_SKIP"
                with m.Else():
                    with m.If(c_past):
                        m.d.sync += bad.eq(1)
                    with m.If(c_full):
                        m.d.sync += too_large.eq(1)
                    with m.If(c_order):
                        m.d.sync += order.eq(1)
                    m.d.sync += [nib_left.eq(seg_count), low.eq(0),
                                 seg.first.eq(seg_first), seg.count.eq(seg_count),
                                 seg.base.eq(tmp_loaded)]
                    m.next = "LR_NIB"
            with m.State("LR_NIB"):
                ok = ~bad & ~too_large & ~order
                with m.If(nib_left == 0):
                    m.d.comb += seg_w.en.eq(ok)
                    m.d.sync += [tmp_seg.eq(tmp_seg + 1), tmp_end.eq(seg_first + seg_count),
                                 hcount.eq(0), add_records.eq(add_records + seg_count)]
                    m.next = "LR_HEAD"
                with m.Elif(low):
                    m.d.comb += [rec_w.addr.eq(tmp_loaded), rec_w.data.eq(byte[:4]),
                                 rec_w.en.eq(ok)]
                    m.d.sync += [low.eq(0), nib_left.eq(nib_left - 1),
                                 tmp_loaded.eq(tmp_loaded + 1)]
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.comb += [rec_w.addr.eq(tmp_loaded), rec_w.data.eq(rx.payload[4:]),
                                     rec_w.en.eq(ok)]
                        m.d.sync += [byte.eq(rx.payload), low.eq(nib_left != 1),
                                     nib_left.eq(nib_left - 1), tmp_loaded.eq(tmp_loaded + 1)]
            with m.State("LR_SKIP"):                 # malformed: read to the end
                m.d.comb += rx.ready.eq(1)
                with m.If(pos == length):
                    m.next = "LR_END"
            with m.State("LR_END"):
                with m.If(bad):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Elif(too_large):
                    finish(error=ErrorCode.TOO_LARGE)
                with m.Elif(order):
                    finish(error=ErrorCode.SIFT_ORDER)
                with m.Else():
                    m.d.comb += commit_load.eq(1)
                    m.d.sync += [loaded.eq(tmp_loaded), n_seg.eq(tmp_seg), prev_end.eq(tmp_end)]
                    finish(Opcode.ACK)
            # ---- SIFT_REPORTS: 7-byte reports ----
            with m.State("SR_COUNT"):                # reports = length / 7, exactly
                with m.If(rest >= proto.REPORT_BYTES):
                    m.d.sync += [rest.eq(rest - proto.REPORT_BYTES), reports.eq(reports + 1)]
                with m.Else():
                    m.next = "SR_CHECK"
            with m.State("SR_CHECK"):
                with m.If(rest != 0):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Else():
                    # the records are cleared whatever the outcome
                    m.d.sync += [loaded.eq(0), n_seg.eq(0), prev_end.eq(0),
                                 tmp_seg.eq(n_seg), seg_idx.eq(0), cur_valid.eq(0),
                                 cur_open.eq(0), held.eq(0), sent.eq(0), answered.eq(0),
                                 matches.eq(0), failed.eq(0), ending.eq(0), rcount.eq(0)]
                    m.d.comb += sifter_reset.eq(1)
                    m.next = "SR_READ"
            with m.State("SR_READ"):
                with m.If(failed):
                    m.next = "SR_FAIL"
                with m.Elif(rcount == proto.REPORT_BYTES):
                    m.next = "SR_ROUTE0"
                with m.Elif(pos == length):
                    m.d.sync += ending.eq(1)
                    m.next = "SR_ROUTE"
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [rep.eq(Cat(rx.payload, rep[:48])), rcount.eq(rcount + 1)]
            with m.State("SR_ROUTE0"):
                m.d.sync += rep_in_block.eq(cur_valid & (rep_slot < cur_end))
                m.next = "SR_ROUTE"
            with m.State("SR_ROUTE"):
                # a new report (or the end) decides whether the held one ends its block
                new_in_block = Signal()
                m.d.comb += new_in_block.eq(~ending & rep_in_block)
                with m.If(~held):
                    with m.If(ending):
                        m.next = "SR_WAIT"
                    with m.Else():
                        m.d.sync += [held.eq(1), held_slot.eq(rep_slot),
                                     held_basis.eq(rep_basis), rcount.eq(0)]
                        m.next = "SR_CMP"
                with m.Else():
                    report = Signal.like(sifter.reports.payload)
                    m.d.comb += [report.slot.eq(held_slot), report.basis.eq(held_basis),
                                 report.last.eq(~new_in_block),
                                 reports_in.valid.eq(1), reports_in.payload.eq(report)]
                    with m.If(reports_in.ready):
                        m.d.sync += sent.eq(sent + 1)
                        with m.If(~new_in_block):
                            m.d.sync += cur_open.eq(0)
                        with m.If(ending):
                            m.d.sync += held.eq(0)
                            m.next = "SR_WAIT"
                        with m.Else():
                            m.d.sync += [held_slot.eq(rep_slot), held_basis.eq(rep_basis),
                                         rcount.eq(0)]
                            m.next = "SR_CMP"
            with m.State("SR_CMP"):
                m.d.sync += [f_in.eq(cur_valid & (held_slot >= cur.first) &
                                     (held_slot < cur_end)),
                             f_below.eq(cur_valid & (held_slot < cur.first)),
                             f_last.eq(seg_idx == tmp_seg)]
                m.next = "SR_PLACE"
            with m.State("SR_PLACE"):
                # find the segment of the held report, opening its sifter block
                with m.If(f_in):
                    with m.If(cur_open):
                        m.next = "SR_READ"
                    with m.Elif(~st_busy):
                        m.d.comb += first_in.valid.eq(1)
                        with m.If(first_in.ready):
                            m.d.comb += st_start.eq(1)
                            m.d.sync += cur_open.eq(1)
                            m.next = "SR_READ"
                with m.Elif(f_below):
                    m.d.sync += failed.eq(1)                  # in a gap, or not increasing
                    m.next = "SR_FAIL"
                with m.Elif(f_last):
                    m.d.sync += failed.eq(1)                  # beyond the last segment
                    m.next = "SR_FAIL"
                with m.Else():
                    m.next = "SR_FETCH"
            with m.State("SR_FETCH"):                 # seg_r.data is segment seg_idx
                m.d.sync += [cur.eq(seg_r.data), cur_valid.eq(1), seg_idx.eq(seg_idx + 1)]
                m.next = "SR_FETCH2"
            with m.State("SR_FETCH2"):
                m.d.sync += [cur_end.eq(cur.first + cur.count),
                             cur_rec_end.eq(cur.base + cur.count)]
                m.next = "SR_CMP"
            with m.State("SR_WAIT"):
                with m.If(sifter.error):
                    m.next = "SR_FAIL"
                with m.Elif((answered == sent) & ~st_busy):
                    m.d.comb += commit_sift.eq(1)
                    finish(Opcode.SIFT_RESULT)
            with m.State("SR_FAIL"):
                # drain the open block so the sifter is left idle, then report
                m.d.comb += [rx.ready.eq(1), sifter_reset.eq(1)]
                m.d.sync += st_busy.eq(0)
                with m.If(pos == length):
                    finish(error=ErrorCode.SIFT_ORDER)
        m.d.comb += self.idle.eq(link.idle)
        return m
