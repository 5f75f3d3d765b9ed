"""Host ↔ firmware link protocol (version 2): opcodes, register map and framing — defined once.

Both the gateware tops (``mozi.firmware``) and the host's device drivers
(``mozi.host.devices.device``) import this module, so an opcode, a register address, a register
width or the CRC can never disagree between the two sides.

Framing
-------
Every message, in either direction, is one frame::

    +------+------+--------+-----+-----------+---------------+---------+
    | 0xA5 | 0x5A | opcode | seq | length    | payload       | CRC-16  |
    |  1 B |  1 B |   1 B  | 1 B | 2 B, BE   | ``length`` B  | 2 B, BE |
    +------+------+--------+-----+-----------+---------------+---------+

The CRC is CRC-16/XMODEM (:data:`CRC`, from the Amaranth CRC catalog, so the gateware's
``amaranth.lib.crc.Processor`` and the host compute the very same function) over the opcode,
sequence, length and payload bytes. Multi-byte integers are big-endian (MSB first, like the
packed bits of DESIGN.md). A payload holds at most :data:`MAX_PAYLOAD` bytes, and at most the
device's ``LINK_MAX_PAYLOAD`` register in either direction (its frame buffers).

Both ends parse the byte stream with the same rules (:class:`Deframer`): outside a frame,
bytes up to the next ``A5 5A`` are skipped and counted as framing errors; a header whose
length exceeds the receiver's buffer is a framing error and hunting resumes after it; a frame
whose CRC does not match is counted and dropped whole.

Error semantics
---------------
The device buffers every request frame whole and checks its CRC before it acts, so a frame
that fails its CRC **has no effect**: the device answers ``ERROR`` ``BAD_FRAME`` (with the
sequence byte as received) and the host sends the request again. A response carries its
request's ``seq``. The device keeps its last response: a request with the same ``seq`` and
CRC as the last one it executed (a retry, or a duplicated frame) is answered from that copy
and not executed again (``LINK_RETRIES`` counts them); ``seq`` 0 is never treated as a
duplicate, and a driver starts with it. A request whose ``seq`` is neither 0, the last one's
nor its successor (1 … 255 cyclically) is a delayed copy of an older request: it is answered
``ERROR`` ``STALE`` and not executed. ``BAD_FRAME`` and ``STALE`` answers do not replace the
stored last response. A host that hears nothing for a while sends a *break* before it repeats
its request: ``LINK_MAX_PAYLOAD + FRAME_OVERHEAD`` bytes of :data:`BREAK_BYTE`, which hold no
sync byte and complete any frame the device is stuck inside (its tail lost): a header
completed by them has an oversize length, and a payload completed by them fails its CRC
(but for the CRC's 2**-16). (Zeros would not do: ``A5 5A`` followed by zeros is a valid frame.)
So a corrupted, truncated, duplicated, delayed or reordered frame in
either direction ends in a retry or in a clear error, never in a request executed twice or a
response taken for another request's.

Messages
--------
Requests (host → device) and their single response frame (device → host):

========================  =====================================  ============================
request                   payload                                response
========================  =====================================  ============================
``PING``                  anything (echoed)                      ``PONG`` (same payload)
``READ_REG``              address u16                            ``REG_VALUE`` address u16,
                                                                 value (register bytes)
``WRITE_REG``             address u16, value (register bytes)    ``ACK``
``RANDOM_WORDS``          count u16, 2-bit words packed 4 per    ``ACK``
                          byte, first word in bits 7..6
``TAG_EVENTS``            flags u8 (bit 0: ``last``), then       ``DETECTIONS``: events of
                          :data:`TAG_EVENT_BYTES`-byte events    :data:`DETECTION_BYTES` bytes
``LIVE_DETECTIONS``       max count u16 (>= 1), max clocks u32   ``DETECTIONS`` from the
                                                                 TimeTagger (``RX_SOURCE`` 1)
``LOAD_RECORDS``          first slot u48, count u32, 4-bit       ``ACK``
                          records packed 2 per byte (high
                          nibble first), repeated
``SIFT_REPORTS``          :data:`REPORT_BYTES`-byte reports      ``SIFT_RESULT``: one byte
                                                                 per report
``PATTERN_RECORDS``       max count u16 (>= 1)                   ``PATTERN``: count u16, the
                                                                 pattern generator's next
                                                                 records, 2 per byte (high
                                                                 nibble first)
``TOEPLITZ_START``        n u32, m u32                           ``ACK``
``TOEPLITZ_DATA``         the next bytes of the job's input      ``ACK``
                          (see below)
``TOEPLITZ_READ``         (empty)                                ``TOEPLITZ_RESULT``: the
                                                                 next bytes of packed y
========================  =====================================  ============================

Any request may instead be answered by ``ERROR``: code u8 (:class:`ErrorCode`), optionally
followed by a UTF-8 message (the gateware sends the code alone). A request answered by
``ERROR`` other than ``BAD_FRAME`` had no effect either, unless its code says otherwise.

Register values travel in :attr:`Register.nbytes` bytes, big-endian, holding the register's
``width`` bits (two's complement for a signed register) zero-extended: bits above ``width``
must be zero (else ``BAD_VALUE``). The ``value`` of the wire is converted in exactly one place,
:meth:`Register.encode` / :meth:`Register.decode`.

Toeplitz jobs
-------------
A job of ``n`` input bits and ``m`` output bits does not fit one frame at the sizes privacy
amplification uses ((10^6, 10^5) needs 262 kB), so it is streamed: ``TOEPLITZ_START`` fixes
``n`` and ``m`` (and aborts any job in progress); ``TOEPLITZ_DATA`` frames then carry, split
anywhere, the byte stream ``packbits(seed) ‖ packbits(x)`` — the seed first, as the hasher
core consumes it, each MSB-first and zero-padded to whole bytes, as the host holds its bits;
after the last byte the device hashes, and ``TOEPLITZ_READ`` frames return ``packbits(y)`` in
order, up to ``LINK_MAX_PAYLOAD`` bytes each. A ``TOEPLITZ_DATA`` beyond the job's bytes, or a
``TOEPLITZ_READ`` before the job is complete or after its last byte, is ``SEQUENCE``.

Wire records
------------
* tag event (:data:`TAG_EVENT_BYTES` = 9): timestamp u48 (ticks), mask u8 (bit 0 = H … bit 3 =
  A), lost u16 — the fields of :func:`mozi.hdl.layouts.tag_event_layout`;
* detection (:data:`DETECTION_BYTES` = 9): slot u48, flags u8 (bit 0 basis, bit 1 bit, bit 2
  multi), lost u16 — :func:`mozi.hdl.layouts.detection_layout`;
* report (:data:`REPORT_BYTES` = 7): slot u48, basis u8;
* sift result: ``match | bit << 1 | intensity << 2``.

Live mode (``TT_SOURCE`` 1): the TimeTagger feeds the slot assigner, and
``LIVE_DETECTIONS`` returns the detections that come out within ``max clocks`` clocks, at most
``max count`` (``max count * DETECTION_BYTES <= LINK_MAX_PAYLOAD``, else ``TOO_LARGE``).
Between requests the pipeline backs up into the tagger's FIFO, whose losses are counted
(``RX_TAGGER_LOST``) and reported in-band. ``TAG_EVENTS`` in live mode and
``LIVE_DETECTIONS`` outside it are ``SOURCE``.

Pattern generator (transmitter): while ``PG_ENABLE`` is 1, a slot begins every
``PG_SLOT_CLOCKS`` clocks (>= 1, else ``BAD_VALUE``). Each takes a 64-bit word from the
device's random source and fires the laser of its state with its intensity select, as
:func:`mozi.sim.model.alice_choices` maps words with the ``PG_T_*`` thresholds; a slot that
finds no word is dark (no laser, a vacuum record) and counted in ``PG_UNDERRUNS``. Each slot's
record joins a FIFO of ``PG_RECORD_CAPACITY`` records, in slot order from the first slot after
``PG_ENABLE`` was set (``PG_SLOTS`` counts them); a record that finds it full is lost and
counted in ``PG_RECORDS_LOST``. ``PATTERN_RECORDS`` takes up to ``max count`` of them (``2 +
ceil(max count / 2) <= LINK_MAX_PAYLOAD``, else ``TOO_LARGE``). The model backend has no
random source and no clock: it generates no slot.

The receiver's merge stage holds its latest event across ``TAG_EVENTS`` frames and emits it
when an event of another slot arrives or a frame with the ``last`` flag ends. The basis decoder
consumes exactly one random word per merged event (an event with an empty mask consumes its
word and is dropped, counted in ``RX_DROPPED``, its lost count riding on the next detection).
A ``TAG_EVENTS`` frame of ``k`` events needs ``k + 1`` words in the FIFO (``RANDOM_UNDERFLOW``
otherwise, with no effect) and ``(k + 1) * DETECTION_BYTES <= LINK_MAX_PAYLOAD``
(``TOO_LARGE``). The transmitter sifts each ``SIFT_REPORTS`` frame against the records loaded
since the previous one, then clears its record memory. Record segments are loaded in
increasing slot order, none overlapping the one before (``SIFT_ORDER`` otherwise) and none
running past slot ``2**48`` (``BAD_REQUEST``); records and segments beyond the capacity
registers are ``TOO_LARGE``; a malformed payload is ``BAD_REQUEST`` before anything else is
checked. A reported slot outside every loaded segment, or reports not strictly increasing,
are ``SIFT_ORDER``.
"""

