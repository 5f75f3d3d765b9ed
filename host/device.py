"""The host's device layer: one interface over the link protocol, three backends.

The host never calls the golden models directly: it talks to *a device* by exchanging the
frames of :mod:`mozi.firmware.protocol` through a :class:`Transport`. Three backends give the
transport (DESIGN.md, Glasgow's applet/transport split):

* ``model`` — :class:`ModelTransport`, an in-process emulation of the firmware that parses the
  frames and executes them with :mod:`mozi.sim.model` (this module);
* ``rtl`` — the firmware top in Verilator, reached through the same bytes (a later issue);
* ``serial:PORT`` — a real board (a later issue).

On top of a transport, drivers speak in blocks of events, never one round trip per event:

* :class:`ReceiverDriver` (Bob): program the SlotAssigner registers per block, stream tag
  events, get back decoded detections (slot, basis, bit, multi) and read the counters;
* :class:`TransmitterDriver` (Alice): load her records for the reported slots, stream Bob's
  report, get match flags with her bit and intensity;
* :class:`HasherDriver`: Toeplitz hashing on the device.
"""

from __future__ import annotations

import abc
import dataclasses
import secrets
import struct
from collections.abc import Callable, Iterable

import numpy as np
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import ErrorCode, Frame, FrameError, Opcode
from mozi.host.randomness import ByteStream
from mozi.sim import model
from mozi.sim.errors import MoziError

__all__ = [
    "DEVICE_SPECS",
    "DeviceError",
    "DeviceUnavailable",
    "Detections",
    "HasherDriver",
    "ModelTransport",
    "RandomWordSource",
    "ReceiverDriver",
    "SiftOutcome",
    "SlotBlock",
    "Transport",
    "TransmitterDriver",
    "open_device",
]

#: Device specifications understood by :func:`open_device`.
DEVICE_SPECS = ("model", "rtl", "serial:PORT")

