"""Host ↔ firmware link protocol: opcodes, register map and framing — defined once, here.

Both the gateware tops (``mozi.firmware``) and the host's device drivers (``mozi.host.device``)
import this module, so an opcode, a register address or the CRC can never disagree between the
two sides.

Framing
-------
Every message, in either direction, is one frame::

    +------+------+--------+-----------+---------------+---------+
    | 0xA5 | 0x5A | opcode | length    | payload       | CRC-16  |
    |  1 B |  1 B |   1 B  | 2 B, BE   | ``length`` B  | 2 B, BE |
    +------+------+--------+-----------+---------------+---------+

The CRC is CRC-16/XMODEM (:data:`CRC`, from the Amaranth CRC catalog, so the gateware's
``amaranth.lib.crc.Processor`` and the host compute the very same function) over the opcode,
length and payload bytes. Multi-byte integers are big-endian (MSB first, like the packed bits of
DESIGN.md). A payload holds at most :data:`MAX_PAYLOAD` bytes.

Messages
--------
Requests (host → device) and their single response frame (device → host):

========================  =====================================  ============================
request                   payload                                response
========================  =====================================  ============================
``PING``                  anything (echoed)                      ``PONG`` (same payload)
``READ_REG``              address u16                            ``REG_VALUE`` address u16,
                                                                 value u64
``WRITE_REG``             address u16, value u64                 ``ACK``
``RANDOM_WORDS``          count u32, 2-bit words packed 4 per    ``ACK``
                          byte, first word in bits 7..6
``TAG_EVENTS``            flags u8 (bit 0: ``last``), then       ``DETECTIONS``: events of
                          :data:`TAG_EVENT_BYTES`-byte events    :data:`DETECTION_BYTES` bytes
``LOAD_RECORDS``          first slot u48, count u32, 4-bit       ``ACK``
                          records packed 2 per byte (high
                          nibble first)
``SIFT_REPORTS``          :data:`REPORT_BYTES`-byte reports      ``SIFT_RESULT``: one byte
                                                                 per report
``TOEPLITZ``              n u32, m u32, packed x (n bits),       ``TOEPLITZ_RESULT``: packed
                          packed seed (n + m - 1 bits)           y (m bits)
========================  =====================================  ============================

Any request may instead be answered by ``ERROR``: code u8 (:class:`ErrorCode`) followed by a
UTF-8 message.

Wire records
------------
* tag event (:data:`TAG_EVENT_BYTES` = 9): timestamp u48 (ticks), mask u8 (bit 0 = H … bit 3 =
  A), lost u16 — the fields of :func:`mozi.hdl.layouts.tag_event_layout`;
* detection (:data:`DETECTION_BYTES` = 9): slot u48, flags u8 (bit 0 basis, bit 1 bit, bit 2
  multi), lost u16 — :func:`mozi.hdl.layouts.detection_layout`;
* report (:data:`REPORT_BYTES` = 7): slot u48, basis u8;
* sift result: ``match | bit << 1 | intensity << 2``.

The receiver's merge stage holds its latest event across ``TAG_EVENTS`` frames and emits it
when an event of another slot arrives or a frame with the ``last`` flag ends; the basis decoder
consumes exactly one random word per emitted event from the ``RANDOM_WORDS`` FIFO. The
transmitter sifts each ``SIFT_REPORTS`` frame against the records loaded since the previous one,
then clears its record memory (on the satellite that memory is the pattern generator's own
record stream; a replay loads only the slots that matter).
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
    "CRC",
    "DETECTION_BYTES",
    "DEVICE_ID",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "REGISTERS",
    "REPORT_BYTES",
    "SYNC",
    "TAG_EVENT_BYTES",
    "ErrorCode",
    "Frame",
    "FrameError",
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
#: Largest payload of one frame, in bytes.
MAX_PAYLOAD = 0xFFFF
#: Version of this protocol, readable in the ``VERSION`` register.
PROTOCOL_VERSION = 1
#: Value of the ``ID`` register ("MOZI").
DEVICE_ID = 0x4D4F5A49

#: CRC-16/XMODEM over 8-bit words (polynomial 0x1021, init 0, no reflection).
CRC = catalog.CRC16_XMODEM(8)

TAG_EVENT_BYTES = 9
DETECTION_BYTES = 9
REPORT_BYTES = 7

_HEADER = struct.Struct(">2sBH")


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
    LOAD_RECORDS = 0x20
    SIFT_REPORTS = 0x21
    TOEPLITZ = 0x30
    PONG = 0x81
    REG_VALUE = 0x82
    ACK = 0x83
    DETECTIONS = 0x91
    SIFT_RESULT = 0xA1
    TOEPLITZ_RESULT = 0xB0
    ERROR = 0xFF


class ErrorCode(enum.Enum, shape=8):
    """Reasons carried by an ``ERROR`` response."""

    BAD_REQUEST = 0x01       #: malformed payload for the opcode
    UNKNOWN_OPCODE = 0x02    #: opcode not a request this device serves
    BAD_ADDRESS = 0x03       #: no such register
    READ_ONLY = 0x04         #: write to a read-only register
    BAD_VALUE = 0x05         #: register value out of range (e.g. window outside the period)
    RANDOM_UNDERFLOW = 0x06  #: the basis decoder ran out of random words
    SIFT_ORDER = 0x07        #: reports not strictly increasing, or outside the loaded records
    TOO_LARGE = 0x08         #: the response would not fit a frame / the core's memory


class FrameError(MoziError):
    """A malformed frame: bad sync, oversize length, unknown opcode or CRC mismatch."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes
    ----------
    opcode : Opcode
    payload : bytes
    """

    opcode: Opcode
    payload: bytes = b""


def encode_frame(opcode: Opcode, payload: bytes = b"") -> bytes:
    """Frame one message.

    Parameters
    ----------
    opcode : Opcode
    payload : bytes
        At most :data:`MAX_PAYLOAD` bytes.

    Returns
    -------
    bytes
        ``SYNC, opcode, length, payload, CRC``.
    """
    opcode = Opcode(opcode)
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack(">BH", opcode.value, len(payload)) + payload
    return SYNC + body + struct.pack(">H", crc16(body))


def decode_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """Split a byte stream into complete frames.

    Parameters
    ----------
    buffer : bytes
        Received bytes, starting at a frame boundary.

    Returns
    -------
    frames : list of Frame
        Every complete frame at the start of ``buffer``.
    rest : bytes
        The bytes of an incomplete trailing frame (to prepend to the next read).

    Raises
    ------
    FrameError
        Bad sync bytes, unknown opcode or CRC mismatch (the stream cannot be trusted further).
    """
    frames: list[Frame] = []
    buf = memoryview(bytes(buffer))
    pos = 0
    while len(buf) - pos >= _HEADER.size:
        sync, op, length = _HEADER.unpack_from(buf, pos)
        if sync != SYNC:
            raise FrameError(f"bad frame sync {bytes(sync).hex()} at byte {pos}")
        end = pos + _HEADER.size + length + 2
        if len(buf) < end:
            break
        body = bytes(buf[pos + 2:end - 2])
        (crc,) = struct.unpack_from(">H", buf, end - 2)
        if crc != crc16(body):
            raise FrameError(f"frame CRC mismatch at byte {pos} (opcode 0x{op:02x})")
        try:
            opcode = Opcode(op)
        except ValueError:
            raise FrameError(f"unknown opcode 0x{op:02x} at byte {pos}") from None
        frames.append(Frame(opcode, body[3:]))
        pos = end
    return frames, bytes(buf[pos:])


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
        Width in bits (values travel as u64 on the wire).
    access : {"ro", "rw"}
    signed : bool
        Two's-complement value (sign-extended from ``width`` bits).
    block : {"device", "receiver", "transmitter"}
        Which part of the firmware implements it.
    doc : str
    """

    name: str
    address: int
    width: int
    access: str
    signed: bool
    block: str
    doc: str

    def encode(self, value: int) -> int:
        """Value → the unsigned u64 that travels on the wire (range-checked)."""
        lo, hi = (-(1 << (self.width - 1)), 1 << (self.width - 1)) if self.signed else \
            (0, 1 << self.width)
        if not lo <= value < hi:
            raise ValueError(f"{self.name} value {value} does not fit {self.width} bits")
        return value & ((1 << 64) - 1)

    def decode(self, raw: int) -> int:
        """Wire u64 → the register value (sign-extended when signed)."""
        raw &= (1 << self.width) - 1
        if self.signed and raw >> (self.width - 1):
            raw -= 1 << self.width
        return raw