from __future__ import annotations

import binascii
import dataclasses
import struct

import numpy as np
from amaranth.lib import enum
from amaranth.lib.crc import catalog
from mozi.sim.errors import MoziError

__all__ = [
    "BREAK_BYTE",
    "CRC",
    "DETECTION_BYTES",
    "DEVICE_ID",
    "DEVICE_MAX_PAYLOAD",
    "FRAME_OVERHEAD",
    "MAX_PAYLOAD",
    "MAX_REGISTER_BYTES",
    "PROTOCOL_VERSION",
    "REGISTERS",
    "REPORT_BYTES",
    "SYNC",
    "TAG_EVENT_BYTES",
    "ErrorCode",
    "Deframer",
    "Frame",
    "FrameError",
    "LinkCounters",
    "Opcode",
    "Register",
    "crc16",
    "decode_detections",
    "decode_frames",
    "decode_reports",
    "decode_tag_events",
    "encode_detections",
    "encode_frame",
    "encode_reports",
    "encode_tag_events",
    "pack_nibbles",
    "pack_words2",
    "register",
    "unpack_nibbles",
    "unpack_words2",
]

#: Frame start marker.
SYNC = b"\xa5\x5a"
#: Largest payload the frame format can carry, in bytes (a device's buffers hold less:
#: ``LINK_MAX_PAYLOAD``).
MAX_PAYLOAD = 0xFFFF
#: Payload bytes the firmware's frame buffers hold (``LINK_MAX_PAYLOAD``), each direction.
DEVICE_MAX_PAYLOAD = 4096
#: Version of this protocol, readable in the ``VERSION`` register.
PROTOCOL_VERSION = 2
#: Value of the ``ID`` register ("MOZI").
DEVICE_ID = 0x4D4F5A49
#: Bytes of a frame around its payload: sync, opcode, seq, length, CRC.
FRAME_OVERHEAD = 8
#: The link's UART rate after configuration: every board clocks its UART from a multiple of
#: 3 MHz so that its reset ``UART_DIVISOR`` gives exactly this, and the host's ``serial:PORT``
#: backend opens its port at it (the iCEBreaker's and the ULX3S's FTDI reach 3 Mbaud).
LINK_BAUD = 3_000_000
#: The byte a break is made of (see "Error semantics").
BREAK_BYTE = b"\xff"

