"""Link protocol: framing, CRC, register map and wire records."""

import numpy as np
import pytest
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import FrameError, Opcode
from mozi.sim.errors import MoziError


def test_crc_is_the_catalog_crc():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 9, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert proto.crc16(data) == proto.CRC.compute(data)
    assert proto.crc16(b"123456789") == 0x31C3       # CRC-16/XMODEM check value


def test_opcodes_fit_a_byte_and_are_unique():
    values = [op.value for op in Opcode]
    assert len(set(values)) == len(values)
    assert all(0 <= v < 256 for v in values)
    assert all(v < 0x80 for v in (Opcode.PING.value, Opcode.TAG_EVENTS.value,
                                  Opcode.SIFT_REPORTS.value, Opcode.TOEPLITZ_DATA.value))


@pytest.mark.parametrize("payload", [b"", b"\x00", bytes(range(256)) * 3,
                                     bytes(proto.MAX_PAYLOAD)])
def test_frame_roundtrip(payload):
    frame = proto.encode_frame(Opcode.PING, payload, seq=7)
    assert frame[:2] == proto.SYNC and len(frame) == len(payload) + proto.FRAME_OVERHEAD
    frames, rest = proto.decode_frames(frame)
    assert rest == b""
    assert [(f.op, f.payload, f.seq) for f in frames] == [(Opcode.PING, payload, 7)]
    assert frames[0].crc == int.from_bytes(frame[-2:], "big")


def test_stream_of_frames_split_anywhere():
    msgs = [(Opcode.PING, b"abc"), (Opcode.ACK, b""), (Opcode.ERROR, b"\x01bad")]
    stream = b"".join(proto.encode_frame(op, p) for op, p in msgs)
    for cut in range(len(stream) + 1):
        d = proto.Deframer()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert [(f.op, f.payload) for f in got] == msgs
        assert d.counters == proto.LinkCounters()


def test_oversize_payload_refused():
    with pytest.raises(ValueError):
        proto.encode_frame(Opcode.PING, bytes(proto.MAX_PAYLOAD + 1))


def test_deframer_hunts_counts_and_drops_bad_frames():
    good = proto.encode_frame(Opcode.PING, b"hello", seq=3)
    after = proto.encode_frame(Opcode.ACK, b"", seq=4)
    d = proto.Deframer()
    # garbage before a frame: every skipped byte is a framing error; a lone A5 too
    out = d.feed(b"\x00\x11\xa5\x22" + good)
    assert [f.payload for f in out] == [b"hello"] and d.counters.framing == 4
    # a bad CRC drops the whole frame (its seq is reported) and the next one is found
    bad = bytearray(good)
    bad[8] ^= 0x10
    out = d.feed(bytes(bad) + after)
    assert out[0] == 3 and out[1].op is Opcode.ACK and d.counters.crc == 1
    # an oversize length is a framing error; hunting resumes right after the header
    small = proto.Deframer(max_payload=4)
    out = small.feed(good + after)
    assert out[0] == 3 and out[1].op is Opcode.ACK
    assert small.counters.framing == 1 + 5 + 2        # the header, then payload and CRC
    # the strict splitter refuses anything but good frames
    with pytest.raises(FrameError):
        proto.decode_frames(bytes(bad))
    with pytest.raises(FrameError):
        proto.decode_frames(b"\x00" + good)
    body = bytes([0x7E, 0, 0, 0])                         # unknown opcode, valid CRC
    unknown = proto.SYNC + body + proto.crc16(body).to_bytes(2, "big")
    frames, _ = proto.decode_frames(unknown)
    assert frames[0].op is None and frames[0].opcode == 0x7E
    assert issubclass(FrameError, MoziError)