def _r(name, address, width, access, block, doc, signed=False):
    return Register(name, address, width, access, signed, block, doc)


#: The register map, by name.
REGISTERS: dict[str, Register] = {r.name: r for r in [
    _r("ID", 0x0000, 32, "ro", "device", "Constant DEVICE_ID (ASCII 'MOZI')."),
    _r("VERSION", 0x0001, 16, "ro", "device", "PROTOCOL_VERSION."),
    _r("ROLE", 0x0002, 8, "ro", "device",
       "Implemented blocks: bit 0 receiver, bit 1 transmitter, bit 2 Toeplitz hasher."),
    _r("CTRL", 0x0003, 8, "rw", "device",
       "Write 1 to bit 0: clear counters, merge state, random FIFO and record memory, and "
       "set SA_PERIOD to one tick, SA_OFFSET to 0 and the window to the whole slot."),
    _r("SA_FRAC_BITS", 0x0100, 8, "ro", "receiver",
       "Fractional bits of the SlotAssigner's fixed-point registers (elaboration parameter)."),
    _r("SA_PERIOD", 0x0101, 32, "rw", "receiver",
       "Slot period in 2**-frac_bits ticks (> 0); SlotAssigner period_width = 32."),
    _r("SA_OFFSET", 0x0102, 64, "rw", "receiver",
       "Start of slot 0 in 2**-frac_bits ticks (signed).", signed=True),
    _r("SA_WINDOW_START", 0x0103, 32, "rw", "receiver",
       "Acceptance window start, relative to the slot start (2**-frac_bits ticks)."),
    _r("SA_WINDOW_END", 0x0104, 32, "rw", "receiver",
       "Acceptance window end (exclusive); 0 <= start < end <= period."),
    _r("RX_EVENTS", 0x0110, 64, "ro", "receiver", "Tag events received."),
    _r("RX_REJECTED", 0x0111, 64, "ro", "receiver",
       "Tag events outside the acceptance window (or before slot 0), dropped."),
    _r("RX_LOST", 0x0112, 64, "ro", "receiver",
       "Events lost upstream, summed from the in-band lost counts."),
    _r("RX_DETECTIONS", 0x0113, 64, "ro", "receiver", "Detections emitted (after merging)."),
    _r("RX_MULTI", 0x0114, 64, "ro", "receiver", "Detections with more than one click."),
    _r("RX_RANDOM_LEVEL", 0x0115, 32, "ro", "receiver", "Random words waiting in the FIFO."),
    _r("RX_RANDOM_CAPACITY", 0x0116, 32, "ro", "receiver",
       "Depth of the random-word FIFO: RANDOM_WORDS beyond it is TOO_LARGE, and a TAG_EVENTS "
       "frame may carry at most this minus one events (each may need a word)."),
    _r("TX_RECORDS", 0x0200, 64, "ro", "transmitter", "Alice records loaded."),
    _r("TX_REPORTS", 0x0201, 64, "ro", "transmitter", "Bob reports sifted."),
    _r("TX_MATCHES", 0x0202, 64, "ro", "transmitter", "Reports whose basis matched Alice's."),
    _r("TX_RECORD_CAPACITY", 0x0203, 32, "ro", "transmitter",
       "Records the sifter's record memory holds between two SIFT_REPORTS."),
    _r("TH_MAX_BITS", 0x0300, 32, "ro", "device",
       "Largest n + m - 1 the Toeplitz hasher accepts in one TOEPLITZ request."),
]}

_BY_ADDRESS = {r.address: r for r in REGISTERS.values()}
if len(_BY_ADDRESS) != len(REGISTERS):
    raise AssertionError("duplicate register address")


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