#: CRC-16/XMODEM over 8-bit words (polynomial 0x1021, init 0, no reflection).
CRC = catalog.CRC16_XMODEM(8)

TAG_EVENT_BYTES = 9
DETECTION_BYTES = 9
REPORT_BYTES = 7

_HEADER = struct.Struct(">BBH")     # opcode, seq, length (after the sync bytes)


def _crc_fast_ok() -> bool:
    a = CRC.algorithm
    return (a.crc_width, a.polynomial, a.initial_crc, a.reflect_input, a.reflect_output,
            a.xor_output) == (16, 0x1021, 0, False, False, 0) and \
        CRC.compute(b"123456789") == binascii.crc_hqx(b"123456789", 0)


# binascii.crc_hqx *is* CRC-16/XMODEM; it is used only after checking it against the catalog.
_CRC_FAST = _crc_fast_ok()


def crc16(data: bytes) -> int:
    """CRC of ``data`` as defined by :data:`CRC` (the catalog's software ``compute()``).

    Parameters
    ----------
    data : bytes

    Returns
    -------
    int
        16-bit CRC.
    """
    if _CRC_FAST:
        return binascii.crc_hqx(data, 0)
    return CRC.compute(data)


class Opcode(enum.Enum, shape=8):
    """Message opcodes; requests below 0x80, responses from 0x80."""

    PING = 0x01
    READ_REG = 0x02
    WRITE_REG = 0x03
    RANDOM_WORDS = 0x10
    TAG_EVENTS = 0x11
    LIVE_DETECTIONS = 0x12
    LOAD_RECORDS = 0x20
    SIFT_REPORTS = 0x21
    PATTERN_RECORDS = 0x22
    TOEPLITZ_START = 0x30
    TOEPLITZ_DATA = 0x31
    TOEPLITZ_READ = 0x32
    PONG = 0x81
    REG_VALUE = 0x82
    ACK = 0x83
    DETECTIONS = 0x91
    SIFT_RESULT = 0xA1
    PATTERN = 0xA2
    TOEPLITZ_RESULT = 0xB0
    ERROR = 0xFF