def test_register_map_is_consistent():
    addrs = [r.address for r in proto.REGISTERS.values()]
    assert len(set(addrs)) == len(addrs)
    for name, reg in proto.REGISTERS.items():
        assert reg.name == name
        assert proto.register(reg.address) is reg
        assert reg.access in ("ro", "rw")
        assert reg.block in ("device", "link", "receiver", "transmitter", "hasher")
        assert 1 <= reg.width <= 8 * proto.MAX_REGISTER_BYTES and reg.doc
    for name in ("SA_PERIOD", "SA_OFFSET", "SA_WINDOW_START", "SA_WINDOW_END",
                 "SA_FRAC_BITS", "RX_REJECTED", "RX_LOST", "LINK_CRC_ERRORS"):
        assert name in proto.REGISTERS
    with pytest.raises(KeyError):
        proto.register(0xFFFF)


def test_register_value_encoding():
    off = proto.register("SA_OFFSET")
    assert off.width == 65 and off.nbytes == 9
    for v in (0, 1, -1, -(1 << 64), (1 << 64) - 1):
        assert off.decode(off.encode(v)) == v
    assert off.encode(-1) == b"\x01" + b"\xff" * 8            # 65-bit two's complement
    with pytest.raises(ValueError):
        off.encode(1 << 64)
    with pytest.raises(ValueError):
        off.decode(b"\x02" + bytes(8))                           # bit 65 set
    with pytest.raises(ValueError):
        off.decode(bytes(8))                                      # wrong length
    ident = proto.register("ID")
    assert ident.decode(ident.encode(proto.DEVICE_ID)) == proto.DEVICE_ID
    with pytest.raises(ValueError):
        ident.encode(1 << 32)
    with pytest.raises(ValueError):
        ident.encode(-1)


def test_wire_records_roundtrip_including_48_bit_edges():
    rng = np.random.default_rng(7)
    n = 1000
    ts = rng.integers(0, 1 << 48, n, dtype=np.uint64)
    ts[:3] = [0, 1, (1 << 48) - 1]
    masks = rng.integers(0, 16, n).astype(np.uint8)
    lost = rng.integers(0, 1 << 16, n).astype(np.uint16)
    t2, m2, l2 = proto.decode_tag_events(proto.encode_tag_events(ts, masks, lost))
    np.testing.assert_array_equal(t2, ts)
    np.testing.assert_array_equal(m2, masks)
    np.testing.assert_array_equal(l2, lost)
    basis, bit = rng.integers(0, 2, (2, n)).astype(np.uint8)
    multi = rng.integers(0, 2, n).astype(bool)
    out = proto.decode_detections(proto.encode_detections(ts, basis, bit, multi, lost))
    for got, want in zip(out, (ts, basis, bit, multi, lost), strict=True):
        np.testing.assert_array_equal(got, want)
    s2, b2 = proto.decode_reports(proto.encode_reports(ts, basis))
    np.testing.assert_array_equal(s2, ts)
    np.testing.assert_array_equal(b2, basis)
    with pytest.raises(ValueError):
        proto.encode_reports(np.array([1 << 48], np.uint64), np.zeros(1, np.uint8))
    with pytest.raises(FrameError):
        proto.decode_reports(b"\x00" * 8)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1001])
def test_packed_words_and_nibbles(n):
    rng = np.random.default_rng(n)
    w = rng.integers(0, 4, n).astype(np.uint8)
    packed = proto.pack_words2(w)
    assert len(packed) == (n + 3) // 4
    np.testing.assert_array_equal(proto.unpack_words2(packed, n), w)
    v = rng.integers(0, 16, n).astype(np.uint8)
    packed = proto.pack_nibbles(v)
    assert len(packed) == (n + 1) // 2
    np.testing.assert_array_equal(proto.unpack_nibbles(packed, n), v)
    if n:
        assert proto.pack_words2(np.array([1, 2, 3], np.uint8)) == bytes([0b01101100])
        assert proto.pack_nibbles(np.array([0xA, 0x5], np.uint8)) == b"\xa5"
    with pytest.raises(FrameError):
        proto.unpack_words2(packed[:0], n + 1)
