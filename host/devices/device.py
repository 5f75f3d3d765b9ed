"""The host's device layer: one interface over the link protocol, three backends.

The host never calls the golden models directly: it talks to *a device* by exchanging the
frames of :mod:`mozi.firmware.protocol` through a :class:`Transport`. Three backends give the
transport (DESIGN.md, Glasgow's applet/transport split):

* ``model`` — :class:`mozi.host.devices.model.ModelTransport`, an in-process emulation of the
  firmware that parses the frames and executes them with :mod:`mozi.sim.model`;
* ``rtl`` — :class:`mozi.host.devices.rtl.RtlTransport`, the firmware's role top under
  Verilator, reached through the same bytes;
* ``serial:PORT`` — :class:`mozi.host.devices.serial.SerialTransport`, a board's UART.

Every request goes out with a sequence byte and is sent again (same bytes) when its response
does not arrive, arrives corrupted, or the device reports the request frame corrupted
(``BAD_FRAME``); the device answers a repeated request from its copy of the last response, so
a retry never executes a request twice (see :mod:`mozi.firmware.protocol`). After a silence
the driver first sends a *break* (see :data:`mozi.firmware.protocol.BREAK_BYTE`), which
completes (and so fails) a frame whose tail was lost on the way.

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
from mozi.firmware.protocol import ErrorCode, Frame, Opcode
from mozi.host.crypto.randomness import ByteStream
from mozi.sim.errors import MoziError

__all__ = [
    "DEVICE_SPECS",
    "ROLE_HASHER",
    "ROLE_RECEIVER",
    "ROLE_TRANSMITTER",
    "ROLES",
    "DeviceError",
    "DeviceUnavailable",
    "Detections",
    "HasherDriver",
    "RandomWordSource",
    "ReceiverDriver",
    "SiftOutcome",
    "SlotBlock",
    "Transport",
    "TransmitterDriver",
    "check_device",
    "open_device",
]

#: Device specifications understood by :func:`open_device`.
DEVICE_SPECS = ("model", "rtl", "serial:PORT")

#: ``ROLE`` register bits.
ROLE_RECEIVER = 1
ROLE_TRANSMITTER = 2
ROLE_HASHER = 4


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

    Implementations: the model (in-process), the Verilator co-simulation and a serial port.
    """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to the device."""

    @abc.abstractmethod
    def read(self) -> bytes:
        """Return the bytes received since the last call (``b""`` if none arrived in time)."""

    closed = False
    #: Empty reads after which a driver sends its request again (each read waits for the
    #: transport's own timeout, if any).
    idle_reads = 1000

    def close(self) -> None:
        """Release the transport; later writes fail with :class:`DeviceError`."""
        self.closed = True

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: Roles a device can be opened for, with their ``ROLE`` bits.
ROLES = {"receiver": ROLE_RECEIVER, "transmitter": ROLE_TRANSMITTER}


def _parse(spec: str, role: str | None) -> str:
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if spec in ("model", "rtl") or (spec.startswith("serial:") and spec != "serial:"):
        return spec.partition(":")[0]
    raise DeviceUnavailable(f"unknown device {spec!r}; expected one of {', '.join(DEVICE_SPECS)}")


def check_device(spec: str, role: str | None = None) -> None:
    """Fail early, before a session touches anything, when a device cannot be opened.

    A serial port is opened and closed again; a simulation is not started.

    Raises
    ------
    DeviceUnavailable
        Unknown spec, no Verilator for ``rtl``, or no such serial port.
    """
    kind = _parse(spec, role)
    if kind == "rtl":
        from mozi.sim.cocotb_runner import verilator_path
        try:
            verilator_path()
        except RuntimeError as exc:
            raise DeviceUnavailable(f"device 'rtl': {exc}") from None
    elif kind == "serial":
        from mozi.host.devices.serial import SerialTransport
        SerialTransport(spec.removeprefix("serial:")).close()     # opens, or says why not


def open_device(spec: str, *, role: str | None = None, **options) -> Transport:
    """Open a device by specification.

    Parameters
    ----------
    spec : str
        ``"model"`` (the golden models in-process), ``"rtl"`` (the role top under Verilator)
        or ``"serial:PORT"`` (a board, or a co-simulation served on a pseudo-terminal).
    role : {"receiver", "transmitter"}, optional
        What the device is opened for: the ``model`` is then that role top's emulation (its
        roles and sizes; every role when omitted); ``rtl`` simulates that role top (the
        receiver when omitted).
    **options
        Passed to the backend's transport.

    Returns
    -------
    Transport

    Raises
    ------
    DeviceUnavailable
        The backend is not available, or the spec is not understood.
    """
    kind = _parse(spec, role)
    if kind == "model":
        from mozi.host.devices.model import FIRMWARE, ModelTransport
        return ModelTransport(**{**(FIRMWARE[role] if role else {}), **options})
    if kind == "rtl":
        from mozi.host.devices.rtl import RtlTransport
        return RtlTransport(role=role or "receiver", **options)
    from mozi.host.devices.serial import SerialTransport
    return SerialTransport(spec.removeprefix("serial:"), **options)


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------

class _Driver:
    """Request/response over a transport, with register access and retries."""

    #: ROLE bit the device must have for this driver.
    ROLE = 0
    #: Times a request is sent again before the link is declared failed.
    RETRIES = 3

    def __init__(self, transport: Transport):
        self.transport = transport
        self._deframer = proto.Deframer()
        self._seq: int | None = None
        #: Requests sent again (corrupted, lost or refused frames), and stale responses
        #: discarded, since this driver was made.
        self.link_retries = 0
        self.stale_responses = 0
        self.max_payload = proto.MAX_PAYLOAD
        ident = self.read_register("ID")
        if ident != proto.DEVICE_ID:
            raise DeviceError(f"not a Mozi device (ID 0x{ident:08x})")
        version = self.read_register("VERSION")
        if version != proto.PROTOCOL_VERSION:
            raise DeviceError(f"device speaks protocol {version}, host {proto.PROTOCOL_VERSION}")
        role = self.read_register("ROLE")
        if self.ROLE and not role & self.ROLE:
            raise DeviceError(f"device does not implement {type(self).__name__} (ROLE {role})")
        self.max_payload = self.read_register("LINK_MAX_PAYLOAD")

    def _next_seq(self) -> int:
        # 0 first (a device never treats it as a repeat), then 1..255 cyclically
        self._seq = 0 if self._seq is None else self._seq % 255 + 1
        return self._seq

    def _response(self, seq: int) -> Frame | bool:
        """The response to request ``seq``; ``False`` when it must be sent again, ``True``
        when nothing came back in time (the device may be stuck inside a cut frame)."""
        idle = 0
        while True:
            data = self.transport.read()
            if not data:
                idle += 1
                if idle > self.transport.idle_reads:
                    self._deframer.discard()        # a frame cut short will not complete
                    return True
                continue
            idle = 0
            for item in self._deframer.feed(data):
                if isinstance(item, int):           # a corrupted response: ask again
                    return False
                if item.op is Opcode.ERROR and item.payload[:1] == bytes(
                        [ErrorCode.BAD_FRAME.value]):
                    return False                    # our request arrived corrupted
                if item.seq != seq:
                    self.stale_responses += 1       # answer to an earlier (repeated) request
                    continue
                return item

    def request(self, opcode: Opcode, payload: bytes, expect: Opcode) -> bytes:
        """Send one request frame and return the payload of its response.

        Raises
        ------
        DeviceError
            ``ERROR`` response, an unexpected opcode, or no valid response after
            :attr:`RETRIES` repeats.
        ValueError
            The request does not fit the device's frame buffer.
        """
        if len(payload) > self.max_payload:
            raise ValueError(f"{opcode.name} payload of {len(payload)} bytes exceeds the "
                             f"device's {self.max_payload}")
        seq = self._next_seq()
        frame_bytes = proto.encode_frame(opcode, payload, seq)
        for attempt in range(self.RETRIES + 1):
            if attempt:
                self.link_retries += 1
            self.transport.write(frame_bytes)
            frame = self._response(seq)
            if frame is True:
                # silence: the device may be inside a frame whose tail was lost, waiting for
                # bytes that will never come. A break completes such a frame before the retry.
                self.transport.write(proto.BREAK_BYTE * (self.max_payload +
                                                         proto.FRAME_OVERHEAD))
            elif frame is not False:
                break
        else:
            raise DeviceError(f"no valid response to {opcode.name} after {self.RETRIES} "
                              "retries (link failed)")
        if frame.op is Opcode.ERROR:
            try:
                code = ErrorCode(frame.payload[0]) if frame.payload else ErrorCode.BAD_REQUEST
            except ValueError:
                code = ErrorCode.BAD_REQUEST
            text = frame.payload[1:].decode(errors="replace")
            raise DeviceError(f"device error {code.name} on {opcode.name}"
                              + (f": {text}" if text else ""), code)
        if frame.op is not expect:
            raise DeviceError(f"expected {expect.name} in answer to {opcode.name}, "
                              f"got opcode 0x{frame.opcode:02x}")
        return frame.payload

    def read_register(self, name: str) -> int:
        """Read a register by name (value sign-extended for signed registers)."""
        reg = proto.register(name)
        payload = self.request(Opcode.READ_REG, struct.pack(">H", reg.address),
                               Opcode.REG_VALUE)
        if len(payload) != 2 + reg.nbytes or struct.unpack_from(">H", payload)[0] != \
                reg.address:
            raise DeviceError(f"malformed REG_VALUE for {reg.name}: {payload.hex()}")
        return reg.decode(payload[2:])

    def write_register(self, name: str, value: int) -> None:
        """Write a register by name."""
        reg = proto.register(name)
        self.request(Opcode.WRITE_REG, struct.pack(">H", reg.address) + reg.encode(int(value)),
                     Opcode.ACK)

    def ping(self, payload: bytes = b"mozi") -> bool:
        """Round-trip a PING; True when the echo matches."""
        return self.request(Opcode.PING, payload, Opcode.PONG) == payload

    def reset(self) -> None:
        """Clear counters, merge state, random FIFO and record memory (``CTRL`` bit 0)."""
        self.write_register("CTRL", 1)

    def link_errors(self) -> dict[str, int]:
        """The link error counters every device has (``LINK_*``), and this driver's."""
        out = {name: self.read_register(name)
               for name in ("LINK_CRC_ERRORS", "LINK_FRAMING_ERRORS", "LINK_RETRIES")}
        out["HOST_RETRIES"] = self.link_retries
        out["HOST_STALE_RESPONSES"] = self.stale_responses
        return out