class ErrorCode(enum.Enum, shape=8):
    """Reasons carried by an ``ERROR`` response."""

    BAD_REQUEST = 0x01       #: malformed payload for the opcode
    UNKNOWN_OPCODE = 0x02    #: opcode not a request this device serves
    BAD_ADDRESS = 0x03       #: no such register
    READ_ONLY = 0x04         #: write to a read-only register
    BAD_VALUE = 0x05         #: register value out of range (e.g. window outside the period)
    RANDOM_UNDERFLOW = 0x06  #: too few random words in the FIFO for the frame's events
    SIFT_ORDER = 0x07        #: reports not strictly increasing, or outside the loaded records
    TOO_LARGE = 0x08         #: the request or its response would not fit the device's memory
    BAD_FRAME = 0x09         #: CRC mismatch or oversize length: the frame had no effect
    SEQUENCE = 0x0A          #: a Toeplitz frame out of its job's order (no job, or too much)
    STALE = 0x0B             #: a request whose seq is neither the last one's nor the next
    SOURCE = 0x0C            #: TAG_EVENTS in live mode, or LIVE_DETECTIONS without it


class FrameError(MoziError):
    """A malformed frame or wire record."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes
    ----------
    opcode : int
        The opcode byte (an :class:`Opcode` value when known; :attr:`op` converts).
    payload : bytes
    seq : int
        Sequence byte.
    crc : int
        The frame's CRC (identifies a retried request).
    """

    opcode: int
    payload: bytes = b""
    seq: int = 0
    crc: int = 0

    @property
    def op(self) -> Opcode | None:
        """The opcode as :class:`Opcode`, or ``None`` for a byte that is no opcode."""
        try:
            return Opcode(self.opcode)
        except ValueError:
            return None


def encode_frame(opcode: Opcode, payload: bytes = b"", seq: int = 0) -> bytes:
    """Frame one message.

    Parameters
    ----------
    opcode : Opcode
    payload : bytes
        At most :data:`MAX_PAYLOAD` bytes.
    seq : int
        Sequence byte (a response carries its request's).

    Returns
    -------
    bytes
        ``SYNC, opcode, seq, length, payload, CRC``.
    """
    opcode = Opcode(opcode)
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = _HEADER.pack(opcode.value, seq & 0xFF, len(payload)) + payload
    return SYNC + body + struct.pack(">H", crc16(body))


@dataclasses.dataclass
class LinkCounters:
    """What a :class:`Deframer` counted: the link error registers of the device.

    Attributes
    ----------
    framing : int
        Bytes skipped outside a frame, plus headers with an oversize length.
    crc : int
        Frames dropped for a CRC mismatch.
    """

    framing: int = 0
    crc: int = 0


