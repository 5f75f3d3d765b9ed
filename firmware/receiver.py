"""The ground-station receiver firmware: cores, random-word FIFO and the host link.

:class:`ReceiverCores` chains ``TimeTagger → SlotAssigner → BasisDecoder`` stream to stream
with ``connect()``; the slot assigner takes its events from the tagger or, for a replay, from
the ``inject`` stream. :class:`Receiver` is the role top: the cores, the random-word FIFO of
the basis decoder and the :class:`~mozi.firmware.link.Link`, serving ``RANDOM_WORDS`` and
``TAG_EVENTS`` exactly as :class:`mozi.host.devices.model.ModelTransport` does.

Throughput: the tagger takes one event per clock into its FIFO; the slot assigner then needs
about 54 clocks per event at typical detection rates (``SlotAssigner.event_cycles``: 84 clocks
less 16 for every 17-bit chunk of leading zeros in the gap to the previous event's slot), i.e.
~0.9 M detections/s at 48 MHz — well above the ~10^5/s of a satellite pass. Bursts above that
rate queue in the tagger FIFO; when it is full, events are dropped and counted
(``lost_count``) and reported in-band on the next event that gets through. Losses with no
later event (at the very end of a block) appear only in ``lost_count``, so the host reads the
counters at the end of every block.
"""

from amaranth import (
    Cat,
    ClockDomain,
    Const,
    Module,
    Mux,
    ResetInserter,
    ResetSignal,
    Signal,
    signed,
)
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out, connect
from mozi.firmware import protocol as proto
from mozi.firmware.link import (
    UART_REGISTERS,
    Link,
    command_end,
    connect_host,
    counter_port_name,
    host_port,
    register_port_name,
)
from mozi.firmware.protocol import ErrorCode, Opcode
from mozi.firmware.uart import UART
from mozi.hdl.basis_decoder import BasisDecoder
from mozi.hdl.common import SkidBuffer
from mozi.hdl.layouts import LOST_WIDTH, detection_layout, tag_event_layout
from mozi.hdl.slot_assigner import SlotAssigner
from mozi.hdl.time_tagger import TimeTagger

__all__ = ["RANDOM_DEPTH", "Receiver", "ReceiverCores"]

#: Depth of the basis decoder's random-word FIFO (``RX_RANDOM_CAPACITY``).
RANDOM_DEPTH = 4096