class RandomWordSource:
    """The stream of 2-bit random words fed to the basis decoder (Bob's squashing choices).

    For a multi-click event the decoder takes its basis and bit from one word, so the words
    are secret: they come from a ChaCha20 keystream
    (:class:`mozi.host.crypto.randomness.ByteStream`) under a 256-bit key, four words per byte
    (first word in bits 7..6). The sequence depends
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

    ROLE = ROLE_RECEIVER

    def __init__(self, transport: Transport, *, random_key: bytes | None = None):
        super().__init__(transport)
        self.frac_bits = self.read_register("SA_FRAC_BITS")
        self._random = RandomWordSource(random_key)
        self._level = self.read_register("RX_RANDOM_LEVEL")
        self._shape = (self.read_register("SA_PERIOD"), self.read_register("SA_WINDOW_START"),
                       self.read_register("SA_WINDOW_END"))
        self.random_capacity = self.read_register("RX_RANDOM_CAPACITY")
        #: Tag events per TAG_EVENTS frame: k events need k + 1 random words in the FIFO, the
        #: request must fit the device's buffer, and so must k + 1 detections.
        self.frame_events = min(self.random_capacity - 1,
                                (self.max_payload - 1) // proto.TAG_EVENT_BYTES,
                                self.max_payload // proto.DETECTION_BYTES - 1)
        if self.frame_events < 1:
            raise DeviceError("the device's FIFO or frame buffer is too small for one event")

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
            while self._level < need:                  # top the FIFO up to its depth
                words = self._random.take(min(self.random_capacity - self._level,
                                              4 * (self.max_payload - 2)))
                self.request(Opcode.RANDOM_WORDS,
                             struct.pack(">H", words.size) + proto.pack_words2(words), Opcode.ACK)
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

    ROLE = ROLE_TRANSMITTER

    def __init__(self, transport: Transport, *, merge_gap: int = 16):
        super().__init__(transport)
        self.capacity = self.read_register("TX_RECORD_CAPACITY")
        self.segment_capacity = self.read_register("TX_SEGMENT_CAPACITY")
        self.merge_gap = merge_gap
        #: Reports per SIFT_REPORTS frame (the request, and its one-byte-per-report answer,
        #: fit the device's buffer).
        self.frame_reports = self.max_payload // proto.REPORT_BYTES

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
        if nseg and (cnt.max() > self.capacity or reps.max() > self.frame_reports
                     or nbytes.max() > self.max_payload):
            raise DeviceError("a run of reported slots exceeds the sifter's memory")
        c_cnt, c_rep, c_byt = np.cumsum(cnt), np.cumsum(reps), np.cumsum(nbytes)
        i = 0
        while i < nseg:
            # as many segments as fit the record memory, one report frame and one load frame
            before = (c_cnt[i - 1], c_rep[i - 1], c_byt[i - 1]) if i else (0, 0, 0)
            j = min(i + self.segment_capacity,
                    int(np.searchsorted(c_cnt, before[0] + self.capacity, side="right")),
                    int(np.searchsorted(c_rep, before[1] + self.frame_reports, side="right")),
                    int(np.searchsorted(c_byt, before[2] + self.max_payload, side="right")))
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

    def start_pattern(self, thresholds: tuple[int, int, int], *, slot_clocks: int = 1) -> None:
        """Start the pattern generator: a slot every ``slot_clocks`` clocks, its choices by
        ``thresholds`` = ``(t_basis, t_int0, t_int1)`` (:meth:`SourceConfig.thresholds
        <mozi.sim.source.SourceConfig.thresholds>`). A running generator is stopped first, so
        the records read next are of the new run."""
        self.write_register("PG_ENABLE", 0)
        for name, value in zip(("PG_T_BASIS", "PG_T_INT0", "PG_T_INT1"), thresholds,
                               strict=True):
            self.write_register(name, value)
        self.write_register("PG_SLOT_CLOCKS", slot_clocks)
        self.write_register("PG_ENABLE", 1)

    def stop_pattern(self) -> None:
        """Stop the pattern generator (its records stay readable)."""
        self.write_register("PG_ENABLE", 0)

    def pattern_records(self, max_count: int) -> np.ndarray:
        """Up to ``max_count`` of the generator's next records (uint8, 4-bit, in slot
        order)."""
        payload = self.request(Opcode.PATTERN_RECORDS, struct.pack(">H", max_count),
                               Opcode.PATTERN)
        if len(payload) < 2:
            raise DeviceError("PATTERN answer without a count")
        (count,) = struct.unpack_from(">H", payload)
        if count > max_count or len(payload) != 2 + (count + 1) // 2:
            raise DeviceError(f"PATTERN answer of {len(payload)} bytes for {count} records")
        return proto.unpack_nibbles(payload[2:], count)


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

    ROLE = ROLE_HASHER

    def __init__(self, transport: Transport):
        super().__init__(transport)
        self.max_n = self.read_register("TH_MAX_N")
        self.max_m = self.read_register("TH_MAX_M")

    def hash(self, x: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
        """``y = T x`` with ``T[i, j] = seed[i - j + n - 1]`` (DESIGN.md), ``m`` output bits.

        Raises
        ------
        ValueError
            Bad lengths, or ``n`` or ``m`` beyond the device's ``TH_MAX_N``, ``TH_MAX_M``.
        """
        x = np.asarray(x, np.uint8)
        seed = np.asarray(seed, np.uint8)
        n = x.size
        if n < 1 or m < 1 or seed.size != n + m - 1:
            raise ValueError(f"need n >= 1, m >= 1 and n + m - 1 seed bits (n={n}, m={m}, "
                             f"seed {seed.size})")
        if n > self.max_n or m > self.max_m:
            raise ValueError(f"n={n}, m={m} exceed the device's {self.max_n}, {self.max_m}")
        self.request(Opcode.TOEPLITZ_START, struct.pack(">II", n, m), Opcode.ACK)
        data = np.packbits(seed).tobytes() + np.packbits(x).tobytes()
        for lo in range(0, len(data), self.max_payload):
            self.request(Opcode.TOEPLITZ_DATA, data[lo:lo + self.max_payload], Opcode.ACK)
        y = bytearray()
        while len(y) < (m + 7) // 8:
            y += self.request(Opcode.TOEPLITZ_READ, b"", Opcode.TOEPLITZ_RESULT)
        y = np.frombuffer(bytes(y), np.uint8)
        return np.unpackbits(y)[:m].copy()