class Deframer:
    """The byte-stream parser of both ends (the gateware's deframer implements these rules).

    Bytes are fed in any pieces; complete frames come out. Outside a frame the parser hunts
    for ``A5 5A`` (every other byte counts as a framing error; an ``A5`` that is not followed
    by ``5A`` is one, and the byte after it is examined afresh). A header whose length exceeds
    ``max_payload`` is a framing error, reported as a ``BAD_FRAME`` event, and hunting resumes
    right after it. A frame with a bad CRC is counted, reported as a ``BAD_FRAME`` event, and
    dropped whole; hunting resumes after its last byte.

    Parameters
    ----------
    max_payload : int
        The receiving buffer's size.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self.counters = LinkCounters()
        self._buf = bytearray()

    def discard(self) -> None:
        """Forget a partly received frame (the sender stopped in the middle of it); the bytes
        are counted as framing errors."""
        self.counters.framing += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame | int]:
        """Parse ``data``; return, in order, each good :class:`Frame` and, for each frame that
        was dropped (bad CRC or oversize length), its sequence byte as received (an int)."""
        self._buf += data
        out: list[Frame | int] = []
        buf = self._buf
        pos = 0
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                # keep a trailing A5 (it may start a sync); everything else is skipped
                keep = len(buf) - 1 if buf[-1:] == SYNC[:1] else len(buf)
                self.counters.framing += max(0, keep - pos)
                pos = max(pos, keep)
                break
            self.counters.framing += start - pos
            if len(buf) - start < 2 + _HEADER.size:
                pos = start
                break
            op, seq, length = _HEADER.unpack_from(buf, start + 2)
            if length > self.max_payload:
                self.counters.framing += 1
                out.append(seq)
                pos = start + 2 + _HEADER.size
                continue
            end = start + 2 + _HEADER.size + length + 2
            if len(buf) < end:
                pos = start
                break
            body = bytes(buf[start + 2:end - 2])
            (crc,) = struct.unpack_from(">H", buf, end - 2)
            if crc != crc16(body):
                self.counters.crc += 1
                out.append(seq)
            else:
                out.append(Frame(op, body[_HEADER.size:], seq, crc))
            pos = end
        del buf[:pos]
        return out


def decode_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """Split a byte stream that must hold nothing but good frames (tests and tools).

    Parameters
    ----------
    buffer : bytes
        Received bytes, starting at a frame boundary.

    Returns
    -------
    frames : list of Frame
        Every complete frame at the start of ``buffer``.
    rest : bytes
        The bytes of an incomplete trailing frame.

    Raises
    ------
    FrameError
        Bytes outside a frame, a bad CRC or an oversize length.
    """
    d = Deframer()
    items = d.feed(bytes(buffer))
    if d.counters.framing or d.counters.crc or any(isinstance(f, int) for f in items):
        raise FrameError(f"malformed link stream ({d.counters.framing} framing errors, "
                         f"{d.counters.crc} CRC errors)")
    return [f for f in items if isinstance(f, Frame)], bytes(d._buf)


# --------------------------------------------------------------------------------------------
# Register map
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Register:
    """One device register.

    Attributes
    ----------
    name : str
    address : int
        16-bit register address.
    width : int
        Width in bits; the value travels in :attr:`nbytes` bytes.
    access : {"ro", "rw"}
    signed : bool
        Two's-complement value.
    block : {"device", "link", "receiver", "transmitter", "hasher"}
        Which part of the firmware implements it.
    doc : str
    port : str or None
        The gateware port the register drives or reads (a dotted path from the role top) —
        for a counter the link keeps, the core's own count of the same events; its width
        equals :attr:`width` (checked by a test). ``None`` for a constant or a counter of the
        top's own.
    """

    name: str
    address: int
    width: int
    access: str
    signed: bool
    block: str
    doc: str
    port: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the value on the wire."""
        return (self.width + 7) // 8

    def encode(self, value: int) -> bytes:
        """Value → its wire bytes (range-checked)."""
        lo, hi = (-(1 << (self.width - 1)), 1 << (self.width - 1)) if self.signed else \
            (0, 1 << self.width)
        if not lo <= value < hi:
            raise ValueError(f"{self.name} value {value} does not fit {self.width} bits")
        return (value & ((1 << self.width) - 1)).to_bytes(self.nbytes, "big")

    def decode(self, raw: bytes) -> int:
        """Wire bytes → the register value.

        Raises
        ------
        ValueError
            Wrong length, or bits set above :attr:`width`.
        """
        if len(raw) != self.nbytes:
            raise ValueError(f"{self.name} value needs {self.nbytes} bytes, not {len(raw)}")
        v = int.from_bytes(raw, "big")
        if v >> self.width:
            raise ValueError(f"{self.name} is {self.width} bits wide")
        if self.signed and v >> (self.width - 1):
            v -= 1 << self.width
        return v


def _r(name, address, width, access, block, doc, *, signed=False, port=None):
    return Register(name, address, width, access, signed, block, doc, port)


