"""The host link in gateware: deframer → CRC check → dispatcher → response framer.

:class:`Link` implements :mod:`mozi.firmware.protocol` for a role top: it takes the host's
bytes on :attr:`Link.i` (from the UART PHY, or from the wide simulation port), buffers each
request frame whole in block RAM and checks its CRC before anything acts on it, answers the
requests every device serves (``PING``, ``READ_REG``, ``WRITE_REG``) from a register bank
generated from :data:`~mozi.firmware.protocol.REGISTERS`, hands every other request it was
built for to the role top on :attr:`Link.cmd` (payload bytes on :attr:`Link.cmd_rx`, response
bytes on :attr:`Link.cmd_tx`, the outcome on :attr:`Link.cmd_done`), and frames the response
on :attr:`Link.o`. The rules — hunting for the sync bytes, dropping a frame with a bad CRC or
an oversize length with a ``BAD_FRAME`` answer, answering a repeated request (same ``seq``
and CRC) from the last response, refusing a stale ``seq`` — are those of
:class:`mozi.firmware.protocol.Deframer` and :class:`mozi.host.devices.model.ModelTransport`,
byte for byte.

Error answers carry their code alone and are framed from a register, so a ``BAD_FRAME`` never
overwrites the stored last response.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from mozi.firmware import protocol as proto
from mozi.firmware.counter_bank import CounterBank
from mozi.firmware.protocol import ErrorCode, Opcode
from mozi.firmware.uart import MIN_DIVISOR
from mozi.hdl.common import collision_free_read

__all__ = ["BufferReader", "Deframer", "Framer", "Link", "UART_REGISTERS", "command_end",
           "connect_host", "counter_port_name", "host_port", "register_port_name"]

_SYNC0, _SYNC1 = proto.SYNC
#: Registers every link implements itself.
LINK_REGISTERS = ("ID", "VERSION", "ROLE", "CTRL", "LINK_MAX_PAYLOAD", "LINK_CRC_ERRORS",
                  "LINK_FRAMING_ERRORS", "LINK_RETRIES")
#: Registers of a link whose physical layer is a UART.
UART_REGISTERS = ("UART_DIVISOR", "LINK_OVERFLOWS")
#: The link's own counters in its :class:`CounterBank`, with their increment widths (up to
#: two framing errors a clock); ``LINK_OVERFLOWS`` counts ``counter_port_name`` strobes.
LINK_COUNTERS = {"LINK_CRC_ERRORS": 1, "LINK_FRAMING_ERRORS": 2, "LINK_RETRIES": 1}
_VALUE_BITS = 8 * proto.MAX_REGISTER_BYTES


def host_port(uart: bool) -> dict:
    """A role top's host-side ports: the UART pins, or the byte streams (simulation)."""
    if uart:
        return {"rx": In(1), "tx": Out(1, init=1)}
    return {"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))}


def command_end(m: Module, link: Link):
    """A role top's end of a request, driving ``link.cmd_done`` from registers: returns
    ``finish(opcode=None, error=None)``, which (inside the top's FSM) ends the request — with
    the response ``opcode``, or an ``ERROR`` with code ``error`` — and goes back to ``IDLE``.

    The link sees the end a clock later, so the top's decision (often a comparison) reaches
    none of the link's state; the link takes no new request before it has seen it."""
    valid = Signal()
    payload = Signal.like(link.cmd_done.payload)
    m.d.sync += valid.eq(0)
    m.d.comb += [link.cmd_done.valid.eq(valid), link.cmd_done.payload.eq(payload)]

    def finish(opcode=None, error=None):
        m.d.sync += [valid.eq(1), payload.error.eq(error is not None),
                     payload.opcode.eq(error.value if error is not None else opcode.value)]
        m.next = "IDLE"
    return finish


def connect_host(m: Module, top, link: Link, uart) -> None:
    """Join a role top's host port (see :func:`host_port`) to its link, through ``uart``
    (a :class:`mozi.firmware.uart.UART`, or ``None`` for the byte streams)."""
    if uart is None:
        wiring.connect(m, wiring.flipped(top.i), link.i)
        wiring.connect(m, link.o, wiring.flipped(top.o))
        return
    m.submodules.uart = uart
    wiring.connect(m, uart.o, link.i)
    wiring.connect(m, link.o, uart.i)
    m.d.comb += [uart.rx.eq(top.rx), top.tx.eq(uart.tx),
                 getattr(link, counter_port_name("LINK_OVERFLOWS")).eq(uart.lost)]
    # a new rate takes effect once the ACK of its write has left at the old one
    divisor = getattr(link, register_port_name("UART_DIVISOR"))
    rate = Signal.like(divisor, init=divisor.init)
    with m.If(link.idle & uart.i.ready & ~uart.tx_busy):
        m.d.sync += rate.eq(divisor)
    m.d.comb += uart.divisor.eq(rate)


def register_port_name(name: str) -> str:
    """The :class:`Link` port of register ``name`` (``SA_PERIOD`` → ``reg_sa_period``)."""
    return "reg_" + name.lower()


def counter_port_name(name: str) -> str:
    """The :class:`Link` port that increments counter ``name`` (``RX_LOST`` → ``inc_rx_lost``)."""
    return "inc_" + name.lower()


def _shape(reg: proto.Register):
    return signed(reg.width) if reg.signed else reg.width


def frame_layout(max_payload: int) -> data.StructLayout:
    """A received frame's header, as the deframer hands it on."""
    return data.StructLayout({"opcode": 8, "seq": 8, "length": range(max_payload + 1),
                              "crc": 16})


class BufferReader(wiring.Component):
    """Streams ``length`` bytes of a buffer from address ``base``, one per clock.

    The block RAM's output is registered before anything uses it, and the consumer's
    ``ready`` reaches no address: reads are issued while a four-byte FIFO has room for them
    (block-RAM clock-to-out is the slowest path of an ECP5 otherwise).

    Ports
    -----
    start : In(1)
        Strobe: begin streaming ``length`` bytes from address ``base`` (ignored while busy).
    length : In(range(depth + 1))
    base : In(range(depth))
    addr : Out(range(depth)), en : Out(1), data : In(8)
        The buffer's synchronous read port (data one clock after addr, when en).
    o : Out(stream.Signature(8))
    last : Out(1)
        The byte offered on ``o`` is the final one.
    busy : Out(1)
        Bytes remain to be delivered.
    """

    FIFO_DEPTH = 4

    def __init__(self, depth: int):
        self.depth = depth
        super().__init__({
            "start": In(1), "length": In(range(depth + 1)), "base": In(range(depth)),
            "addr": Out(range(depth)), "en": Out(1), "data": In(8),
            "o": Out(stream.Signature(8)), "last": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self.FIFO_DEPTH)
        wiring.connect(m, fifo.r_stream, wiring.flipped(self.o))
        idx = Signal(range(2 * self.depth + 1))
        end = Signal.like(idx)
        left = Signal(range(self.depth + 1))        # bytes not yet delivered
        issued = Signal()                           # a read was issued last clock
        landed = Signal()                           # its data is in the output register
        held = Signal(8)
        issue = Signal()
        m.d.comb += [
            issue.eq((idx != end) & (fifo.level + issued + landed < self.FIFO_DEPTH)),
            self.addr.eq(idx), self.en.eq(issue),
            fifo.w_stream.valid.eq(landed), fifo.w_stream.payload.eq(held),
            self.busy.eq(left != 0),
            self.last.eq(left == 1),
        ]
        m.d.sync += [issued.eq(issue), landed.eq(issued), held.eq(self.data)]
        with m.If(issue):
            m.d.sync += idx.eq(idx + 1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += left.eq(left - 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [idx.eq(self.base), end.eq(self.base + self.length),
                         left.eq(self.length)]
        return m


class Deframer(wiring.Component):
    """Byte stream → whole, CRC-checked frames in a buffer (the rules of ``proto.Deframer``).

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes from the host. Not ready while a frame waits on ``frame`` or ``bad``.
    w_addr, w_data, w_en : Out
        The frame buffer's write port (payload byte ``k`` at address ``k``).
    frame : Out(stream.Signature(frame_layout(max_payload)))
        A good frame is in the buffer; taking it releases the buffer.
    bad : Out(stream.Signature(8))
        A frame was dropped (bad CRC or oversize length): its sequence byte as received.
    framing_inc : Out(2), crc_inc : Out(1)
        Framing errors (bytes skipped, oversize lengths) and CRC errors of this clock, for
        ``LINK_FRAMING_ERRORS`` and ``LINK_CRC_ERRORS``.
    waiting : Out(1)
        Waiting for a byte (no complete frame held).
    """

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        super().__init__({
            "i": In(stream.Signature(8)),
            "w_addr": Out(range(max_payload)), "w_data": Out(8), "w_en": Out(1),
            "frame": Out(stream.Signature(frame_layout(max_payload))),
            "bad": Out(stream.Signature(8)),
            "framing_inc": Out(2), "crc_inc": Out(1),
            "waiting": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = proto.CRC.create()
        hdr = self.frame.payload
        count = Signal(range(max(self.max_payload, 4) + 1))
        byte = self.i.payload
        take = self.i.valid & self.i.ready
        framing_inc = self.framing_inc   # 0, 1 or 2 bytes skipped this clock
        crc_inc = self.crc_inc
        m.d.comb += [crc.data.eq(byte), self.w_data.eq(byte), self.w_addr.eq(count),
                     self.waiting.eq(self.i.ready)]

        with m.FSM():
            with m.State("SYNC0"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take):
                    with m.If(byte == _SYNC0):
                        m.next = "SYNC1"
                    with m.Else():
                        m.d.comb += framing_inc.eq(1)
            with m.State("SYNC1"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take):
                    with m.If(byte == _SYNC1):
                        m.d.comb += crc.start.eq(1)
                        m.d.sync += count.eq(0)
                        m.next = "HEADER"
                    with m.Elif(byte == _SYNC0):
                        m.d.comb += framing_inc.eq(1)        # the earlier A5
                    with m.Else():
                        m.d.comb += framing_inc.eq(2)
                        m.next = "SYNC0"
            with m.State("HEADER"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += count.eq(count + 1)
                    with m.Switch(count):
                        with m.Case(0):
                            m.d.sync += hdr.opcode.eq(byte)
                        with m.Case(1):
                            m.d.sync += hdr.seq.eq(byte)
                        with m.Case(2):
                            m.d.sync += hdr.length.eq(byte << 8)
                        with m.Case(3):
                            length = Cat(byte, hdr.length[8:16])
                            m.d.sync += [hdr.length.eq(length), count.eq(0)]
                            with m.If(length > self.max_payload):
                                m.d.comb += framing_inc.eq(1)
                                m.next = "BAD"
                            with m.Elif(length == 0):
                                m.next = "CRC"
                            with m.Else():
                                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take):
                    m.d.comb += [crc.valid.eq(1), self.w_en.eq(1)]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == hdr.length - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += [count.eq(count + 1), hdr.crc.eq(Cat(byte, hdr.crc[:8]))]
                    with m.If(count == 1):
                        m.next = "CHECK"
            with m.State("CHECK"):                      # the CRC register settled
                with m.If(crc.match_detected):
                    m.next = "HOLD"
                with m.Else():
                    m.d.comb += crc_inc.eq(1)
                    m.next = "BAD"
            with m.State("HOLD"):
                m.d.comb += self.frame.valid.eq(1)
                with m.If(self.frame.ready):
                    m.next = "SYNC0"
            with m.State("BAD"):
                m.d.comb += [self.bad.valid.eq(1), self.bad.payload.eq(hdr.seq)]
                with m.If(self.bad.ready):
                    m.next = "SYNC0"
        return m


def send_layout(max_payload: int) -> data.StructLayout:
    """A response to frame: opcode, seq, payload length in the buffer, or one inline byte."""
    return data.StructLayout({"opcode": 8, "seq": 8, "length": range(max_payload + 1),
                              "inline": 1, "code": 8})


class Framer(wiring.Component):
    """Frames one response: ``SYNC``, opcode, seq, length, payload, CRC-16.

    The payload is ``length`` bytes of the response buffer, or (``inline``) the single byte
    ``code`` — error answers, which so never touch the buffer.

    Ports
    -----
    send : In(stream.Signature(send_layout(max_payload)))
        Taken when idle; the frame then goes out on ``o``.
    r_addr : Out, r_en : Out(1), r_data : In(8)
        The response buffer's synchronous read port.
    o : Out(stream.Signature(8))
    busy : Out(1)
    """

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        super().__init__({
            "send": In(stream.Signature(send_layout(max_payload))),
            "r_addr": Out(range(max_payload)), "r_en": Out(1), "r_data": In(8),
            "o": Out(stream.Signature(8)), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = proto.CRC.create()
        m.submodules.reader = reader = BufferReader(self.max_payload)
        job = Signal.like(self.send.payload)
        length = Signal(16)
        m.d.comb += [self.r_addr.eq(reader.addr), self.r_en.eq(reader.en),
                     reader.data.eq(self.r_data),
                     length.eq(Mux(job.inline, 1, job.length)),
                     reader.length.eq(job.length)]
        # step: 0 idle, 1-2 sync, 3 opcode, 4 seq, 5-6 length, 7 payload, 8-9 CRC
        step = Signal(4)
        take = self.o.valid & self.o.ready
        m.d.comb += [crc.data.eq(self.o.payload), crc.start.eq(step == 1),
                     crc.valid.eq(take & (step >= 3) & (step <= 7)),
                     self.busy.eq(step != 0)]
        header = {1: _SYNC0, 2: _SYNC1, 3: job.opcode, 4: job.seq, 5: length[8:16],
                  6: length[:8], 8: crc.crc[8:16], 9: crc.crc[:8]}
        with m.Switch(step):
            with m.Case(0):
                m.d.comb += self.send.ready.eq(1)
                with m.If(self.send.valid):
                    m.d.sync += [job.eq(self.send.payload), step.eq(1)]
            for k, byte in header.items():
                with m.Case(k):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(byte)]
            with m.Case(7):
                with m.If(job.inline):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(job.code)]
                with m.Else():
                    m.d.comb += [self.o.valid.eq(reader.o.valid),
                                 self.o.payload.eq(reader.o.payload),
                                 reader.o.ready.eq(self.o.ready)]
        with m.If(take):
            with m.Switch(step):
                with m.Case(6):
                    m.d.sync += step.eq(Mux(length == 0, 8, 7))
                    m.d.comb += reader.start.eq(~job.inline & (length != 0))
                with m.Case(7):
                    with m.If(job.inline | reader.last):
                        m.d.sync += step.eq(8)
                with m.Case(9):
                    m.d.sync += step.eq(0)
                with m.Default():
                    m.d.sync += step.eq(step + 1)
        return m


class Link(wiring.Component):
    """The protocol engine of a role top.

    Parameters
    ----------
    role : int
        ``ROLE`` register value.
    registers : sequence of str
        The registers of the role top, beyond :data:`LINK_REGISTERS`. Each gets a port named
        by :func:`register_port_name`: ``Out`` (the register's storage) for a ``rw`` register,
        ``In`` (the value to read) for a ``ro`` one, with the register's width and sign —
        except counters.
    counters : dict of str to int
        Of those, the saturating counters the link keeps in its :class:`CounterBank` (with
        :data:`LINK_COUNTERS` and ``LINK_OVERFLOWS``), by the width of their increment: each
        gets an ``In`` port named by :func:`counter_port_name`, added to the count every
        clock. ``CTRL`` bit 0 clears them, but not the link's own.
    opcodes : sequence of Opcode
        Requests handed to the role top on ``cmd``.
    init : dict of str to int
        Reset values of ``rw`` registers (default 0); ``CTRL`` bit 0 restores them too.
    max_payload : int
        Payload bytes of each frame buffer (``LINK_MAX_PAYLOAD``).

    Ports
    -----
    i : In(stream.Signature(8)), o : Out(stream.Signature(8))
        The host's bytes, in and out.
    w_addr : Out(16), w_value : Out(72)
        A write about to happen (valid while ``w_check``): the role top says on ``w_ok``
        whether the value is acceptable (``BAD_VALUE`` otherwise).
    w_check : Out(1), w_ok : In(1)
        (``w_ok`` is 1 when the role top leaves it undriven: no rules.)
    w_hold : In(1)
        The accepted write of ``w_addr`` waits while this is high (a core is reading the
        register); ``w_en`` is the clock it takes effect.
    w_en : Out(1)
    soft_reset : Out(1)
        One-clock strobe when ``CTRL`` bit 0 is written (after the ``rw`` registers are
        restored); the role top clears its cores.
    cmd : Out(stream.Signature({opcode: 8, length}))
        A role request, offered once (the role top takes it, then ends it on ``cmd_done``).
    cmd_rx : Out(stream.Signature(8))
        Its payload bytes (the role top need not read them all).
    cmd_tx : In(stream.Signature(8))
        Response payload bytes (always ready; the top must not exceed ``max_payload``).
    cmd_done : In(stream.Signature({opcode: 8, error: 1}))
        Ends the request: with ``error`` the response is ``ERROR`` with code ``opcode``, and
        any ``cmd_tx`` bytes are discarded; otherwise the response opcode.
    idle : Out(1)
        Nothing in progress: no frame partly received, no request executing, no byte to send.
    """

    def __init__(self, *, role: int, registers=(), opcodes=(), counters=None, init=None,
                 max_payload: int = proto.DEVICE_MAX_PAYLOAD):
        self.role = role
        self.max_payload = max_payload
        self.opcodes = tuple(Opcode(op) for op in opcodes)
        names = list(LINK_REGISTERS) + [n for n in registers if n not in LINK_REGISTERS]
        self.registers = [proto.register(n) for n in names]
        self.init = dict(init or {})
        self.counters = dict(LINK_COUNTERS)
        if "LINK_OVERFLOWS" in names:
            self.counters["LINK_OVERFLOWS"] = 1
        for name, width in (counters or {}).items():
            reg = proto.register(name)
            if name not in names or reg.access != "ro" or reg.signed:
                raise ValueError(f"counter {name} must be an unsigned read-only register "
                                 "of the link")
            self.counters[name] = width
        widths = {proto.register(n).width for n in self.counters}
        if len(widths) != 1:
            raise ValueError(f"counters of different widths: {sorted(self.counters)}")
        self.counter_width = widths.pop()
        ports = {
            "i": In(stream.Signature(8)), "o": Out(stream.Signature(8)),
            "w_addr": Out(16), "w_value": Out(_VALUE_BITS),
            "w_check": Out(1), "w_ok": In(1, init=1),
            "w_hold": In(1), "w_en": Out(1),
            "soft_reset": Out(1),
            "cmd": Out(stream.Signature(data.StructLayout(
                {"opcode": 8, "length": range(max_payload + 1)}))),
            "cmd_rx": Out(stream.Signature(8)),
            "cmd_tx": In(stream.Signature(8)),
            "cmd_done": In(stream.Signature(data.StructLayout({"opcode": 8, "error": 1}))),
            "idle": Out(1),
        }
        for name, width in self.counters.items():
            if name not in LINK_COUNTERS:
                ports[counter_port_name(name)] = In(width)
        for reg in self.registers:
            if reg.name in LINK_REGISTERS or reg.name in self.counters:
                continue
            ports[register_port_name(reg.name)] = \
                Out(_shape(reg), init=self.init.get(reg.name, 0)) if reg.access == "rw" \
                else In(_shape(reg))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        P = self.max_payload
        m.submodules.rx_mem = rx_mem = Memory(shape=8, depth=P, init=[])
        m.submodules.tx_mem = tx_mem = Memory(shape=8, depth=P, init=[])
        m.submodules.deframer = dfr = Deframer(P)
        m.submodules.framer = fr = Framer(P)
        m.submodules.reader = rd = BufferReader(P)
        # a buffer is never read while it is written: the request buffer while the deframer
        # holds a frame (and takes no byte), the response buffer once the framer is idle
        rx_w = rx_mem.write_port()
        rx_r, rx_data = collision_free_read(m, rx_mem, en=rd.en)
        tx_w = tx_mem.write_port()
        tx_r, tx_data = collision_free_read(m, tx_mem, en=fr.r_en)
        wiring.connect(m, wiring.flipped(self.i), dfr.i)
        wiring.connect(m, fr.o, wiring.flipped(self.o))
        m.d.comb += [
            rx_w.addr.eq(dfr.w_addr), rx_w.data.eq(dfr.w_data), rx_w.en.eq(dfr.w_en),
            rx_r.addr.eq(rd.addr), rd.data.eq(rx_data),
            tx_r.addr.eq(fr.r_addr), fr.r_data.eq(tx_data),
        ]
        hdr = dfr.frame.payload
        m.d.comb += rd.length.eq(hdr.length)

        # ---- response buffer writer ------------------------------------------------------
        tx_count = Signal(range(P + 1))
        tx_byte = Signal(8)
        tx_put = Signal()
        m.d.comb += [tx_w.addr.eq(tx_count), tx_w.data.eq(tx_byte), tx_w.en.eq(tx_put)]
        with m.If(tx_put):
            m.d.sync += tx_count.eq(tx_count + 1)

        # ---- the last response, for repeated requests ------------------------------------
        last_valid = Signal()
        last_seq = Signal(8)
        last_crc = Signal(16)
        last = Signal(send_layout(P))
        retry_inc = Signal()

        # ---- counters ----------------------------------------------------------------------
        counter_names = list(self.counters)
        m.submodules.counters = bank = CounterBank(
            [self.counters[n] for n in counter_names],
            cleared=[proto.register(n).block != "link" for n in counter_names],
            width=self.counter_width)
        sources = {"LINK_CRC_ERRORS": dfr.crc_inc, "LINK_FRAMING_ERRORS": dfr.framing_inc,
                   "LINK_RETRIES": retry_inc}
        for k, name in enumerate(counter_names):
            m.d.comb += bank.inc[k].eq(sources[name] if name in sources
                                       else getattr(self, counter_port_name(name)))
        m.d.comb += bank.clear.eq(self.soft_reset)

        # ---- registers -------------------------------------------------------------------
        values = {
            "ID": Const(proto.DEVICE_ID, 32), "VERSION": Const(proto.PROTOCOL_VERSION, 16),
            "ROLE": Const(self.role, 8), "CTRL": Const(0, 8),
            "LINK_MAX_PAYLOAD": Const(P, 16),
        }
        for reg in self.registers:
            if reg.name not in values and reg.name not in self.counters:
                values[reg.name] = getattr(self, register_port_name(reg.name))
        addr = Signal(16)
        # a WRITE_REG's value, assembled MSB-first from the wire (so LSB-aligned once whole);
        # a READ_REG's, loaded MSB-aligned and sent from its top byte (one shift register)
        value = Signal(_VALUE_BITS)
        known = Signal()
        writable = Signal()
        nbytes = Signal(range(proto.MAX_REGISTER_BYTES + 1))
        high_clear = Signal()                # no bit set above the register's width
        # (a value is nbytes bytes shifted into zeros, so only its top byte can break that)
        value_ok = Signal()                  # … and the value obeys the register's rules
        read_value = Signal(_VALUE_BITS)     # MSB-aligned: the first byte to send on top
        is_counter = Signal()                # … its value comes from the counter bank
        with m.Switch(addr):
            for reg in self.registers:
                with m.Case(reg.address):
                    m.d.comb += [known.eq(1), writable.eq(reg.access == "rw"),
                                 nbytes.eq(reg.nbytes),
                                 high_clear.eq(value[reg.width:8 * reg.nbytes] == 0)]
                    if reg.name in self.counters:
                        m.d.comb += [is_counter.eq(1),
                                     bank.rd_index.eq(counter_names.index(reg.name))]
                    else:
                        m.d.comb += read_value.eq(values[reg.name].as_unsigned()
                                                  << _VALUE_BITS - 8 * reg.nbytes)
        # what REG_CHECK and REG_VALUE decide on, registered: the address is whole a clock
        # before REG_CHECK (REG_ADDR sees count == 2 first), so the decode reaches no state
        known_r, writable_r, is_counter_r = Signal(), Signal(), Signal()
        nbytes_r = Signal.like(nbytes)
        length_ok = Signal()                 # a WRITE_REG's length: address and value
        m.d.sync += [known_r.eq(known), writable_r.eq(writable), is_counter_r.eq(is_counter),
                     nbytes_r.eq(nbytes), length_ok.eq(hdr.length == 2 + nbytes)]
        m.d.comb += [self.w_addr.eq(addr), self.w_value.eq(value)]
        do_write = self.w_en
        with m.If(do_write):
            with m.Switch(addr):
                for reg in self.registers:
                    if reg.access != "rw" or reg.name == "CTRL":
                        continue
                    with m.Case(reg.address):
                        port = getattr(self, register_port_name(reg.name))
                        m.d.sync += port.eq(value[:reg.width])
        reset_pending = Signal()
        m.d.sync += [self.soft_reset.eq(0), reset_pending.eq(0)]
        with m.If(reset_pending):
            m.d.sync += self.soft_reset.eq(1)
            for reg in self.registers:
                # the link's own registers (the UART's rate) survive: the ACK still goes out
                if reg.access == "rw" and reg.name != "CTRL" and reg.block != "link":
                    port = getattr(self, register_port_name(reg.name))
                    m.d.sync += port.eq(self.init.get(reg.name, 0))

        # ---- dispatcher ------------------------------------------------------------------
        count = Signal(range(P + 1))
        err = Signal(8)
        resp_op = Signal(8)
        role_op = Signal()
        for op in self.opcodes:
            with m.If(hdr.opcode == op.value):
                m.d.comb += role_op.eq(1)
        m.d.comb += [self.cmd.payload.opcode.eq(hdr.opcode),
                     self.cmd.payload.length.eq(hdr.length)]

        def respond_error(code):
            m.d.sync += err.eq(code)
            m.next = "ERROR"

        def start_rx():
            m.d.comb += rd.start.eq(1)

        dup = Signal()
        stale = Signal()
        cmd_taken = Signal()
        done = Signal.like(self.cmd_done.payload)
        next_seq = Signal(8)
        m.d.comb += [
            next_seq.eq(Mux(last_seq == 255, 1, last_seq + 1)),
            dup.eq(last_valid & (hdr.seq != 0) & (hdr.seq == last_seq) &
                   (hdr.crc == last_crc)),
            stale.eq(last_valid & (hdr.seq != 0) & (hdr.seq != next_seq)),
        ]
        send = fr.send.payload
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(dfr.waiting & ~fr.busy)
                with m.If(dfr.bad.valid):
                    m.next = "BAD_FRAME"
                with m.Elif(dfr.frame.valid & ~fr.busy):
                    m.d.sync += [tx_count.eq(0), count.eq(0), value.eq(0)]
                    with m.If(dup):
                        m.d.comb += retry_inc.eq(1)
                        m.next = "REPEAT"
                    with m.Elif(stale):
                        m.next = "STALE"
                    with m.Elif(hdr.opcode == Opcode.PING.value):
                        start_rx()
                        m.next = "PING"
                    with m.Elif((hdr.opcode == Opcode.READ_REG.value) |
                                (hdr.opcode == Opcode.WRITE_REG.value)):
                        start_rx()
                        m.next = "REG_ADDR"
                    with m.Elif(role_op):
                        start_rx()
                        m.next = "CMD"
                    with m.Else():
                        respond_error(ErrorCode.UNKNOWN_OPCODE.value)
            with m.State("BAD_FRAME"):
                m.d.comb += [fr.send.valid.eq(1), send.opcode.eq(Opcode.ERROR.value),
                             send.seq.eq(dfr.bad.payload), send.inline.eq(1),
                             send.code.eq(ErrorCode.BAD_FRAME.value)]
                with m.If(fr.send.ready):
                    m.d.comb += dfr.bad.ready.eq(1)
                    m.next = "IDLE"
            with m.State("STALE"):
                m.d.comb += [fr.send.valid.eq(1), send.opcode.eq(Opcode.ERROR.value),
                             send.seq.eq(hdr.seq), send.inline.eq(1),
                             send.code.eq(ErrorCode.STALE.value)]
                with m.If(fr.send.ready):
                    m.d.comb += dfr.frame.ready.eq(1)
                    m.next = "IDLE"
            with m.State("REPEAT"):
                m.d.comb += [fr.send.valid.eq(1), send.eq(last), send.seq.eq(hdr.seq)]
                with m.If(fr.send.ready):
                    m.d.comb += dfr.frame.ready.eq(1)
                    m.next = "IDLE"
            with m.State("PING"):
                m.d.comb += [rd.o.ready.eq(1), tx_byte.eq(rd.o.payload),
                             tx_put.eq(rd.o.valid)]
                with m.If(~rd.busy & ~rd.start):
                    m.d.sync += resp_op.eq(Opcode.PONG.value)
                    m.next = "RESPOND"
            with m.State("REG_ADDR"):
                with m.If((count == 2) | ~rd.busy):
                    m.next = "REG_CHECK"
                with m.Else():
                    m.d.comb += rd.o.ready.eq(1)
                    with m.If(rd.o.valid):
                        m.d.sync += [addr.eq(Cat(rd.o.payload, addr[:8])),
                                     count.eq(count + 1)]
            with m.State("REG_CHECK"):
                is_read = hdr.opcode == Opcode.READ_REG.value
                with m.If(hdr.length < 2):
                    respond_error(ErrorCode.BAD_REQUEST.value)
                with m.Elif(~known_r):
                    respond_error(ErrorCode.BAD_ADDRESS.value)
                with m.Elif(is_read):
                    with m.If(hdr.length != 2):
                        respond_error(ErrorCode.BAD_REQUEST.value)
                    with m.Else():
                        m.d.sync += [value.eq(read_value), count.eq(0),
                                     resp_op.eq(Opcode.REG_VALUE.value)]
                        with m.If(is_counter_r):
                            m.next = "REG_COUNT"
                        with m.Else():
                            m.next = "REG_VALUE"
                with m.Elif(~length_ok):
                    respond_error(ErrorCode.BAD_REQUEST.value)
                with m.Elif(~writable_r):
                    respond_error(ErrorCode.READ_ONLY.value)
                with m.Else():
                    m.d.sync += count.eq(0)
                    m.next = "REG_DATA"
            with m.State("REG_COUNT"):              # the counter's total at its next visit
                m.d.comb += bank.rd_req.eq(1)
                with m.If(bank.rd_valid):
                    counter_bytes = proto.register(counter_names[0]).nbytes
                    m.d.sync += value.eq(bank.rd_value << _VALUE_BITS - 8 * counter_bytes)
                    m.next = "REG_VALUE"
            with m.State("REG_VALUE"):
                # the address, then the value's nbytes bytes, MSB first
                m.d.comb += tx_put.eq(1)
                with m.Switch(count):
                    with m.Case(0):
                        m.d.comb += tx_byte.eq(addr[8:16])
                    with m.Case(1):
                        m.d.comb += tx_byte.eq(addr[:8])
                    with m.Default():
                        m.d.comb += tx_byte.eq(value[-8:])
                        m.d.sync += value.eq(value << 8)
                m.d.sync += count.eq(count + 1)
                with m.If(count == 1 + nbytes_r):
                    m.next = "RESPOND"
            with m.State("REG_DATA"):
                m.d.comb += rd.o.ready.eq(1)
                with m.If(rd.o.valid):
                    m.d.sync += value.eq(Cat(rd.o.payload, value[:_VALUE_BITS - 8]))
                with m.If(~rd.busy & ~rd.start):
                    m.next = "REG_RULES"
            with m.State("REG_RULES"):
                # the value's checks (wide comparisons in the role's rules), registered
                m.d.comb += self.w_check.eq(high_clear)
                rule_ok = Signal()
                m.d.comb += rule_ok.eq(self.w_ok)
                if "UART_DIVISOR" in {r.name for r in self.registers}:
                    divisor = proto.register("UART_DIVISOR")
                    with m.If(addr == divisor.address):
                        m.d.comb += rule_ok.eq(value[:divisor.width] >= MIN_DIVISOR)
                m.d.sync += value_ok.eq(high_clear & rule_ok)
                m.next = "REG_WRITE"
            with m.State("REG_WRITE"):
                with m.If(~value_ok):
                    respond_error(ErrorCode.BAD_VALUE.value)
                with m.Elif(~self.w_hold):
                    m.d.comb += do_write.eq(1)
                    with m.If((addr == proto.register("CTRL").address) & value[0]):
                        m.d.sync += reset_pending.eq(1)
                    m.d.sync += resp_op.eq(Opcode.ACK.value)
                    m.next = "RESPOND"
            with m.State("CMD"):
                m.d.comb += self.cmd.valid.eq(~cmd_taken)
                with m.If(self.cmd.ready):
                    m.d.sync += cmd_taken.eq(1)
                wiring.connect(m, rd.o, wiring.flipped(self.cmd_rx))
                m.d.comb += [self.cmd_tx.ready.eq(1), tx_byte.eq(self.cmd_tx.payload),
                             tx_put.eq(self.cmd_tx.valid), self.cmd_done.ready.eq(1)]
                with m.If(self.cmd_done.valid):
                    # registered: the role's decision logic reaches no link state but this
                    m.d.sync += [cmd_taken.eq(0), done.eq(self.cmd_done.payload)]
                    m.next = "CMD_DONE"
            with m.State("CMD_DONE"):
                with m.If(done.error):
                    respond_error(done.opcode)
                with m.Else():
                    m.d.sync += resp_op.eq(done.opcode)
                    m.next = "DRAIN"
            with m.State("DRAIN"):                     # unread payload bytes are skipped
                m.d.comb += rd.o.ready.eq(1)
                with m.If(~rd.busy):
                    m.next = "RESPOND"
            with m.State("ERROR"):
                m.d.comb += rd.o.ready.eq(1)
                with m.If(~rd.busy):
                    m.d.comb += [fr.send.valid.eq(1), send.opcode.eq(Opcode.ERROR.value),
                                 send.seq.eq(hdr.seq), send.inline.eq(1), send.code.eq(err)]
                    with m.If(fr.send.ready):
                        m.d.sync += [last.eq(send), last_valid.eq(1), last_seq.eq(hdr.seq),
                                     last_crc.eq(hdr.crc)]
                        m.d.comb += dfr.frame.ready.eq(1)
                        m.next = "IDLE"
            with m.State("RESPOND"):
                m.d.comb += [fr.send.valid.eq(1), send.opcode.eq(resp_op),
                             send.seq.eq(hdr.seq), send.length.eq(tx_count)]
                with m.If(fr.send.ready):
                    m.d.sync += [last.eq(send), last_valid.eq(1), last_seq.eq(hdr.seq),
                                 last_crc.eq(hdr.crc)]
                    m.d.comb += dfr.frame.ready.eq(1)
                    m.next = "IDLE"
        return m
