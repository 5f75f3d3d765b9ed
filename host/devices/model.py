"""The ``model`` device backend: the firmware's protocol executed with the numpy golden models.

:class:`ModelTransport` parses the host's frames with the same rules as the gateware (one
:class:`~mozi.firmware.protocol.Deframer`, the same duplicate-request rule, the same buffer
size) and executes them with :mod:`mozi.sim.model`: the receiver (slot assignment, merge,
basis decoding), the transmitter (Alice's sifter) and the Toeplitz hasher, with the registers
of :data:`mozi.firmware.protocol.REGISTERS`. It is the specification the role tops are tested
against, byte for byte.
"""

from __future__ import annotations

import struct

import numpy as np
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import ErrorCode, Frame, FrameError, Opcode
from mozi.host.devices.device import (
    ROLE_HASHER,
    ROLE_RECEIVER,
    ROLE_TRANSMITTER,
    DeviceError,
    Transport,
)
from mozi.sim import model

__all__ = ["FIRMWARE", "ModelTransport"]

_U32_MAX = (1 << 32) - 1

#: ModelTransport parameters that make it the firmware's role top (``open_device("model",
#: role=…)``): the roles and sizes of :mod:`mozi.firmware.receiver` and
#: :mod:`mozi.firmware.transmitter`.
FIRMWARE = {
    "receiver": {"role": ROLE_RECEIVER},
    "transmitter": {"role": ROLE_TRANSMITTER | ROLE_HASHER, "toeplitz_max_n": 4096,
                    "toeplitz_max_m": 1024},
}
_LOST_MAX = (1 << 16) - 1