#: The register map, by name.
REGISTERS: dict[str, Register] = {r.name: r for r in [
    _r("ID", 0x0000, 32, "ro", "device", "Constant DEVICE_ID (ASCII 'MOZI')."),
    _r("VERSION", 0x0001, 16, "ro", "device", "PROTOCOL_VERSION."),
    _r("ROLE", 0x0002, 8, "ro", "device",
       "Implemented blocks: bit 0 receiver, bit 1 transmitter, bit 2 Toeplitz hasher."),
    _r("CTRL", 0x0003, 8, "rw", "device",
       "Write 1 to bit 0: clear the counters, merge state, random FIFO, record memory, "
       "Toeplitz job and pattern generator (stopped, FIFO emptied), and set SA_PERIOD to "
       "one tick, SA_OFFSET to 0 and the window to the whole slot (the link's registers are "
       "left alone). Reads 0."),
    _r("LINK_MAX_PAYLOAD", 0x0010, 16, "ro", "link",
       "Payload bytes the device's frame buffers hold (requests and responses)."),
    _r("LINK_CRC_ERRORS", 0x0011, 32, "ro", "link",
       "Request frames dropped for a CRC mismatch (saturating)."),
    _r("LINK_FRAMING_ERRORS", 0x0012, 32, "ro", "link",
       "Bytes skipped outside a frame plus headers with an oversize length (saturating)."),
    _r("LINK_RETRIES", 0x0013, 32, "ro", "link",
       "Requests answered again from the last response (same seq and CRC; saturating)."),
    _r("LINK_OVERFLOWS", 0x0014, 32, "ro", "link",
       "Bytes lost because the receive FIFO of the UART was full (saturating)."),
    _r("UART_DIVISOR", 0x0015, 16, "rw", "link",
       "Clocks per bit of the UART (the baud rate is the clock over this; >= 4). A new value "
       "takes effect once the ACK of its write has been sent.",
       port="link.divisor"),
    _r("SA_FRAC_BITS", 0x0100, 8, "ro", "receiver",
       "Fractional bits of the SlotAssigner's fixed-point registers (elaboration parameter)."),
    _r("SA_PERIOD", 0x0101, 32, "rw", "receiver",
       "Slot period in 2**-frac_bits ticks (> 0).", port="cores.assigner.period"),
    _r("SA_OFFSET", 0x0102, 65, "rw", "receiver",
       "Start of slot 0 in 2**-frac_bits ticks (signed, timestamp + frac + 1 bits).",
       signed=True, port="cores.assigner.offset"),
    _r("SA_WINDOW_START", 0x0103, 32, "rw", "receiver",
       "Acceptance window start, relative to the slot start (2**-frac_bits ticks).",
       port="cores.assigner.window_start"),
    _r("SA_WINDOW_END", 0x0104, 32, "rw", "receiver",
       "Acceptance window end (exclusive); 0 <= start < end <= period.",
       port="cores.assigner.window_end"),
    _r("TT_DEAD_TIME", 0x0105, 16, "rw", "receiver",
       "TimeTagger dead time per channel, in ticks.", port="cores.tagger.dead_time"),
    _r("TT_PHASES", 0x0106, 8, "ro", "receiver",
       "TimeTagger samples per clock and detector (elaboration parameter)."),
    _r("TT_SOURCE", 0x0107, 1, "rw", "receiver",
       "Where the slot assigner's events come from: 0 TAG_EVENTS (a replay), 1 the TimeTagger "
       "(live; read with LIVE_DETECTIONS).", port="cores.source"),
    _r("RX_EVENTS", 0x0110, 32, "ro", "receiver",
       "Tag events into the slot assigner, from either source (saturating)."),
    _r("RX_REJECTED", 0x0111, 32, "ro", "receiver",
       "Tag events outside the acceptance window (or before slot 0), dropped.",
       port="cores.assigner.rejected_count"),
    _r("RX_LOST", 0x0112, 32, "ro", "receiver",
       "Events lost upstream, summed from the in-band lost counts (saturating)."),
    _r("RX_DETECTIONS", 0x0113, 32, "ro", "receiver",
       "Detections emitted (after merging; saturating)."),
    _r("RX_MULTI", 0x0114, 32, "ro", "receiver",
       "Detections with more than one click (saturating)."),
    _r("RX_RANDOM_LEVEL", 0x0115, 13, "ro", "receiver", "Random words waiting in the FIFO.",
       port="random_fifo.level"),
    _r("RX_RANDOM_CAPACITY", 0x0116, 13, "ro", "receiver",
       "Depth of the random-word FIFO: RANDOM_WORDS beyond it is TOO_LARGE, and a TAG_EVENTS "
       "frame may carry at most this minus one events (each may need a word)."),
    _r("RX_DROPPED", 0x0117, 32, "ro", "receiver",
       "Merged events with an empty mask, dropped by the basis decoder.",
       port="cores.decoder.dropped"),
    _r("RX_TAGGER_LOST", 0x0118, 32, "ro", "receiver",
       "Events the TimeTagger dropped because its output was backed up.",
       port="cores.tagger.lost_count"),
    _r("TX_RECORDS", 0x0200, 32, "ro", "transmitter", "Alice records loaded (saturating)."),
    _r("TX_REPORTS", 0x0201, 32, "ro", "transmitter", "Bob reports sifted (saturating)."),
    _r("TX_MATCHES", 0x0202, 32, "ro", "transmitter",
       "Reports whose basis matched Alice's (saturating)."),
    _r("TX_RECORD_CAPACITY", 0x0203, 32, "ro", "transmitter",
       "Records the sifter's record memory holds between two SIFT_REPORTS."),
    _r("TX_SEGMENT_CAPACITY", 0x0204, 32, "ro", "transmitter",
       "Record segments (LOAD_RECORDS runs) it holds between two SIFT_REPORTS."),
    _r("PG_ENABLE", 0x0210, 1, "rw", "transmitter",
       "1: the pattern generator starts a slot every PG_SLOT_CLOCKS clocks."),
    _r("PG_SLOT_CLOCKS", 0x0211, 16, "rw", "transmitter",
       "Clocks per slot of the pattern generator (>= 1)."),
    _r("PG_T_BASIS", 0x0212, 32, "rw", "transmitter",
       "X basis iff word bits 62..32 >= this (p_z * 2**31).", port="pattern.t_basis"),
    _r("PG_T_INT0", 0x0213, 33, "rw", "transmitter",
       "Decoy or vacuum iff word bits 31..0 >= this (p_signal * 2**32).",
       port="pattern.t_int0"),
    _r("PG_T_INT1", 0x0214, 33, "rw", "transmitter",
       "Vacuum iff word bits 31..0 >= this too ((p_signal + p_decoy) * 2**32).",
       port="pattern.t_int1"),
    _r("PG_SLOTS", 0x0215, 32, "ro", "transmitter",
       "Slots the pattern generator has started (saturating)."),
    _r("PG_UNDERRUNS", 0x0216, 32, "ro", "transmitter",
       "Dark slots: no random word at the slot's start (saturating).",
       port="pattern.underruns"),
    _r("PG_RECORDS_LOST", 0x0217, 32, "ro", "transmitter",
       "Records lost because the record FIFO was full (saturating).",
       port="pattern.records_lost"),
    _r("PG_RECORD_CAPACITY", 0x0218, 16, "ro", "transmitter",
       "Records the pattern generator's FIFO holds."),
    _r("TH_MAX_N", 0x0300, 32, "ro", "hasher",
       "Largest n (input bits) of a Toeplitz job."),
    _r("TH_MAX_M", 0x0301, 32, "ro", "hasher",
       "Largest m (output bits) of a Toeplitz job."),
]}