#: Tag events per ``TAG_EVENTS`` frame (the DETECTIONS answer, one more event, must fit too).
MAX_EVENTS_PER_FRAME = 7000
#: Reports per ``SIFT_REPORTS`` frame.
MAX_REPORTS_PER_FRAME = (proto.MAX_PAYLOAD // proto.REPORT_BYTES) - 1

_ROLE_RECEIVER = 1
_ROLE_TRANSMITTER = 2
_ROLE_HASHER = 4


class DeviceError(MoziError):
    """The device answered with an ``ERROR`` frame, an unexpected frame, or not at all."""

    def __init__(self, message: str, code: ErrorCode | None = None):
        super().__init__(message)
        self.code = code


class DeviceUnavailable(MoziError):
    """The requested device backend does not exist or is not available in this build."""


# --------------------------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------------------------

class Transport(abc.ABC):
    """A byte pipe to a device (the link protocol's physical layer).

    Implementations: :class:`ModelTransport` (in-process), later a Verilator co-simulation and
    a serial port.
    """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to the device."""

    @abc.abstractmethod
    def read(self) -> bytes:
        """Return the bytes received since the last call (``b""`` if none arrived in time)."""

    closed = False

    def close(self) -> None:
        """Release the transport; later writes fail with :class:`DeviceError`."""
        self.closed = True

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModelTransport(Transport):
    """In-process emulation of the firmware, executing frames with the golden models.

    It implements the receiver (slot assignment, merge, basis decoding), the transmitter
    (Alice's sifter) and the Toeplitz hasher, with the registers of
    :data:`mozi.firmware.protocol.REGISTERS`.

    Parameters
    ----------
    frac_bits : int
        Fractional bits of the SlotAssigner's fixed-point registers.
    slot_width : int
        Width of the slot counter.
    record_capacity : int
        Alice records the sifter holds between two ``SIFT_REPORTS`` frames.
    random_capacity : int
        Depth of the basis decoder's random-word FIFO.
    toeplitz_max_bits : int
        Largest ``n + m - 1`` accepted by ``TOEPLITZ``.
    role : int
        ``ROLE`` register value: bit 0 receiver, bit 1 transmitter, bit 2 hasher.
    """

    def __init__(self, *, frac_bits: int = 16, slot_width: int = 48,
                 record_capacity: int = 1 << 16, random_capacity: int = 1 << 14,
                 toeplitz_max_bits: int = 1 << 18,
                 role: int = _ROLE_RECEIVER | _ROLE_TRANSMITTER | _ROLE_HASHER):
        if not 0 <= frac_bits <= 24:
            raise ValueError(f"frac_bits must be in 0..24, not {frac_bits!r}")
        self.frac_bits = frac_bits
        self.slot_width = slot_width
        self.record_capacity = record_capacity
        if random_capacity < 2:
            raise ValueError(f"random_capacity must be at least 2, not {random_capacity!r}")
        self.random_capacity = random_capacity
        self.toeplitz_max_bits = toeplitz_max_bits
        self.role = role
        self._in = b""
        self._out = bytearray()
        self._reset()

    # ---- state --------------------------------------------------------------------------

    def _reset(self) -> None:
        one = 1 << self.frac_bits
        self._period = one
        self._offset = 0
        self._window = (0, one)
        self._counters = dict.fromkeys(
            ["RX_EVENTS", "RX_REJECTED", "RX_LOST", "RX_DETECTIONS", "RX_MULTI",
             "TX_RECORDS", "TX_REPORTS", "TX_MATCHES"], 0)
        self._held: tuple[int, int, int] | None = None   # (slot, mask, lost) awaiting merge
        self._carry_lost = 0
        self._random = np.zeros(0, np.uint8)
        self._segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._loaded = 0

    # ---- Transport ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Feed bytes to the emulated firmware; complete frames execute immediately."""
        if self.closed:
            raise DeviceError("the model device is closed")
        self._in += bytes(data)
        try:
            frames, self._in = proto.decode_frames(self._in)
        except FrameError as exc:
            # like the gateware: drop the receive buffer and report, then resynchronise
            self._in = b""
            self._out += _error(ErrorCode.BAD_REQUEST, str(exc))
            return
        for frame in frames:
            self._out += self._execute(frame)

    def read(self) -> bytes:
        """Everything the emulated firmware has answered so far."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # ---- firmware -----------------------------------------------------------------------

    def _execute(self, frame: Frame) -> bytes:
        handler = {
            Opcode.PING: self._ping,
            Opcode.READ_REG: self._read_reg,
            Opcode.WRITE_REG: self._write_reg,
            Opcode.RANDOM_WORDS: self._random_words,
            Opcode.TAG_EVENTS: self._tag_events,
            Opcode.LOAD_RECORDS: self._load_records,
            Opcode.SIFT_REPORTS: self._sift_reports,
            Opcode.TOEPLITZ: self._toeplitz,
        }.get(frame.opcode)
        needs = {Opcode.RANDOM_WORDS: _ROLE_RECEIVER, Opcode.TAG_EVENTS: _ROLE_RECEIVER,
                 Opcode.LOAD_RECORDS: _ROLE_TRANSMITTER, Opcode.SIFT_REPORTS: _ROLE_TRANSMITTER,
                 Opcode.TOEPLITZ: _ROLE_HASHER}.get(frame.opcode, 0)
        if handler is None or (needs and not self.role & needs):
            return _error(ErrorCode.UNKNOWN_OPCODE, f"{frame.opcode.name} is not served here")
        try:
            return handler(frame.payload)
        except _Fail as exc:
            return _error(exc.code, exc.message)
        except (FrameError, ValueError, struct.error) as exc:
            return _error(ErrorCode.BAD_REQUEST, f"{frame.opcode.name}: {exc}")

    def _ping(self, payload: bytes) -> bytes:
        return proto.encode_frame(Opcode.PONG, payload)

    def _register_value(self, name: str) -> int:
        fixed = {"ID": proto.DEVICE_ID, "VERSION": proto.PROTOCOL_VERSION, "ROLE": self.role,
                 "CTRL": 0, "SA_FRAC_BITS": self.frac_bits, "SA_PERIOD": self._period,
                 "SA_OFFSET": self._offset, "SA_WINDOW_START": self._window[0],
                 "SA_WINDOW_END": self._window[1], "RX_RANDOM_LEVEL": int(self._random.size),
                 "RX_RANDOM_CAPACITY": self.random_capacity,
                 "TX_RECORD_CAPACITY": self.record_capacity,
                 "TH_MAX_BITS": self.toeplitz_max_bits}
        return fixed[name] if name in fixed else self._counters[name]

    def _read_reg(self, payload: bytes) -> bytes:
        (address,) = struct.unpack(">H", payload)
        try:
            reg = proto.register(address)
        except KeyError:
            raise _Fail(ErrorCode.BAD_ADDRESS, f"no register at 0x{address:04x}") from None
        value = reg.encode(self._register_value(reg.name))
        return proto.encode_frame(Opcode.REG_VALUE, struct.pack(">HQ", address, value))

    def _write_reg(self, payload: bytes) -> bytes:
        address, raw = struct.unpack(">HQ", payload)
        try:
            reg = proto.register(address)
        except KeyError:
            raise _Fail(ErrorCode.BAD_ADDRESS, f"no register at 0x{address:04x}") from None
        if reg.access != "rw":
            raise _Fail(ErrorCode.READ_ONLY, f"{reg.name} is read-only")
        value = reg.decode(raw)
        if reg.encode(value) != raw:
            raise _Fail(ErrorCode.BAD_VALUE, f"{reg.name} is {reg.width} bits wide")
        if reg.name == "CTRL":
            if value & 1:
                self._reset()
        elif reg.name == "SA_PERIOD":
            if value <= 0 or self._window[1] > value:
                raise _Fail(ErrorCode.BAD_VALUE, "SA_PERIOD must be > 0 and >= SA_WINDOW_END")
            self._period = value
        elif reg.name == "SA_OFFSET":
            self._offset = value
        elif reg.name == "SA_WINDOW_START":
            if not 0 <= value < self._window[1]:
                raise _Fail(ErrorCode.BAD_VALUE, "SA_WINDOW_START must be < SA_WINDOW_END")
            self._window = (value, self._window[1])
        elif reg.name == "SA_WINDOW_END":
            if not self._window[0] < value <= self._period:
                raise _Fail(ErrorCode.BAD_VALUE,
                            "SA_WINDOW_END must lie in (SA_WINDOW_START, SA_PERIOD]")
            self._window = (self._window[0], value)
        return proto.encode_frame(Opcode.ACK)

    def _random_words(self, payload: bytes) -> bytes:
        (count,) = struct.unpack_from(">I", payload)
        words = proto.unpack_words2(payload[4:], count)
        if len(payload) - 4 != (count + 3) // 4:
            raise _Fail(ErrorCode.BAD_REQUEST, "RANDOM_WORDS length does not match its count")
        if self._random.size + count > self.random_capacity:
            raise _Fail(ErrorCode.TOO_LARGE,
                        f"random FIFO holds {self.random_capacity} words")
        self._random = np.concatenate([self._random, words])
        return proto.encode_frame(Opcode.ACK)

    def _tag_events(self, payload: bytes) -> bytes:
        if not payload:
            raise _Fail(ErrorCode.BAD_REQUEST, "TAG_EVENTS needs a flags byte")
        if payload[0] & 0xFE:
            raise _Fail(ErrorCode.BAD_REQUEST, "TAG_EVENTS flags: reserved bits set")
        last = bool(payload[0] & 1)
        ts, masks, lost = proto.decode_tag_events(payload[1:])
        slots, in_window = model.assign_slots(
            ts, period=self._period, offset=self._offset, window_start=self._window[0],
            window_end=self._window[1], frac_bits=self.frac_bits, slot_width=self.slot_width)
        # lost counts of dropped events ride on the next kept event (saturating at u16)
        keep = np.flatnonzero(in_window)
        cum = np.concatenate([[0], np.cumsum(lost, dtype=np.int64)])
        ends = keep + 1
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        k_lost = cum[ends] - cum[starts]
        if k_lost.size:
            k_lost[0] += self._carry_lost
        carry = int(cum[-1] - (cum[ends[-1]] if ends.size else 0)) + \
            (0 if keep.size else self._carry_lost)
        k_slots = slots[keep]
        k_masks = masks[keep]
        if self._held is not None:
            k_slots = np.concatenate([np.array([self._held[0]], np.uint64), k_slots])
            k_masks = np.concatenate([np.array([self._held[1]], np.uint8), k_masks])
            k_lost = np.concatenate([[self._held[2]], k_lost])
        m_slots, m_masks = model.merge_slot_events(k_slots, k_masks, np.ones(k_slots.size, bool))
        if k_slots.size:
            first = np.flatnonzero(np.concatenate([[True], k_slots[1:] != k_slots[:-1]]))
            m_lost = np.add.reduceat(k_lost, first) if first.size else k_lost[:0]
        else:
            m_lost = np.zeros(0, np.int64)
        held = None
        if not last and m_slots.size:
            held = (int(m_slots[-1]), int(m_masks[-1]), int(m_lost[-1]))
            m_slots, m_masks, m_lost = m_slots[:-1], m_masks[:-1], m_lost[:-1]
        n = m_slots.size
        if n > self._random.size:
            raise _Fail(ErrorCode.RANDOM_UNDERFLOW,
                        f"{n} detections need random words, {self._random.size} in the FIFO")
        if n > MAX_EVENTS_PER_FRAME + 1:
            raise _Fail(ErrorCode.TOO_LARGE, "too many detections for one DETECTIONS frame")
        words, self._random = self._random[:n], self._random[n:]
        _valid, basis, bit, multi = model.decode_basis(m_masks, words)
        # commit
        self._held = held
        self._carry_lost = carry
        c = self._counters
        c["RX_EVENTS"] += int(ts.size)
        c["RX_REJECTED"] += int(ts.size - keep.size)
        c["RX_LOST"] += int(cum[-1])
        c["RX_DETECTIONS"] += int(n)
        c["RX_MULTI"] += int(multi.sum())
        return proto.encode_frame(Opcode.DETECTIONS, proto.encode_detections(
            m_slots, basis, bit, multi, np.minimum(m_lost, 0xFFFF)))

    def _load_records(self, payload: bytes) -> bytes:
        heads = _segment_heads(payload)  # (first slot, count, byte position of the nibbles)
        total = int(heads[:, 1].sum())
        if self._loaded + total > self.record_capacity:
            raise _Fail(ErrorCode.TOO_LARGE,
                        f"record memory holds {self.record_capacity} records")
        if len(heads):
            h = np.asarray(heads, np.int64)
            nib = proto.unpack_nibbles(payload, 2 * len(payload))
            rec_start = np.repeat(2 * h[:, 2], h[:, 1])
            within = np.arange(total) - np.repeat(np.cumsum(h[:, 1]) - h[:, 1], h[:, 1])
            self._segments.append((h[:, 0], h[:, 1], nib[rec_start + within]))
        self._loaded += total
        self._counters["TX_RECORDS"] += total
        return proto.encode_frame(Opcode.ACK)

    def _sift_reports(self, payload: bytes) -> bytes:
        slots, basis = proto.decode_reports(payload)
        segs = self._segments
        self._segments, self._loaded = [], 0
        if not segs:
            if slots.size:
                raise _Fail(ErrorCode.SIFT_ORDER, "no records loaded for the reports")
            return proto.encode_frame(Opcode.SIFT_RESULT)
        firsts = np.concatenate([f for f, _, _ in segs])
        counts = np.concatenate([c for _, c, _ in segs])
        records = np.concatenate([r for _, _, r in segs])
        base = np.cumsum(counts) - counts
        order = np.argsort(firsts, kind="stable")
        firsts, counts, base = firsts[order], counts[order], base[order]
        if np.any(firsts[1:] < firsts[:-1] + counts[:-1]):
            raise _Fail(ErrorCode.SIFT_ORDER, "loaded record segments overlap")
        s = slots.astype(np.int64)
        g = np.searchsorted(firsts, s, side="right") - 1
        gc = np.maximum(g, 0)
        inside = (g >= 0) & (s < firsts[gc] + counts[gc])
        if not np.all(inside):
            raise _Fail(ErrorCode.SIFT_ORDER, "a reported slot lies outside the loaded records")
        # the sifter's merge-join runs over the record stream in slot order
        if np.any(np.diff(order) != 1):
            stream = np.concatenate([records[b:b + c] for b, c in zip(base, counts, strict=True)])
            base = np.cumsum(counts) - counts
        else:
            stream = records
        index = base[g] + s - firsts[g]
        try:
            match, bit, intensity = model.sift_alice(stream, index, basis, first_slot=0)
        except ValueError as exc:
            raise _Fail(ErrorCode.SIFT_ORDER, str(exc)) from None
        self._counters["TX_REPORTS"] += int(slots.size)
        self._counters["TX_MATCHES"] += int(match.sum())
        out = match.astype(np.uint8) | (bit << 1) | (intensity << 2)
        return proto.encode_frame(Opcode.SIFT_RESULT, out.astype(np.uint8).tobytes())

    def _toeplitz(self, payload: bytes) -> bytes:
        n, m = struct.unpack_from(">II", payload)
        if n < 1 or m < 1 or n + m - 1 > self.toeplitz_max_bits:
            raise _Fail(ErrorCode.TOO_LARGE if n and m else ErrorCode.BAD_REQUEST,
                        f"Toeplitz n={n}, m={m} outside 1 <= n + m - 1 <= "
                        f"{self.toeplitz_max_bits}")
        nx, ns = (n + 7) // 8, (n + m - 1 + 7) // 8
        if len(payload) != 8 + nx + ns:
            raise _Fail(ErrorCode.BAD_REQUEST, "TOEPLITZ length does not match n and m")
        raw = np.frombuffer(payload, np.uint8)
        x = np.unpackbits(raw[8:8 + nx])[:n]
        s = np.unpackbits(raw[8 + nx:])[:n + m - 1]
        y = model.toeplitz_hash(x, s, m)
        return proto.encode_frame(Opcode.TOEPLITZ_RESULT, np.packbits(y).tobytes())


_U48_U32 = struct.Struct(">6sI")


def _segment_heads(payload: bytes) -> np.ndarray:
    """Parse a ``LOAD_RECORDS`` payload into rows ``(first, count, nibble position)``.

    Segments are variable-length, so their starts form a chain ``p → p + 10 + ⌈count/2⌉``
    from byte 0; the chain is followed by pointer doubling (vectorised) rather than a Python
    loop over segments. A payload whose chain does not end exactly at its last byte, or with
    an empty segment, is malformed.
    """
    size = len(payload)
    if size == 0:
        return np.zeros((0, 3), np.int64)
    if size < _U48_U32.size + 1:
        raise _Fail(ErrorCode.BAD_REQUEST, "truncated record segment")
    b = np.frombuffer(payload, np.uint8).astype(np.int64)
    bad, end = size + 1, size
    pos = np.arange(size - _U48_U32.size + 1)
    cnt = (b[pos + 6] << 24) | (b[pos + 7] << 16) | (b[pos + 8] << 8) | b[pos + 9]
    nxt = pos + _U48_U32.size + (cnt + 1) // 2
    nxt = np.where((nxt > size) | (cnt == 0), bad, nxt)
    jump = np.full(size + 2, bad, np.int64)             # header starts near the end: bad
    jump[pos] = nxt
    jump[end] = end
    mark = np.zeros(size + 2, bool)
    mark[0] = True
    for _ in range(max(1, size.bit_length())):
        mark[jump[mark]] = True                          # nodes within 2**(k+1) steps
        jump = jump[jump]
    nodes = np.flatnonzero(mark)
    if nodes[-1] != end:
        raise _Fail(ErrorCode.BAD_REQUEST, "truncated or empty record segment")
    starts = nodes[:-1]
    first = np.zeros(starts.size, np.int64)
    for k in range(6):
        first = (first << 8) | b[starts + k]
    return np.stack([first, cnt[starts], starts + _U48_U32.size], axis=1)


class _Fail(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: ErrorCode, message: str) -> bytes:
    return proto.encode_frame(Opcode.ERROR, bytes([code.value]) + message.encode()[:1000])


def open_device(spec: str, **options) -> Transport:
    """Open a device by specification.

    Parameters
    ----------
    spec : str
        ``"model"`` (the golden models in-process), ``"rtl"`` (Verilator co-simulation) or
        ``"serial:PORT"`` (a board).
    **options
        Passed to the backend (``ModelTransport`` keyword arguments for ``"model"``).

    Returns
    -------
    Transport

    Raises
    ------
    DeviceUnavailable
        The backend is not available in this build, or the spec is not understood.
    """
    if spec == "model":
        return ModelTransport(**options)
    if spec == "rtl":
        raise DeviceUnavailable("device 'rtl' (firmware top under Verilator) is not available "
                                "yet; use --device model")
    if spec.startswith("serial:"):
        port = spec.removeprefix("serial:")
        raise DeviceUnavailable(f"device 'serial:{port}' (a board) is not supported yet; "
                                "use --device model")
    raise DeviceUnavailable(f"unknown device {spec!r}; expected one of {', '.join(DEVICE_SPECS)}")


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------

class _Driver:
    """Request/response over a transport, with register access."""

    #: ROLE bit the device must have for this driver.
    ROLE = 0
    #: Empty reads tolerated while waiting for a response.
    MAX_IDLE_READS = 1000

    def __init__(self, transport: Transport):
        self.transport = transport
        self._rest = b""
        ident = self.read_register("ID")
        if ident != proto.DEVICE_ID:
            raise DeviceError(f"not a Mozi device (ID 0x{ident:08x})")
        version = self.read_register("VERSION")
        if version != proto.PROTOCOL_VERSION:
            raise DeviceError(f"device speaks protocol {version}, host {proto.PROTOCOL_VERSION}")
        role = self.read_register("ROLE")
        if self.ROLE and not role & self.ROLE:
            raise DeviceError(f"device does not implement {type(self).__name__} (ROLE {role})")

    def request(self, opcode: Opcode, payload: bytes, expect: Opcode) -> bytes:
        """Send one request frame and return the payload of its response.

        Raises
        ------
        DeviceError
            ``ERROR`` response, an unexpected opcode, or no response.
        """
        self.transport.write(proto.encode_frame(opcode, payload))
        idle = 0
        while True:
            frames, self._rest = proto.decode_frames(self._rest + self.transport.read())
            if frames:
                break
            idle += 1
            if idle > self.MAX_IDLE_READS:
                raise DeviceError(f"no response to {opcode.name}")
        if len(frames) > 1:
            raise DeviceError(f"{len(frames)} responses to one {opcode.name}")
        frame = frames[0]
        if frame.opcode is Opcode.ERROR:
            code = ErrorCode(frame.payload[0]) if frame.payload else ErrorCode.BAD_REQUEST
            text = frame.payload[1:].decode(errors="replace")
            raise DeviceError(f"device error {code.name} on {opcode.name}: {text}", code)
        if frame.opcode is not expect:
            raise DeviceError(f"expected {expect.name} in answer to {opcode.name}, "
                              f"got {frame.opcode.name}")
        return frame.payload

    def read_register(self, name: str) -> int:
        """Read a register by name (value sign-extended for signed registers)."""
        reg = proto.register(name)
        payload = self.request(Opcode.READ_REG, struct.pack(">H", reg.address),
                               Opcode.REG_VALUE)
        address, raw = struct.unpack(">HQ", payload)
        if address != reg.address:
            raise DeviceError(f"asked for register {reg.name}, got address 0x{address:04x}")
        return reg.decode(raw)

    def write_register(self, name: str, value: int) -> None:
        """Write a register by name."""
        reg = proto.register(name)
        self.request(Opcode.WRITE_REG, struct.pack(">HQ", reg.address, reg.encode(int(value))),
                     Opcode.ACK)

    def ping(self, payload: bytes = b"mozi") -> bool:
        """Round-trip a PING; True when the echo matches."""
        return self.request(Opcode.PING, payload, Opcode.PONG) == payload

    def reset(self) -> None:
        """Clear counters, merge state, random FIFO and record memory (``CTRL`` bit 0)."""
        self.write_register("CTRL", 1)


class RandomWordSource:
    """The stream of 2-bit random words fed to the basis decoder (Bob's squashing choices).

    For a multi-click event the decoder takes its basis and bit from one word, so the words
    are secret: they come from a ChaCha20 keystream (:class:`mozi.host.randomness.ByteStream`)
    under a 256-bit key, four words per byte (first word in bits 7..6). The sequence depends
    only on the key, never on how it is consumed — the ``model`` and ``rtl`` backends given the
    same key receive the same words.

    Parameters
    ----------
    key : bytes, optional
        32 secret bytes; default: fresh ones from the OS CSPRNG.
    """

    def __init__(self, key: bytes | None = None):
        self._stream = ByteStream(secrets.token_bytes(32) if key is None else key)
        self._buf = np.zeros(0, np.uint8)

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` words (uint8 in 0..3)."""
        if self._buf.size < count:
            raw = np.frombuffer(self._stream.read((count - self._buf.size + 3) // 4), np.uint8)
            words = np.stack([(raw >> s) & 3 for s in (6, 4, 2, 0)], axis=1).ravel()
            self._buf = np.concatenate([self._buf, words])
        out, self._buf = self._buf[:count], self._buf[count:]
        return out


@dataclasses.dataclass(frozen=True)
class SlotBlock:
    """A block of tag events processed with one set of SlotAssigner register values.

    Attributes
    ----------
    start, stop : int
        Index range of the events in the block.
    base_tick : int
        Subtracted from the block's timestamps before they are sent (keeps them small).
    slot_base : int
        Added to the slots the device returns (so they are absolute).
    period, offset, window_start, window_end : int
        Register values (fixed point, offset relative to ``base_tick``).
    """

    start: int
    stop: int
    base_tick: int
    slot_base: int
    period: int
    offset: int
    window_start: int
    window_end: int


@dataclasses.dataclass
class Detections:
    """Decoded detections returned by the receiver.

    Attributes
    ----------
    slots : int64 array
        Bob's slot index per detection (absolute, in his numbering).
    basis, bit : uint8 arrays
    multi : bool array
    lost : int64 array
        Upstream-lost events carried on each detection.
    """

    slots: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    multi: np.ndarray
    lost: np.ndarray

    def __len__(self) -> int:
        return int(self.slots.size)


class ReceiverDriver(_Driver):
    """Bob's receiver: SlotAssigner + merge + BasisDecoder, fed with tag events in blocks.

    Parameters
    ----------
    transport : Transport
    random_key : bytes, optional
        Secret key of the :class:`RandomWordSource` feeding the basis decoder (default: fresh
        from the OS CSPRNG). The same key gives the same words on every backend.
    """

    ROLE = _ROLE_RECEIVER

    def __init__(self, transport: Transport, *, random_key: bytes | None = None):
        super().__init__(transport)
        self.frac_bits = self.read_register("SA_FRAC_BITS")
        self._random = RandomWordSource(random_key)
        self._level = self.read_register("RX_RANDOM_LEVEL")
        self._shape = (self.read_register("SA_PERIOD"), self.read_register("SA_WINDOW_START"),
                       self.read_register("SA_WINDOW_END"))
        self.random_capacity = self.read_register("RX_RANDOM_CAPACITY")
        #: Tag events per TAG_EVENTS frame: each may need one random word, and the device must
        #: never wait for words while the host waits for its answer.
        self.frame_events = min(MAX_EVENTS_PER_FRAME, self.random_capacity - 1)

    def write_register(self, name: str, value: int) -> None:
        """Write a register by name (a direct SlotAssigner write invalidates the cache)."""
        if name in ("SA_PERIOD", "SA_WINDOW_START", "SA_WINDOW_END"):
            self._shape = None
        super().write_register(name, value)

    def reset(self) -> None:
        """Clear the device (``CTRL`` bit 0), including its random FIFO."""
        super().reset()
        self._level = self.read_register("RX_RANDOM_LEVEL")
        self._shape = (self.read_register("SA_PERIOD"), self.read_register("SA_WINDOW_START"),
                       self.read_register("SA_WINDOW_END"))

    def configure(self, *, period: int, offset: int, window_start: int, window_end: int) -> None:
        """Program the SlotAssigner (all values in ``2**-frac_bits`` ticks).

        The order of writes keeps ``0 <= start < end <= period`` true at every step; period and
        window are written only when they change (the per-block update is then one write).
        """
        if not 0 <= window_start < window_end <= period:
            raise ValueError("window must satisfy 0 <= window_start < window_end <= period")
        shape = (period, window_start, window_end)
        if shape != self._shape:
            self.write_register("SA_WINDOW_START", 0)
            self.write_register("SA_WINDOW_END", 1)
            self.write_register("SA_PERIOD", period)
            self.write_register("SA_WINDOW_END", window_end)
            self.write_register("SA_WINDOW_START", window_start)
        self._shape = shape
        self.write_register("SA_OFFSET", offset)

    def process(self, timestamps: np.ndarray, masks: np.ndarray, *, last: bool = True,
                lost: np.ndarray | None = None) -> Detections:
        """Stream tag events (ticks, relative to the programmed offset) and decode them.

        Parameters
        ----------
        timestamps : integer array, ticks (< 2**48)
        masks : uint8 array
        last : bool
            End the packet after these events (the merge stage flushes its held event).
        lost : uint16 array, optional
            In-band lost counts per event.

        Returns
        -------
        Detections
            Slots as the device reports them (relative to the programmed offset).
        """
        ts = np.asarray(timestamps, np.int64)
        masks = np.asarray(masks, np.uint8)
        if ts.size and (ts.min() < 0 or ts.max() >= 1 << 48):
            raise ValueError("timestamps must lie in [0, 2**48) ticks")
        parts = []
        n = ts.size
        step = self.frame_events
        bounds = list(range(0, n, step)) or [0]
        for i, lo in enumerate(bounds):
            hi = min(n, lo + step)
            need = (hi - lo) + 1
            if self._level < need:                     # top the FIFO up to its depth
                words = self._random.take(self.random_capacity - self._level)
                self.request(Opcode.RANDOM_WORDS,
                             struct.pack(">I", words.size) + proto.pack_words2(words), Opcode.ACK)
                self._level += words.size
            flags = 1 if (last and i == len(bounds) - 1) else 0
            payload = bytes([flags]) + proto.encode_tag_events(
                ts[lo:hi], masks[lo:hi], None if lost is None else lost[lo:hi])
            det = proto.decode_detections(self.request(Opcode.TAG_EVENTS, payload,
                                                       Opcode.DETECTIONS))
            self._level -= det[0].size
            parts.append(det)
        cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
        return Detections(cat[0].astype(np.int64), cat[1], cat[2], cat[3], cat[4].astype(np.int64))

    def run_blocks(self, timestamps: np.ndarray, masks: np.ndarray,
                   blocks: Iterable[SlotBlock],
                   progress: Callable[[int], None] | None = None) -> Detections:
        """Process events block by block, reprogramming the SlotAssigner for each.

        Each block's timestamps are rebased by ``base_tick`` and the returned slots shifted by
        ``slot_base``; every block ends its packet, so detections never merge across blocks.

        Parameters
        ----------
        timestamps : int64 array, ticks
        masks : uint8 array
        blocks : iterable of SlotBlock
            Covering the events in order.
        progress : callable, optional
            Called with the number of events done after each block.

        Returns
        -------
        Detections
            Absolute slots, in event order.
        """
        ts = np.asarray(timestamps, np.int64)
        out = []
        for b in blocks:
            self.configure(period=b.period, offset=b.offset, window_start=b.window_start,
                           window_end=b.window_end)
            d = self.process(ts[b.start:b.stop] - b.base_tick, masks[b.start:b.stop])
            d.slots = d.slots + b.slot_base
            out.append(d)
            if progress is not None:
                progress(b.stop - b.start)
        if not out:
            z = np.zeros(0, np.int64)
            return Detections(z, z.astype(np.uint8), z.astype(np.uint8), z.astype(bool), z)
        return Detections(*[np.concatenate([getattr(d, f.name) for d in out])
                            for f in dataclasses.fields(Detections)])

    def counters(self) -> dict[str, int]:
        """The receiver's counters (``RX_*`` registers)."""
        return {name: self.read_register(name) for name, reg in proto.REGISTERS.items()
                if reg.block == "receiver" and name.startswith("RX_")}


@dataclasses.dataclass
class SiftOutcome:
    """Alice's sifter output per reported slot.

    Attributes
    ----------
    match : bool array
        Her basis equals Bob's (the flag sent back to Bob).
    bit : uint8 array
        Her bit (kept secret).
    intensity : uint8 array
        Her intensity code (announced later, for parameter estimation).
    """

    match: np.ndarray
    bit: np.ndarray
    intensity: np.ndarray


class TransmitterDriver(_Driver):
    """Alice's sifter: her records for the reported slots, then Bob's report → match flags.

    Parameters
    ----------
    transport : Transport
    merge_gap : int
        Reported slots closer than this share one loaded record segment.
    """

    ROLE = _ROLE_TRANSMITTER

    def __init__(self, transport: Transport, *, merge_gap: int = 16):
        super().__init__(transport)
        self.capacity = self.read_register("TX_RECORD_CAPACITY")
        self.merge_gap = merge_gap

    def sift(self, report_slots: np.ndarray, report_basis: np.ndarray,
             records_at: Callable[[np.ndarray], np.ndarray]) -> SiftOutcome:
        """Sift Bob's report against Alice's records.

        Parameters
        ----------
        report_slots : integer array
            Bob's reported slots in Alice's numbering, strictly increasing, < 2**48.
        report_basis : uint8 array
        records_at : callable
            ``records_at(slots) -> uint8 array`` of Alice's 4-bit records
            (:func:`mozi.sim.model.alice_record`) for those slots.

        Returns
        -------
        SiftOutcome
        """
        slots = np.asarray(report_slots, np.int64)
        basis = np.asarray(report_basis, np.uint8)
        if slots.shape != basis.shape:
            raise ValueError("report_slots and report_basis must have the same shape")
        if slots.size > 1 and np.any(np.diff(slots) <= 0):
            raise ValueError("reported slots must be strictly increasing")
        # contiguous segments covering the reports (gaps below merge_gap filled)
        brk = np.flatnonzero(np.diff(slots) > self.merge_gap) + 1
        seg_lo = np.concatenate([[0], brk]).astype(np.int64)
        seg_hi = np.concatenate([brk, [slots.size]]).astype(np.int64)
        outs = []
        nseg = seg_lo.size if slots.size else 0
        cnt = slots[seg_hi - 1] - slots[seg_lo] + 1 if nseg else np.zeros(0, np.int64)
        reps = seg_hi - seg_lo
        nbytes = 10 + (cnt + 1) // 2
        if nseg and (cnt.max() > self.capacity or reps.max() > MAX_REPORTS_PER_FRAME
                     or nbytes.max() > proto.MAX_PAYLOAD):
            raise DeviceError("a run of reported slots exceeds the sifter's memory")
        c_cnt, c_rep, c_byt = np.cumsum(cnt), np.cumsum(reps), np.cumsum(nbytes)
        i = 0
        while i < nseg:
            # as many segments as fit the record memory, one report frame and one load frame
            before = (c_cnt[i - 1], c_rep[i - 1], c_byt[i - 1]) if i else (0, 0, 0)
            j = min(int(np.searchsorted(c_cnt, before[0] + self.capacity, side="right")),
                    int(np.searchsorted(c_rep, before[1] + MAX_REPORTS_PER_FRAME, side="right")),
                    int(np.searchsorted(c_byt, before[2] + proto.MAX_PAYLOAD, side="right")))
            j = max(j, i + 1)
            first = slots[seg_lo[i:j]]
            count = cnt[i:j]
            all_slots = np.repeat(first - (np.cumsum(count) - count), count) + \
                np.arange(int(count.sum()))
            records = np.asarray(records_at(all_slots), np.uint8)
            self.request(Opcode.LOAD_RECORDS, _pack_segments(first, count, records), Opcode.ACK)
            lo, hi = int(seg_lo[i]), int(seg_hi[j - 1])
            res = np.frombuffer(self.request(
                Opcode.SIFT_REPORTS, proto.encode_reports(slots[lo:hi], basis[lo:hi]),
                Opcode.SIFT_RESULT), np.uint8)
            if res.size != hi - lo:
                raise DeviceError(f"{res.size} sift results for {hi - lo} reports")
            outs.append(res)
            i = j
        res = np.concatenate(outs) if outs else np.zeros(0, np.uint8)
        return SiftOutcome((res & 1).astype(bool), (res >> 1) & 1, (res >> 2) & 3)

    def counters(self) -> dict[str, int]:
        """The transmitter's counters (``TX_RECORDS``, ``TX_REPORTS``, ``TX_MATCHES``)."""
        return {n: self.read_register(n) for n in ("TX_RECORDS", "TX_REPORTS", "TX_MATCHES")}


def _pack_segments(first: np.ndarray, count: np.ndarray, records: np.ndarray) -> bytes:
    """``LOAD_RECORDS`` payload: per segment first u48, count u32, nibbles (vectorised)."""
    nb = (count + 1) // 2
    size = 10 + nb
    start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    out = np.zeros(int(size.sum()), np.uint8)
    f = first.astype(np.uint64)
    c = count.astype(np.uint64)
    for k in range(6):
        out[start + k] = (f >> np.uint64(8 * (5 - k))) & np.uint64(0xFF)
    for k in range(4):
        out[start + 6 + k] = (c >> np.uint64(8 * (3 - k))) & np.uint64(0xFF)
    seg = np.repeat(np.arange(count.size), count)
    j = np.arange(records.size) - np.repeat(np.concatenate([[0], np.cumsum(count)[:-1]]), count)
    pos = start[seg] + 10 + j // 2
    nib = (records & 0xF).astype(np.uint8)
    even = j % 2 == 0
    out[pos[even]] = nib[even] << 4            # each byte gets one high nibble …
    out[pos[~even]] |= nib[~even]              # … and at most one low nibble
    return out.tobytes()


class HasherDriver(_Driver):
    """Toeplitz hashing on the device (``TOEPLITZ`` requests)."""

    ROLE = _ROLE_HASHER

    def __init__(self, transport: Transport):
        super().__init__(transport)
        self.max_bits = self.read_register("TH_MAX_BITS")

    def hash(self, x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
        """``y = T x`` with ``T[i, j] = seed[i - j + n - 1]`` (DESIGN.md), ``m`` output bits.

        Raises
        ------
        ValueError
            Bad lengths, or ``n + m - 1`` beyond the device's ``TH_MAX_BITS``.
        """
        x = np.asarray(x, np.uint8)
        seed = np.asarray(seed, np.uint8)
        n = x.size
        if n < 1 or m < 1 or seed.size != n + m - 1:
            raise ValueError(f"need n >= 1, m >= 1 and n + m - 1 seed bits (n={n}, m={m}, "
                             f"seed {seed.size})")
        if seed.size > self.max_bits:
            raise ValueError(f"n + m - 1 = {seed.size} exceeds the device's {self.max_bits}")
        payload = struct.pack(">II", n, m) + np.packbits(x).tobytes() + \
            np.packbits(seed).tobytes()
        y = np.frombuffer(self.request(Opcode.TOEPLITZ, payload, Opcode.TOEPLITZ_RESULT),
                          np.uint8)
        return np.unpackbits(y)[:m].copy()