class ModelTransport(Transport):
    """In-process emulation of the firmware, executing frames with the golden models.

    Parameters
    ----------
    frac_bits : int
        Fractional bits of the SlotAssigner's fixed-point registers.
    slot_width : int
        Width of the slot counter.
    record_capacity : int
        Alice records the sifter holds between two ``SIFT_REPORTS`` frames.
    segment_capacity : int
        Record segments it holds (``TX_SEGMENT_CAPACITY``).
    random_capacity : int
        Depth of the basis decoder's random-word FIFO (below ``2**13``, the register's width).
    pattern_capacity : int
        Records the pattern generator's FIFO holds (``PG_RECORD_CAPACITY``; the model has no
        random source and no clock, so it generates none).
    toeplitz_max_n, toeplitz_max_m : int
        Largest ``n`` and ``m`` of a Toeplitz job.
    max_payload : int
        Payload bytes of the frame buffers (``LINK_MAX_PAYLOAD``).
    role : int
        ``ROLE`` register value: bit 0 receiver, bit 1 transmitter, bit 2 hasher. The device
        has the registers of the blocks it implements.
    phases : int
        ``TT_PHASES`` (the tagger a board would have; the model takes tag events only).
    uart : bool
        The link is a UART (``UART_DIVISOR`` and ``LINK_OVERFLOWS`` exist).
    """

    def __init__(self, *, frac_bits: int = 16, slot_width: int = 48,
                 record_capacity: int = 1 << 16, segment_capacity: int = 1024,
                 random_capacity: int = 4096, pattern_capacity: int = 4096,
                 toeplitz_max_n: int = 1 << 20, toeplitz_max_m: int = 1 << 20,
                 max_payload: int = proto.DEVICE_MAX_PAYLOAD,
                 role: int = ROLE_RECEIVER | ROLE_TRANSMITTER | ROLE_HASHER, phases: int = 2,
                 uart: bool = False):
        if not 0 <= frac_bits <= 24:
            raise ValueError(f"frac_bits must be in 0..24, not {frac_bits!r}")
        if not 2 <= random_capacity < 1 << proto.register("RX_RANDOM_CAPACITY").width:
            raise ValueError(f"random_capacity must be in 2..8191, not {random_capacity!r}")
        if not 64 <= max_payload <= proto.MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in 64..{proto.MAX_PAYLOAD}, not "
                             f"{max_payload!r}")
        self.frac_bits = frac_bits
        self.slot_width = slot_width
        self.record_capacity = record_capacity
        self.segment_capacity = segment_capacity
        self.random_capacity = random_capacity
        self.pattern_capacity = pattern_capacity
        self.toeplitz_max_n = toeplitz_max_n
        self.toeplitz_max_m = toeplitz_max_m
        self.max_payload = max_payload
        self.role = role
        self.phases = phases
        blocks = {"device", "link"} | {b for bit, b in ((ROLE_RECEIVER, "receiver"),
                                                        (ROLE_TRANSMITTER, "transmitter"),
                                                        (ROLE_HASHER, "hasher")) if role & bit}
        self._registers = {name for name, reg in proto.REGISTERS.items() if reg.block in blocks
                           and (uart or name not in ("UART_DIVISOR", "LINK_OVERFLOWS"))}
        self._deframer = proto.Deframer(max_payload)
        self._last: tuple[int, int, bytes] | None = None     # (seq, crc, response)
        self._retries = 0
        self._out = bytearray()
        self._uart_divisor = 16            # the link's own: CTRL does not reset it
        self._reset()

    # ---- state --------------------------------------------------------------------------

    def _reset(self) -> None:
        one = 1 << self.frac_bits
        self._period = one
        self._offset = 0
        self._window = (0, one)
        self._dead_time = 0
        self._source = 0
        self._counters = dict.fromkeys(
            ["RX_EVENTS", "RX_LOST", "RX_DETECTIONS", "RX_MULTI", "RX_REJECTED", "RX_DROPPED",
             "TX_RECORDS", "TX_REPORTS", "TX_MATCHES", "PG_SLOTS", "PG_UNDERRUNS",
             "PG_RECORDS_LOST"], 0)
        # the pattern generator's registers (its thresholds reach no model: no slot happens)
        self._pattern = {"PG_ENABLE": 0, "PG_SLOT_CLOCKS": 1, "PG_T_BASIS": 0, "PG_T_INT0": 0,
                         "PG_T_INT1": 0}
        self._held: tuple[int, int, int] | None = None   # (slot, mask, lost) awaiting merge
        self._carry_assigner = 0      # lost counts of rejected events after the held one
        self._carry_decoder = 0       # lost counts of dropped (empty-mask) detections
        self._random = np.zeros(0, np.uint8)
        self._segments: list[tuple[int, int, int]] = []    # (first slot, count, base)
        self._records = np.zeros(0, np.uint8)
        self._loaded = 0
        self._job: dict | None = None

    def _count(self, name: str, n: int) -> None:
        self._counters[name] = min(_U32_MAX, self._counters[name] + int(n))

    # ---- Transport ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Feed bytes to the emulated firmware; complete frames execute immediately."""
        if self.closed:
            raise DeviceError("the model device is closed")
        for item in self._deframer.feed(bytes(data)):
            if isinstance(item, int):           # dropped: bad CRC or oversize length
                self._out += _error(ErrorCode.BAD_FRAME, "frame dropped", item)
                continue
            if item.seq and self._last is not None:
                if self._last[:2] == (item.seq, item.crc):
                    self._retries = min(_U32_MAX, self._retries + 1)
                    self._out += self._last[2]
                    continue
                if item.seq != self._last[0] % 255 + 1:
                    self._out += _error(ErrorCode.STALE, "stale sequence", item.seq)
                    continue
            response = self._execute(item)
            self._last = (item.seq, item.crc, response)
            self._out += response

    def read(self) -> bytes:
        """Everything the emulated firmware has answered so far."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # ---- firmware -----------------------------------------------------------------------

    def _execute(self, frame: Frame) -> bytes:
        op = frame.op
        handler = {
            Opcode.PING: self._ping,
            Opcode.READ_REG: self._read_reg,
            Opcode.WRITE_REG: self._write_reg,
            Opcode.RANDOM_WORDS: self._random_words,
            Opcode.TAG_EVENTS: self._tag_events,
            Opcode.LIVE_DETECTIONS: self._live_detections,
            Opcode.LOAD_RECORDS: self._load_records,
            Opcode.SIFT_REPORTS: self._sift_reports,
            Opcode.PATTERN_RECORDS: self._pattern_records,
            Opcode.TOEPLITZ_START: self._toeplitz_start,
            Opcode.TOEPLITZ_DATA: self._toeplitz_data,
            Opcode.TOEPLITZ_READ: self._toeplitz_read,
        }.get(op)
        needs = {Opcode.RANDOM_WORDS: ROLE_RECEIVER, Opcode.TAG_EVENTS: ROLE_RECEIVER,
                 Opcode.LIVE_DETECTIONS: ROLE_RECEIVER,
                 Opcode.LOAD_RECORDS: ROLE_TRANSMITTER, Opcode.SIFT_REPORTS: ROLE_TRANSMITTER,
                 Opcode.PATTERN_RECORDS: ROLE_TRANSMITTER,
                 Opcode.TOEPLITZ_START: ROLE_HASHER, Opcode.TOEPLITZ_DATA: ROLE_HASHER,
                 Opcode.TOEPLITZ_READ: ROLE_HASHER}.get(op, 0)
        if handler is None or (needs and not self.role & needs):
            return _error(ErrorCode.UNKNOWN_OPCODE,
                          f"opcode 0x{frame.opcode:02x} is not served here", frame.seq)
        try:
            op_out, payload = handler(frame.payload)
        except _Fail as exc:
            return _error(exc.code, exc.message, frame.seq)
        except (FrameError, ValueError, struct.error) as exc:
            return _error(ErrorCode.BAD_REQUEST, f"{op.name}: {exc}", frame.seq)
        if len(payload) > self.max_payload:
            return _error(ErrorCode.TOO_LARGE, "response exceeds the frame buffer", frame.seq)
        return proto.encode_frame(op_out, payload, frame.seq)

    def _ping(self, payload: bytes):
        return Opcode.PONG, payload

    def _register_value(self, name: str) -> int:
        fixed = {"ID": proto.DEVICE_ID, "VERSION": proto.PROTOCOL_VERSION, "ROLE": self.role,
                 "CTRL": 0, "LINK_MAX_PAYLOAD": self.max_payload,
                 "LINK_CRC_ERRORS": min(_U32_MAX, self._deframer.counters.crc),
                 "LINK_FRAMING_ERRORS": min(_U32_MAX, self._deframer.counters.framing),
                 "LINK_RETRIES": self._retries, "LINK_OVERFLOWS": 0,
                 "UART_DIVISOR": self._uart_divisor,
                 "SA_FRAC_BITS": self.frac_bits, "SA_PERIOD": self._period,
                 "SA_OFFSET": self._offset, "SA_WINDOW_START": self._window[0],
                 "SA_WINDOW_END": self._window[1], "TT_DEAD_TIME": self._dead_time,
                 "TT_PHASES": self.phases, "TT_SOURCE": self._source, "RX_TAGGER_LOST": 0,
                 "RX_RANDOM_LEVEL": int(self._random.size),
                 "RX_RANDOM_CAPACITY": self.random_capacity,
                 "TX_RECORD_CAPACITY": self.record_capacity,
                 "TX_SEGMENT_CAPACITY": self.segment_capacity,
                 "TH_MAX_N": self.toeplitz_max_n, "TH_MAX_M": self.toeplitz_max_m,
                 "PG_RECORD_CAPACITY": self.pattern_capacity, **self._pattern}
        return fixed[name] if name in fixed else self._counters[name]

    def _address(self, payload: bytes) -> proto.Register:
        if len(payload) < 2:
            raise _Fail(ErrorCode.BAD_REQUEST, "register request without an address")
        (address,) = struct.unpack_from(">H", payload)
        try:
            reg = proto.register(address)
        except KeyError:
            reg = None
        if reg is None or reg.name not in self._registers:
            raise _Fail(ErrorCode.BAD_ADDRESS, f"no register at 0x{address:04x}")
        return reg

    def _read_reg(self, payload: bytes):
        reg = self._address(payload)
        if len(payload) != 2:
            raise _Fail(ErrorCode.BAD_REQUEST, "READ_REG takes an address only")
        return Opcode.REG_VALUE, payload + reg.encode(self._register_value(reg.name))

    def _write_reg(self, payload: bytes):
        reg = self._address(payload)
        if len(payload) != 2 + reg.nbytes:
            raise _Fail(ErrorCode.BAD_REQUEST, f"{reg.name} takes {reg.nbytes} value bytes")
        if reg.access != "rw":
            raise _Fail(ErrorCode.READ_ONLY, f"{reg.name} is read-only")
        try:
            value = reg.decode(payload[2:])
        except ValueError as exc:
            raise _Fail(ErrorCode.BAD_VALUE, str(exc)) from None
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
            if not value < self._window[1]:
                raise _Fail(ErrorCode.BAD_VALUE, "SA_WINDOW_START must be < SA_WINDOW_END")
            self._window = (value, self._window[1])
        elif reg.name == "SA_WINDOW_END":
            if not self._window[0] < value <= self._period:
                raise _Fail(ErrorCode.BAD_VALUE,
                            "SA_WINDOW_END must lie in (SA_WINDOW_START, SA_PERIOD]")
            self._window = (self._window[0], value)
        elif reg.name == "TT_DEAD_TIME":
            self._dead_time = value
        elif reg.name == "TT_SOURCE":
            self._source = value
        elif reg.name in self._pattern:
            if reg.name == "PG_SLOT_CLOCKS" and value < 1:
                raise _Fail(ErrorCode.BAD_VALUE, "PG_SLOT_CLOCKS must be at least 1")
            self._pattern[reg.name] = value
        elif reg.name == "UART_DIVISOR":
            if value < 4:
                raise _Fail(ErrorCode.BAD_VALUE, "UART_DIVISOR must be at least 4")
            self._uart_divisor = value
        return Opcode.ACK, b""

    def _random_words(self, payload: bytes):
        if len(payload) < 2:
            raise _Fail(ErrorCode.BAD_REQUEST, "RANDOM_WORDS needs a count")
        (count,) = struct.unpack_from(">H", payload)
        if len(payload) - 2 != (count + 3) // 4:
            raise _Fail(ErrorCode.BAD_REQUEST, "RANDOM_WORDS length does not match its count")
        if self._random.size + count > self.random_capacity:
            raise _Fail(ErrorCode.TOO_LARGE, f"random FIFO holds {self.random_capacity} words")
        words = proto.unpack_words2(payload[2:], count)
        self._random = np.concatenate([self._random, words])
        return Opcode.ACK, b""

    def _live_detections(self, payload: bytes):
        if len(payload) != 6:
            raise _Fail(ErrorCode.BAD_REQUEST, "LIVE_DETECTIONS takes count u16, clocks u32")
        count, _clocks = struct.unpack(">HI", payload)
        if count == 0:
            raise _Fail(ErrorCode.BAD_REQUEST, "LIVE_DETECTIONS count must be >= 1")
        if self._source != 1:
            raise _Fail(ErrorCode.SOURCE, "not in live mode (TT_SOURCE 0)")
        if count * proto.DETECTION_BYTES > self.max_payload:
            raise _Fail(ErrorCode.TOO_LARGE, f"{count} detections may not fit one frame")
        # the model has no detectors: nothing comes out of its tagger
        return Opcode.DETECTIONS, b""

    def _tag_events(self, payload: bytes):
        if self._source:
            raise _Fail(ErrorCode.SOURCE, "TAG_EVENTS in live mode (TT_SOURCE 1)")
        if not payload:
            raise _Fail(ErrorCode.BAD_REQUEST, "TAG_EVENTS needs a flags byte")
        if payload[0] & 0xFE:
            raise _Fail(ErrorCode.BAD_REQUEST, "TAG_EVENTS flags: reserved bits set")
        last = bool(payload[0] & 1)
        ts, masks, lost = proto.decode_tag_events(payload[1:])
        k = ts.size
        if k + 1 > self._random.size:
            raise _Fail(ErrorCode.RANDOM_UNDERFLOW,
                        f"{k} events need {k + 1} random words, {self._random.size} in the FIFO")
        if (k + 1) * proto.DETECTION_BYTES > self.max_payload:
            raise _Fail(ErrorCode.TOO_LARGE, f"{k} events may not fit one DETECTIONS frame")
        slots, in_window = model.assign_slots(
            ts, period=self._period, offset=self._offset, window_start=self._window[0],
            window_end=self._window[1], frac_bits=self.frac_bits, slot_width=self.slot_width)
        # the slot assigner's sequence: the held event, the lost counts of the events it
        # rejected since (a rejected pseudo-event), then this frame's events
        h = self._held
        seq_slots = np.concatenate([[h[0] if h else 0, 0], slots]).astype(np.uint64)
        seq_masks = np.concatenate([[h[1] if h else 0, 0], masks]).astype(np.uint8)
        seq_lost = np.concatenate([[h[2] if h else 0, self._carry_assigner], lost])
        accepted = np.concatenate([[h is not None, False], in_window])
        acc = np.flatnonzero(accepted)
        acc_slots = seq_slots[acc]
        run_end = np.concatenate([acc_slots[1:] != acc_slots[:-1], [True]]) if acc.size \
            else np.zeros(0, bool)
        run_start = np.concatenate([[True], run_end[:-1]]) if acc.size else run_end
        ends = np.zeros(seq_slots.size, bool)
        ends[acc[run_end]] = True
        kept_lost, carry = model.carry_lost(seq_lost, ends, 0)
        merged_slots = acc_slots[run_end]
        starts = np.flatnonzero(run_start)
        merged_masks = np.bitwise_or.reduceat(seq_masks[acc], starts).astype(np.uint8) \
            if acc.size else np.zeros(0, np.uint8)
        held = None
        if not last and merged_slots.size:
            held = (int(merged_slots[-1]), int(merged_masks[-1]), int(kept_lost[-1]))
            merged_slots, merged_masks = merged_slots[:-1], merged_masks[:-1]
            kept_lost = kept_lost[:-1]
        n = merged_slots.size
        words, self._random = self._random[:n], self._random[n:]
        valid, basis, bit, multi = model.decode_basis(merged_masks, words)
        det_lost, self._carry_decoder = model.carry_lost(kept_lost, valid, self._carry_decoder)
        # commit
        self._held = held
        self._carry_assigner = carry
        self._count("RX_EVENTS", k)
        self._count("RX_REJECTED", k - int(in_window.sum()))
        self._count("RX_LOST", int(lost.astype(np.int64).sum()))
        self._count("RX_DETECTIONS", int(valid.sum()))
        self._count("RX_MULTI", int((multi & valid).sum()))
        self._count("RX_DROPPED", int((~valid).sum()))
        return Opcode.DETECTIONS, proto.encode_detections(
            merged_slots[valid], basis[valid], bit[valid], multi[valid], det_lost)

    def _load_records(self, payload: bytes):
        heads = _segment_heads(payload)  # (first slot, count, byte position of the nibbles)
        h = np.asarray(heads, np.int64)
        if h.size and np.any(h[:, 0] + h[:, 1] > 1 << 48):
            raise _Fail(ErrorCode.BAD_REQUEST, "a record segment runs past slot 2**48")
        total = int(h[:, 1].sum())
        if self._loaded + total > self.record_capacity or \
                len(self._segments) + len(h) > self.segment_capacity:
            raise _Fail(ErrorCode.TOO_LARGE, f"record memory holds {self.record_capacity} "
                        f"records in {self.segment_capacity} segments")
        if len(h):
            starts = h[:, 0]
            ends = h[:, 0] + h[:, 1]
            prev = self._segments[-1][0] + self._segments[-1][1] if self._segments else 0
            if starts[0] < prev or np.any(starts[1:] < ends[:-1]):
                raise _Fail(ErrorCode.SIFT_ORDER,
                            "record segments must be loaded in increasing slot order")
            nib = proto.unpack_nibbles(payload, 2 * len(payload))
            rec_start = np.repeat(2 * h[:, 2], h[:, 1])
            within = np.arange(total) - np.repeat(np.cumsum(h[:, 1]) - h[:, 1], h[:, 1])
            records = nib[rec_start + within]
            base = self._loaded + np.cumsum(h[:, 1]) - h[:, 1]
            self._segments += [(int(f), int(c), int(o)) for f, c, o in zip(
                h[:, 0], h[:, 1], base, strict=True)]
            self._records = np.concatenate([self._records, records])
        self._loaded += total
        self._count("TX_RECORDS", total)
        return Opcode.ACK, b""

    def _pattern_records(self, payload: bytes):
        if len(payload) != 2:
            raise _Fail(ErrorCode.BAD_REQUEST, "PATTERN_RECORDS takes max count u16")
        (count,) = struct.unpack(">H", payload)
        if count == 0:
            raise _Fail(ErrorCode.BAD_REQUEST, "PATTERN_RECORDS max count must be >= 1")
        if 2 + (count + 1) // 2 > self.max_payload:
            raise _Fail(ErrorCode.TOO_LARGE, f"{count} records may not fit one frame")
        # the model has no random source and no clock: its pattern generator makes no slot
        return Opcode.PATTERN, struct.pack(">H", 0)

    def _sift_reports(self, payload: bytes):
        slots, basis = proto.decode_reports(payload)
        segs, records = self._segments, self._records
        self._segments, self._loaded, self._records = [], 0, np.zeros(0, np.uint8)
        if not slots.size:
            return Opcode.SIFT_RESULT, b""
        if not segs:
            raise _Fail(ErrorCode.SIFT_ORDER, "no records loaded for the reports")
        firsts = np.array([f for f, _, _ in segs], np.int64)
        counts = np.array([c for _, c, _ in segs], np.int64)
        bases = np.array([o for _, _, o in segs], np.int64)
        s = slots.astype(np.int64)
        g = np.searchsorted(firsts, s, side="right") - 1
        gc = np.maximum(g, 0)
        if not np.all((g >= 0) & (s < firsts[gc] + counts[gc])):
            raise _Fail(ErrorCode.SIFT_ORDER, "a reported slot lies outside the loaded records")
        try:
            match, bit, intensity = model.sift_alice(records, bases[g] + s - firsts[g], basis,
                                                     first_slot=0)
        except ValueError as exc:
            raise _Fail(ErrorCode.SIFT_ORDER, str(exc)) from None
        self._count("TX_REPORTS", slots.size)
        self._count("TX_MATCHES", match.sum())
        out = match.astype(np.uint8) | (bit << 1) | (intensity << 2)
        return Opcode.SIFT_RESULT, out.astype(np.uint8).tobytes()

    def _toeplitz_start(self, payload: bytes):
        self._job = None                    # any job in progress is abandoned
        if len(payload) != 8:
            raise _Fail(ErrorCode.BAD_REQUEST, "TOEPLITZ_START takes n u32, m u32")
        n, m = struct.unpack(">II", payload)
        if n < 1 or m < 1:
            raise _Fail(ErrorCode.BAD_REQUEST, f"Toeplitz n={n}, m={m}: both must be >= 1")
        if n > self.toeplitz_max_n or m > self.toeplitz_max_m:
            raise _Fail(ErrorCode.TOO_LARGE, f"Toeplitz n={n}, m={m} exceed "
                        f"{self.toeplitz_max_n}, {self.toeplitz_max_m}")
        self._job = {"n": n, "m": m, "need": (n + m - 1 + 7) // 8 + (n + 7) // 8,
                     "data": bytearray(), "y": None, "pos": 0}
        return Opcode.ACK, b""

    def _toeplitz_data(self, payload: bytes):
        job = self._job
        if job is None or len(job["data"]) + len(payload) > job["need"]:
            raise _Fail(ErrorCode.SEQUENCE, "TOEPLITZ_DATA beyond the job's input")
        job["data"] += payload
        if len(job["data"]) == job["need"]:
            n, m = job["n"], job["m"]
            raw = np.frombuffer(bytes(job["data"]), np.uint8)
            ns = (n + m - 1 + 7) // 8
            s = np.unpackbits(raw[:ns])[:n + m - 1]
            x = np.unpackbits(raw[ns:])[:n]
            job["y"] = np.packbits(model.toeplitz_hash(x, s, m)).tobytes()
        return Opcode.ACK, b""

    def _toeplitz_read(self, payload: bytes):
        job = self._job
        if payload:
            raise _Fail(ErrorCode.BAD_REQUEST, "TOEPLITZ_READ takes no payload")
        if job is None or job["y"] is None or job["pos"] >= len(job["y"]):
            raise _Fail(ErrorCode.SEQUENCE, "no Toeplitz result to read")
        chunk = job["y"][job["pos"]:job["pos"] + self.max_payload]
        job["pos"] += len(chunk)
        return Opcode.TOEPLITZ_RESULT, chunk


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


def _error(code: ErrorCode, message: str, seq: int) -> bytes:
    # the code alone, as the gateware sends it (the message is for the code reading this)
    del message
    return proto.encode_frame(Opcode.ERROR, bytes([code.value]), seq)