_BY_ADDRESS = {r.address: r for r in REGISTERS.values()}
if len(_BY_ADDRESS) != len(REGISTERS):
    raise AssertionError("duplicate register address")
#: Widest register value on the wire, in bytes.
MAX_REGISTER_BYTES = max(r.nbytes for r in REGISTERS.values())


def register(key: str | int) -> Register:
    """Look a register up by name or address.

    Raises
    ------
    KeyError
        No such register.
    """
    if isinstance(key, str):
        return REGISTERS[key]
    return _BY_ADDRESS[key]


# --------------------------------------------------------------------------------------------
# Wire records (vectorised)
# --------------------------------------------------------------------------------------------

def _put_u48(out: np.ndarray, col: int, values: np.ndarray) -> None:
    v = np.asarray(values, np.uint64)
    if v.size and int(v.max()) >> 48:
        raise ValueError("value does not fit 48 bits")
    for k in range(6):
        out[:, col + k] = (v >> np.uint64(8 * (5 - k))) & np.uint64(0xFF)


def _get_u48(raw: np.ndarray, col: int) -> np.ndarray:
    v = np.zeros(raw.shape[0], np.uint64)
    for k in range(6):
        v = (v << np.uint64(8)) | raw[:, col + k].astype(np.uint64)
    return v


def _rows(payload: bytes, size: int, what: str) -> np.ndarray:
    if len(payload) % size:
        raise FrameError(f"{what} payload of {len(payload)} bytes is not a multiple of {size}")
    return np.frombuffer(payload, np.uint8).reshape(-1, size)