class ReceiverCores(wiring.Component):
    """TimeTagger, SlotAssigner and BasisDecoder in one stream pipeline.

    Parameters
    ----------
    phases : int
        Samples per clock and detector (1 with plain pins, 2 with DDR inputs, 4/8 with SERDES).
    timestamp_width, slot_width, frac_bits, period_width : int
        As for :class:`~mozi.hdl.time_tagger.TimeTagger` and
        :class:`~mozi.hdl.slot_assigner.SlotAssigner`.
    sample_domain : str
        The clock domain of the TimeTagger (its ``domain``); everything else is ``sync``, the
        tagger's FIFO crosses between the two when they differ.

    Ports
    -----
    pins : In(4 * phases)
        Detector samples, channel-major (H, V, D, A), phase 0 earliest, in ``sample_domain``.
    dead_time : In(16)
        Per-channel dead time in ticks.
    period, offset, window_start, window_end : In
        Slot assigner registers (fixed point, ``frac_bits`` fractional bits).
    flush : In(1)
        Emit the detection held by the slot assigner (end of a block).
    rand : In(stream.Signature(2))
        Random words for the multi-click rule, one per detection.
    inject : In(stream.Signature(tag_event_layout(timestamp_width)))
        Tag events replayed by the host, used instead of the tagger's while ``source`` is 0.
    source : In(1)
        0: the slot assigner takes ``inject``; 1: the TimeTagger (whose output waits, and
        counts its losses, while it is not selected). A change takes effect once no event of
        the old source is on the slot assigner's input (which reads it while it works on it).
    rebase : In(1)
        Strobe with every write of ``period`` or ``offset``.
    config_busy : Out(1)
        The slot assigner reads its registers: they must not change (see
        :class:`~mozi.hdl.slot_assigner.SlotAssigner`).
    o : Out(stream.Signature(detection_layout(slot_width)))
        Bob's detections: slot, basis, bit, multi-click flag, lost count.
    lost_count, rejected_count, dropped_count : Out(32)
        Events dropped by the tagger (output backed up), rejected by the window, and dropped
        by the decoder (empty mask).
    lost_inc : Out(tagger.drop_width), rejected_inc, dropped_inc : Out(1)
        The events each of those counts counted in this clock (for the link's counter bank).
    """

    def __init__(self, *, phases: int = 2, timestamp_width: int = 48, slot_width: int = 48,
                 frac_bits: int = 16, period_width: int = 32, sample_domain: str = "sync"):
        self.tagger = TimeTagger(channels=4, phases=phases, timestamp_width=timestamp_width,
                                 domain=sample_domain, o_domain="sync")
        self.assigner = SlotAssigner(timestamp_width=timestamp_width, slot_width=slot_width,
                                     frac_bits=frac_bits, channels=4, period_width=period_width)
        self.decoder = BasisDecoder(slot_width=slot_width, channels=4)
        super().__init__({
            "pins": In(4 * phases),
            "dead_time": In(len(self.tagger.dead_time)),
            "period": In(period_width),
            "offset": In(signed(len(self.assigner.offset))),
            "window_start": In(period_width),
            "window_end": In(period_width),
            "flush": In(1),
            "rand": In(stream.Signature(2)),
            "inject": In(stream.Signature(tag_event_layout(timestamp_width))),
            "source": In(1),
            "rebase": In(1),
            "config_busy": Out(1),
            "o": Out(stream.Signature(detection_layout(slot_width))),
            "lost_count": Out(32),
            "rejected_count": Out(32),
            "dropped_count": Out(32),
            "lost_inc": Out(self.tagger.drop_width), "rejected_inc": Out(1),
            "dropped_inc": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tagger = tagger = self.tagger
        m.submodules.assigner = assigner = self.assigner
        m.submodules.decoder = decoder = self.decoder
        # the source in force: it changes only between events, as the payload of the one on
        # the assigner's input must not change under it
        source = Signal()
        with m.If(~assigner.i.valid | assigner.i.ready):
            m.d.sync += source.eq(self.source)
        with m.If(source):
            connect(m, tagger=tagger.o, assigner=assigner.i)
        with m.Else():
            connect(m, wiring.flipped(self.inject), assigner.i)
        connect(m, assigner=assigner.o, decoder=decoder.i)
        connect(m, wiring.flipped(self.rand), decoder.rand)
        connect(m, decoder.o, wiring.flipped(self.o))
        m.d.comb += [
            tagger.pins.eq(self.pins),
            tagger.dead_time.eq(self.dead_time),
            assigner.period.eq(self.period),
            assigner.offset.eq(self.offset),
            assigner.window_start.eq(self.window_start),
            assigner.window_end.eq(self.window_end),
            assigner.flush.eq(self.flush),
            assigner.rebase.eq(self.rebase),
            self.config_busy.eq(assigner.config_busy),
            self.lost_count.eq(tagger.lost_count),
            self.rejected_count.eq(assigner.rejected_count),
            self.dropped_count.eq(decoder.dropped),
            self.lost_inc.eq(tagger.drop),
            self.rejected_inc.eq(assigner.reject),
            self.dropped_inc.eq(decoder.drop),
        ]
        return m


class Receiver(wiring.Component):
    """Ground-station role top: receiver cores, random-word FIFO and the host link.

    Parameters
    ----------
    phases : int
        TimeTagger samples per clock and detector.
    max_payload : int
        Frame buffer size of the link (``LINK_MAX_PAYLOAD``).
    frac_bits : int
        Fractional bits of the slot assigner.
    uart : bool
        The host link is a UART on the ``rx``/``tx`` pins (a board), not byte streams.
    uart_divisor : int
        Reset value of ``UART_DIVISOR`` (clocks per bit).
    sample_clock : bool
        The TimeTagger samples the detector pins on a clock of its own, ``sample_clk`` (the
        ``sample`` domain; on a board a PLL's output, as fast as the tagger closes timing),
        and everything else runs on the ``sync`` clock; the tagger's FIFO is the crossing.
        ``sample_clk`` must not be slower than ``sync``'s clock, nor more than
        :data:`~mozi.hdl.time_tagger.MAX_CLOCK_RATIO` times faster. Without it, one clock.

    Ports
    -----
    sample_clk : In(1)
        The tagger's clock, with ``sample_clock``. The ``sample`` domain is reset with ``sync``
        and by ``CTRL`` bit 0, through a synchroniser.
    i : In(stream.Signature(8)), o : Out(stream.Signature(8))
        The host link's bytes (the simulation port), without ``uart``.
    rx : In(1), tx : Out(1)
        The UART pins, with ``uart``.
    pins : In(4 * phases)
        Detector samples (in the ``sample`` domain with ``sample_clock``).
    idle : Out(1)
        The device waits for input (nothing being received, executed or sent).

    Notes
    -----
    ``TAG_EVENTS``: the frame's ``k`` events (``k`` from the length, by repeated subtraction
    of 9, before anything acts) are checked as the model checks them — reserved flag bits,
    length, ``k + 1`` random words present, ``k + 1`` detections fitting the response — and
    then stream from the frame buffer into the slot assigner while the detections stream into
    the response buffer. With ``last`` the slot assigner is flushed. The response is sent when
    every event has left the pipeline: the assigner is idle and no detection is in a register
    between it and the response buffer.
    """

    REGISTERS = ("SA_FRAC_BITS", "SA_PERIOD", "SA_OFFSET", "SA_WINDOW_START", "SA_WINDOW_END",
                 "TT_DEAD_TIME", "TT_PHASES", "TT_SOURCE", "RX_EVENTS", "RX_REJECTED", "RX_LOST",
                 "RX_DETECTIONS", "RX_MULTI", "RX_RANDOM_LEVEL", "RX_RANDOM_CAPACITY",
                 "RX_DROPPED", "RX_TAGGER_LOST")
    #: Clocks of sync the cores' reset lasts with ``sample_clock`` (also after configuration).
    RESET_CLOCKS = 8
    #: Of those, the counters the link keeps, by the width of their increment (with one
    #: clock; see :attr:`counters`).
    COUNTERS = {"RX_EVENTS": 1, "RX_REJECTED": 1, "RX_LOST": LOST_WIDTH, "RX_DETECTIONS": 1,
                "RX_MULTI": 1, "RX_DROPPED": 1, "RX_TAGGER_LOST": 1}

    def __init__(self, *, phases: int = 2, max_payload: int = proto.DEVICE_MAX_PAYLOAD,
                 frac_bits: int = 16, uart: bool = False, uart_divisor: int = 16,
                 sample_clock: bool = True):
        self.uart = UART() if uart else None
        self.phases = phases
        self.max_payload = max_payload
        self.frac_bits = frac_bits
        self.sample_clock = sample_clock
        self.cores = ReceiverCores(phases=phases, frac_bits=frac_bits,
                                   sample_domain="sample" if sample_clock else "sync")
        #: the link's counters (the tagger's losses cross clocks as a count per clock)
        self.counters = {**self.COUNTERS, "RX_TAGGER_LOST": len(self.cores.lost_inc)}
        one = 1 << frac_bits
        self.link = Link(role=1, registers=self.REGISTERS + (UART_REGISTERS if uart else ()),
                         opcodes=(Opcode.RANDOM_WORDS, Opcode.TAG_EVENTS,
                                  Opcode.LIVE_DETECTIONS),
                         counters=self.counters,
                         init={"SA_PERIOD": one, "SA_WINDOW_END": one,
                               "UART_DIVISOR": uart_divisor},
                         max_payload=max_payload)
        self.random_fifo = SyncFIFOBuffered(width=2, depth=RANDOM_DEPTH)
        super().__init__({**host_port(uart), "pins": In(4 * phases), "idle": Out(1),
                          **({"sample_clk": In(1)} if sample_clock else {})})

    def elaborate(self, platform):
        m = Module()
        link, cores, fifo = self.link, self.cores, self.random_fifo
        rst = Signal()                    # the cores' reset: CTRL bit 0
        m.submodules.link = link
        m.submodules.cores = ResetInserter(rst)(cores)
        m.submodules.random_fifo = ResetInserter(rst)(fifo)
        if self.sample_clock:
            # The tagger's domain is reset with sync and by CTRL bit 0, through a
            # synchroniser; its FIFO to sync wants both sides reset together (see
            # AsyncEventFIFO): the cores' reset is held for RESET_CLOCKS clocks, within which
            # the sample domain's (on a clock no slower) begins, and which it outlasts.
            m.domains.sample = sample = ClockDomain("sample", local=True)
            hold = Signal(range(self.RESET_CLOCKS), init=self.RESET_CLOCKS - 1)
            sync_rst = ResetSignal("sync", allow_reset_less=True)
            with m.If(link.soft_reset):
                m.d.sync += hold.eq(self.RESET_CLOCKS - 1)
            with m.Elif(hold != 0):
                m.d.sync += hold.eq(hold - 1)
            m.d.comb += [sample.clk.eq(self.sample_clk),
                         rst.eq(link.soft_reset | (hold != 0))]
            m.submodules.sample_reset = FFSynchronizer(rst | sync_rst, sample.rst,
                                                       o_domain="sample")
        else:
            m.d.comb += rst.eq(link.soft_reset)
        connect_host(m, self, link, self.uart)
        connect(m, fifo.r_stream, cores.rand)
        reg = {name: getattr(link, register_port_name(name)) for name in self.REGISTERS
               if name not in self.counters}
        inc = {name: getattr(link, counter_port_name(name)) for name in self.counters}
        assigner = cores.assigner
        m.d.comb += [
            cores.pins.eq(self.pins),
            cores.source.eq(reg["TT_SOURCE"]),
            cores.dead_time.eq(reg["TT_DEAD_TIME"]),
            cores.period.eq(reg["SA_PERIOD"]),
            cores.offset.eq(reg["SA_OFFSET"]),
            cores.window_start.eq(reg["SA_WINDOW_START"]),
            cores.window_end.eq(reg["SA_WINDOW_END"]),
            reg["SA_FRAC_BITS"].eq(self.frac_bits),
            reg["TT_PHASES"].eq(self.phases),
            inc["RX_REJECTED"].eq(cores.rejected_inc),
            inc["RX_DROPPED"].eq(cores.dropped_inc),
            inc["RX_TAGGER_LOST"].eq(cores.lost_inc),
            reg["RX_RANDOM_LEVEL"].eq(fifo.level),
            reg["RX_RANDOM_CAPACITY"].eq(RANDOM_DEPTH),
        ]

        # ---- register write rules (as the model's) -----------------------------------------
        period, ws, we = reg["SA_PERIOD"], reg["SA_WINDOW_START"], reg["SA_WINDOW_END"]
        # the link refuses a value with a bit set above the register's width by itself, so
        # the rules compare at the width of these registers (all of period's)
        v = link.w_value[:len(period)]
        m.d.comb += link.w_ok.eq(1)
        sa_regs = [proto.register(n).address for n in
                   ("SA_PERIOD", "SA_OFFSET", "SA_WINDOW_START", "SA_WINDOW_END")]
        base_regs = sa_regs[:2]
        m.d.comb += [
            # the slot assigner reads these while it works on an event: a write waits
            link.w_hold.eq(cores.config_busy & Cat(link.w_addr == a for a in sa_regs).any()),
            cores.rebase.eq(link.w_en & Cat(link.w_addr == a for a in base_regs).any()),
        ]
        ge_we = Signal()                  # one comparator for both rules against the end
        m.d.comb += ge_we.eq(v >= we)
        with m.Switch(link.w_addr):
            with m.Case(proto.register("SA_PERIOD").address):
                m.d.comb += link.w_ok.eq((v != 0) & ge_we)
            with m.Case(proto.register("SA_WINDOW_START").address):
                m.d.comb += link.w_ok.eq(~ge_we)
            with m.Case(proto.register("SA_WINDOW_END").address):
                m.d.comb += link.w_ok.eq((v > ws) & (v <= period))

        # ---- detections → response bytes -------------------------------------------------
        # a detection is sent byte by byte from the decoder's output register, and taken
        # with its last byte (once begun, also after the request stops collecting)
        det = cores.o.payload
        flags = Cat(det.basis, det.bit, det.multi, Const(0, 5))
        wire = Cat(det.lost[:8], det.lost[8:16], flags, det.slot)      # last byte first
        last = proto.DETECTION_BYTES - 1
        byte_at = Signal(range(proto.DETECTION_BYTES), init=last)   # the byte to send next
        at_first = Signal(init=1)          # byte_at == last, and byte_at == 0, as registers
        at_final = Signal()
        # A request takes detections now: a register, set and cleared by the request's states
        # a clock ahead (so that no count or comparison reaches the decoder's handshake).
        collecting = Signal()
        sending = Signal()
        m.d.comb += [
            sending.eq(cores.o.valid & (collecting | ~at_first)),
            link.cmd_tx.valid.eq(sending),
            link.cmd_tx.payload.eq(wire.word_select(byte_at, 8)),
            cores.o.ready.eq(cores.o.valid & at_final & link.cmd_tx.ready),
        ]
        with m.If(link.cmd_tx.valid & link.cmd_tx.ready):
            m.d.sync += [byte_at.eq(Mux(at_final, last, byte_at - 1)),
                         at_first.eq(at_final), at_final.eq(byte_at == 1)]
        with m.If(cores.o.valid & cores.o.ready):
            m.d.comb += [inc["RX_DETECTIONS"].eq(1), inc["RX_MULTI"].eq(det.multi)]
        drained = Signal()
        m.d.comb += drained.eq(assigner.idle & ~assigner.o.valid & ~cores.o.valid)

        # ---- requests ----------------------------------------------------------------------
        cmd = link.cmd.payload
        # the request's bytes through a skid buffer: no state's decision to take a byte reaches
        # the link's buffer reader; emptied as each request ends (what it holds is unread)
        done = link.cmd_done
        rx_buffer = SkidBuffer(8)
        m.submodules.rx_buffer = ResetInserter(done.valid)(rx_buffer)
        connect(m, link.cmd_rx, rx_buffer.i)
        rx = rx_buffer.o
        length = Signal.like(cmd.length)
        head = Signal(16)                 # RANDOM_WORDS count, or TAG_EVENTS flags
        count = Signal(range(self.max_payload + 1))
        events = Signal(range(self.max_payload + 1))
        rest = Signal.like(length)
        ev = Signal(8 * proto.TAG_EVENT_BYTES)
        byte = Signal(8)
        words = Signal(16)                # random words still to push
        sub = Signal(2)                   # word within the byte

        finish = command_end(m, link)

        # The requests' checks, registered every clock from registers that are stable for a
        # clock before the *_CHECK state that uses them (a check reaches cmd_done from a
        # flip-flop, not through a comparison)
        checks = {name: Signal(name=name) for name in
                  ("ld_bad", "ld_large", "rw_bad", "rw_large", "te_bad", "te_underflow",
                   "te_large")}
        m.d.sync += [
            checks["ld_bad"].eq((length != 6) | (ev[32:48] == 0)),
            checks["ld_large"].eq(ev[32:48] > self.max_payload // proto.DETECTION_BYTES),
            checks["rw_bad"].eq(length - 2 != (head + 3) >> 2),
            checks["rw_large"].eq(fifo.level + head > RANDOM_DEPTH),
            checks["te_bad"].eq((head[1:8] != 0) | (rest != 0)),
            checks["te_underflow"].eq(events >= fifo.level),            # k + 1 words needed
            # (k + 1) * DETECTION_BYTES > max_payload, without a multiplier
            checks["te_large"].eq(events >= self.max_payload // proto.DETECTION_BYTES),
        ]
        inj = cores.inject
        event = assigner.i.valid & assigner.i.ready
        m.d.comb += [inc["RX_EVENTS"].eq(event),
                     inc["RX_LOST"].eq(Mux(event, assigner.i.payload.lost, 0))]
        clocks = Signal(32)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += link.cmd.ready.eq(1)
                with m.If(link.cmd.valid):
                    m.d.sync += [length.eq(cmd.length), count.eq(0), head.eq(0)]
                    with m.If(cmd.opcode == Opcode.RANDOM_WORDS.value):
                        m.next = "RW_HEAD"
                    with m.Elif(cmd.opcode == Opcode.TAG_EVENTS.value):
                        m.next = "TE_SOURCE"
                    with m.Else():
                        m.next = "LD_HEAD"
            # LIVE_DETECTIONS: max count u16, max clocks u32
            with m.State("LD_HEAD"):
                with m.If(count == 6):
                    m.next = "LD_CHECK"
                with m.Elif(count == length):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [ev.eq(Cat(rx.payload, ev[:-8])), count.eq(count + 1)]
            with m.State("LD_CHECK"):
                with m.If(checks["ld_bad"]):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Elif(~reg["TT_SOURCE"]):
                    finish(error=ErrorCode.SOURCE)
                with m.Elif(checks["ld_large"]):
                    finish(error=ErrorCode.TOO_LARGE)
                with m.Else():
                    # the detections still wanted count down in `events`, the clocks left
                    # in `clocks`; collecting ends as the last of either goes
                    m.d.sync += [events.eq(ev[32:48]), clocks.eq(ev[:32]),
                                 collecting.eq(ev[:32] != 0)]
                    m.next = "LD_RUN"
            with m.State("LD_RUN"):
                m.d.sync += clocks.eq(clocks - 1)
                with m.If(clocks == 1):
                    m.d.sync += collecting.eq(0)
                with m.If(cores.o.valid & cores.o.ready):
                    m.d.sync += events.eq(events - 1)
                    with m.If(events == 1):
                        m.d.sync += collecting.eq(0)
                with m.If(~collecting):
                    m.next = "LD_END"
            with m.State("LD_END"):                   # a detection begun is sent whole
                with m.If(at_first):
                    finish(Opcode.DETECTIONS)
            with m.State("TE_SOURCE"):
                with m.If(reg["TT_SOURCE"]):
                    finish(error=ErrorCode.SOURCE)
                with m.Else():
                    m.next = "TE_HEAD"
            # RANDOM_WORDS: count u16, then the words packed 4 per byte
            with m.State("RW_HEAD"):
                with m.If(count == 2):
                    m.next = "RW_CHECK"
                with m.Elif(count == length):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [head.eq(Cat(rx.payload, head[:8])), count.eq(count + 1)]
            with m.State("RW_CHECK"):
                with m.If(checks["rw_bad"]):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Elif(checks["rw_large"]):
                    finish(error=ErrorCode.TOO_LARGE)
                with m.Else():
                    m.d.sync += [words.eq(head), sub.eq(0)]
                    m.next = "RW_BYTE"
            with m.State("RW_BYTE"):
                with m.If(words == 0):
                    finish(Opcode.ACK)
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += byte.eq(rx.payload)
                        m.next = "RW_PUSH"
            with m.State("RW_PUSH"):
                m.d.comb += [fifo.w_stream.valid.eq(1), fifo.w_stream.payload.eq(byte[6:8])]
                with m.If(fifo.w_stream.ready):
                    m.d.sync += [byte.eq(byte << 2), sub.eq(sub + 1), words.eq(words - 1)]
                    with m.If((sub == 3) | (words == 1)):
                        m.next = "RW_BYTE"
            # TAG_EVENTS: flags u8, then 9-byte events
            with m.State("TE_HEAD"):
                with m.If(length == 0):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [head.eq(rx.payload), rest.eq(length - 1), events.eq(0)]
                        m.next = "TE_COUNT"
            with m.State("TE_COUNT"):                 # k = (length - 1) / 9, exactly
                with m.If(rest >= proto.TAG_EVENT_BYTES):
                    m.d.sync += [rest.eq(rest - proto.TAG_EVENT_BYTES), events.eq(events + 1)]
                with m.Else():
                    m.next = "TE_CHECK"
            with m.State("TE_CHECK"):
                with m.If(checks["te_bad"]):
                    finish(error=ErrorCode.BAD_REQUEST)
                with m.Elif(checks["te_underflow"]):
                    finish(error=ErrorCode.RANDOM_UNDERFLOW)
                with m.Elif(checks["te_large"]):
                    finish(error=ErrorCode.TOO_LARGE)
                with m.Else():
                    m.d.sync += [count.eq(0), collecting.eq(1)]
                    m.next = "TE_READ"
            with m.State("TE_READ"):
                with m.If(events == 0):
                    m.next = "TE_END"
                with m.Elif(count == proto.TAG_EVENT_BYTES):
                    m.next = "TE_PUSH"
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        m.d.sync += [ev.eq(Cat(rx.payload, ev[:-8])), count.eq(count + 1)]
            with m.State("TE_PUSH"):
                # wire: timestamp u48, mask u8, lost u16 (big-endian) → the tag event layout
                m.d.comb += [inj.valid.eq(1),
                             inj.payload.timestamp.eq(ev[24:72]),
                             inj.payload.mask.eq(ev[16:20]),
                             inj.payload.lost.eq(ev[:16])]
                with m.If(inj.ready):
                    m.d.sync += [events.eq(events - 1), count.eq(0)]
                    m.next = "TE_READ"
            with m.State("TE_END"):
                m.d.comb += cores.flush.eq(head[0])
                m.next = "TE_DRAIN"
            with m.State("TE_DRAIN"):
                with m.If(drained):
                    m.d.sync += collecting.eq(0)
                    finish(Opcode.DETECTIONS)
        m.d.comb += self.idle.eq(link.idle)
        return m