def encode_tag_events(timestamps, masks, lost=None) -> bytes:
    """Pack tag events (u48 timestamp, u8 mask, u16 lost each)."""
    ts = np.asarray(timestamps, np.uint64)
    out = np.zeros((ts.size, TAG_EVENT_BYTES), np.uint8)
    _put_u48(out, 0, ts)
    out[:, 6] = np.asarray(masks, np.uint8) & 0xF
    lo = np.zeros(ts.size, np.uint16) if lost is None else np.asarray(lost, np.uint16)
    out[:, 7] = lo >> 8
    out[:, 8] = lo & 0xFF
    return out.tobytes()


def decode_tag_events(payload: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_tag_events`: (timestamps u64, masks u8, lost u16)."""
    raw = _rows(payload, TAG_EVENT_BYTES, "tag event")
    lost = (raw[:, 7].astype(np.uint16) << 8) | raw[:, 8]
    return _get_u48(raw, 0), raw[:, 6] & 0xF, lost


def encode_detections(slots, basis, bit, multi, lost=None) -> bytes:
    """Pack detections (u48 slot, u8 basis|bit<<1|multi<<2, u16 lost each)."""
    s = np.asarray(slots, np.uint64)
    out = np.zeros((s.size, DETECTION_BYTES), np.uint8)
    _put_u48(out, 0, s)
    out[:, 6] = (np.asarray(basis, np.uint8) & 1) | ((np.asarray(bit, np.uint8) & 1) << 1) | \
        (np.asarray(multi, np.uint8).astype(bool).astype(np.uint8) << 2)
    lo = np.zeros(s.size, np.uint16) if lost is None else np.asarray(lost, np.uint16)
    out[:, 7] = lo >> 8
    out[:, 8] = lo & 0xFF
    return out.tobytes()


def decode_detections(payload: bytes) -> tuple[np.ndarray, ...]:
    """Inverse of :func:`encode_detections`: (slots u64, basis u8, bit u8, multi bool, lost)."""
    raw = _rows(payload, DETECTION_BYTES, "detection")
    f = raw[:, 6]
    lost = (raw[:, 7].astype(np.uint16) << 8) | raw[:, 8]
    return _get_u48(raw, 0), f & 1, (f >> 1) & 1, ((f >> 2) & 1).astype(bool), lost


def encode_reports(slots, basis) -> bytes:
    """Pack Bob's (slot u48, basis u8) reports."""
    s = np.asarray(slots, np.uint64)
    out = np.zeros((s.size, REPORT_BYTES), np.uint8)
    _put_u48(out, 0, s)
    out[:, 6] = np.asarray(basis, np.uint8) & 1
    return out.tobytes()


def decode_reports(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_reports`: (slots u64, basis u8)."""
    raw = _rows(payload, REPORT_BYTES, "report")
    return _get_u48(raw, 0), raw[:, 6] & 1


def pack_words2(words) -> bytes:
    """Pack 2-bit words 4 per byte, first word in bits 7..6 (zero padded)."""
    w = np.asarray(words, np.uint8) & 3
    pad = (-w.size) % 4
    w = np.concatenate([w, np.zeros(pad, np.uint8)]).reshape(-1, 4)
    return ((w[:, 0] << 6) | (w[:, 1] << 4) | (w[:, 2] << 2) | w[:, 3]).astype(np.uint8).tobytes()


def unpack_words2(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_words2` (``count`` words)."""
    b = np.frombuffer(data, np.uint8)
    if count > 4 * b.size:
        raise FrameError(f"{count} 2-bit words need {(count + 3) // 4} bytes, got {b.size}")
    w = np.stack([b >> 6, (b >> 4) & 3, (b >> 2) & 3, b & 3], axis=1).reshape(-1)
    return w[:count].astype(np.uint8)


def pack_nibbles(values) -> bytes:
    """Pack 4-bit values 2 per byte, high nibble first (zero padded)."""
    v = np.asarray(values, np.uint8) & 0xF
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    v = v.reshape(-1, 2)
    return ((v[:, 0] << 4) | v[:, 1]).astype(np.uint8).tobytes()


def unpack_nibbles(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles` (``count`` values)."""
    b = np.frombuffer(data, np.uint8)
    if count > 2 * b.size:
        raise FrameError(f"{count} nibbles need {(count + 1) // 2} bytes, got {b.size}")
    return np.stack([b >> 4, b & 0xF], axis=1).reshape(-1)[:count].astype(np.uint8)
