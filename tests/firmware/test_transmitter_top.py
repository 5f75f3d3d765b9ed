"""The transmitter role top under Verilator, driven by the real TransmitterDriver (``rtl``).

Alice's sifter with its record memory and the link: every byte the simulation answers must
equal the ``model`` backend's, for sessions' worth of reports, for malformed requests, and over
a link that corrupts, truncates, duplicates, delays and garbles frames.
"""

from __future__ import annotations

import gc
import random
import struct

import numpy as np
import pytest
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import ErrorCode, Opcode
from mozi.firmware.transmitter import Transmitter
from mozi.host.devices.device import DeviceError, HasherDriver, TransmitterDriver, open_device
from mozi.host.devices.model import FIRMWARE, ModelTransport
from mozi.sim import model
from mozi.sim.cocotb_runner import run_cocotb
from mozi.sim.source import SourceConfig

from tests.firmware.links import FaultyLink, Shared, check_register_ports, exchange

pytestmark = [pytest.mark.cocotb, pytest.mark.xdist_group("rtl-transmitter")]


@pytest.fixture(scope="module")
def rtl():
    t = open_device("rtl", role="transmitter", read_timeout=0.01, response_timeout=1.5)
    yield t
    t.close()


def _stimulus(seed: int, n_slots: int = 300_000, n_reports: int = 6000):
    rng = np.random.default_rng(seed)
    print("stimulus seed", seed)
    records = (rng.integers(0, 16, n_slots).astype(np.uint8)) & 0b1011
    slots = np.unique(np.concatenate([rng.integers(0, n_slots, n_reports),
                                      np.arange(1000, 1040)]))       # a dense run too
    basis = rng.integers(0, 2, slots.size).astype(np.uint8)
    return records, slots, basis


def _sift(tx, records, slots, basis):
    out = tx.sift(slots, basis, lambda s: records[s])
    return out, tx.counters()


# the width test builds a top it never elaborates
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_register_widths_equal_the_ports_they_drive():
    top = Transmitter()
    check_register_ports(top, Transmitter.REGISTERS)
    assert proto.register("PG_RECORD_CAPACITY").width >= len(top.pattern_fifo.level)
    del top
    gc.collect()                      # while the filter above is in force


def test_rtl_sifts_byte_for_byte_like_the_model(rtl):
    records, slots, basis = _stimulus(5)
    logs, results = [], []
    for t in (Shared(ModelTransport(**FIRMWARE['transmitter'])), Shared(rtl)):
        tx = TransmitterDriver(t, merge_gap=8)
        tx.reset()
        results.append(_sift(tx, records, slots, basis))
        logs.append(t)
    assert logs[1].received == logs[0].received
    match, bit, intensity = model.sift_alice(records, slots, basis)
    for out, counters in results:
        np.testing.assert_array_equal(out.match, match)
        np.testing.assert_array_equal(out.bit, bit)
        np.testing.assert_array_equal(out.intensity, intensity)
        assert counters["TX_REPORTS"] == slots.size
        assert counters["TX_MATCHES"] == int(match.sum())


def _seg(first, records):
    return struct.pack(">6sI", int(first).to_bytes(6, "big"), len(records)) + \
        proto.pack_nibbles(records)


def test_malformed_requests_match_the_model(rtl):
    seq = iter(range(256))

    def f(op, payload):
        return proto.encode_frame(op, payload, next(seq))

    reqs = [
        f(Opcode.PING, b""),
        f(Opcode.LOAD_RECORDS, _seg(100, [1, 2, 3, 4]) + _seg(110, [5])),
        f(Opcode.SIFT_REPORTS, proto.encode_reports([101, 110], [1, 0])),        # good
        f(Opcode.SIFT_REPORTS, proto.encode_reports([101], [1])),                # no records
        f(Opcode.SIFT_REPORTS, b"\x00" * 8),                                     # not 7k
        f(Opcode.SIFT_REPORTS, b""),                                             # empty
        f(Opcode.LOAD_RECORDS, _seg(100, [1, 2, 3, 4])),
        f(Opcode.SIFT_REPORTS, proto.encode_reports([100, 104], [0, 0])),        # outside
        f(Opcode.LOAD_RECORDS, _seg(100, [1, 2, 3, 4])),
        f(Opcode.SIFT_REPORTS, proto.encode_reports([102, 101], [0, 0])),        # decreasing
        f(Opcode.LOAD_RECORDS, _seg(100, [1, 2, 3, 4])),
        f(Opcode.SIFT_REPORTS, proto.encode_reports([102, 102], [0, 0])),        # repeated
        f(Opcode.LOAD_RECORDS, _seg(100, [1, 2, 3, 4]) + _seg(200, [7, 7])),
        f(Opcode.SIFT_REPORTS, proto.encode_reports([103, 150], [1, 1])),        # in the gap
        f(Opcode.LOAD_RECORDS, _seg(100, [1, 2]) + _seg(101, [3])),              # overlap
        f(Opcode.LOAD_RECORDS, _seg(300, [1]) + _seg(200, [3])),                 # not in order
        f(Opcode.LOAD_RECORDS, _seg(5, [])),                                     # empty
        f(Opcode.LOAD_RECORDS, _seg(5, [1, 2, 3])[:-1]),                         # truncated
        f(Opcode.LOAD_RECORDS, _seg(5, [1])[:8]),                                # half header
        f(Opcode.LOAD_RECORDS, _seg((1 << 48) - 1, [1, 2])),                     # past 2**48
        proto.encode_frame(Opcode.LOAD_RECORDS, struct.pack(">6sI", bytes(6), 70000)
                           + bytes(35000)),                       # beyond the frame buffer
        f(Opcode.LOAD_RECORDS, _seg(7, [9, 10, 11])),
        f(Opcode.SIFT_REPORTS, proto.encode_reports([7, 8, 9], [1, 0, 1])),
        f(Opcode.TAG_EVENTS, b"\x01"),                                           # not served
    ] + [f(Opcode.LOAD_RECORDS, _seg(8000 * k, np.zeros(8000, np.uint8))) for k in range(9)]
    for name in ("TX_RECORDS", "TX_REPORTS", "TX_MATCHES", "TX_SEGMENT_CAPACITY"):
        reqs.append(f(Opcode.READ_REG, struct.pack(">H", proto.register(name).address)))
    answers = []
    for t in (Shared(ModelTransport(**FIRMWARE['transmitter'])), Shared(rtl)):
        TransmitterDriver(t).reset()
        answers.append([[(fr.opcode, fr.seq, fr.payload) for fr in exchange(t, r)] for r in reqs])
    for k, (a, b) in enumerate(zip(*answers, strict=True)):
        assert a == b, f"request {k}: model {a}, rtl {b}"
    codes = [a[0][2][0] if a[0][0] == Opcode.ERROR.value else None for a in answers[0]]
    assert codes[:6] == [None, None, None, ErrorCode.SIFT_ORDER.value,
                         ErrorCode.BAD_REQUEST.value, None]
    assert codes[7] == codes[9] == codes[11] == codes[13] == ErrorCode.SIFT_ORDER.value
    assert codes[14] == codes[15] == ErrorCode.SIFT_ORDER.value
    assert codes[16:20] == [ErrorCode.BAD_REQUEST.value] * 4
    assert codes[20] == ErrorCode.BAD_FRAME.value                  # beyond the frame buffer
    assert codes[23] == ErrorCode.UNKNOWN_OPCODE.value
    assert codes[24:32] == [None] * 8 and codes[32] == ErrorCode.TOO_LARGE.value


def test_faulty_link_never_changes_a_sift_result(rtl):
    records, slots, basis = _stimulus(11, n_reports=3000)
    want = model.sift_alice(records, slots, basis)
    link = FaultyLink(Shared(rtl), random.Random(11), rate=0.3)
    tx = TransmitterDriver(link, merge_gap=8)
    tx.reset()
    out, counters = _sift(tx, records, slots, basis)
    np.testing.assert_array_equal(out.match, want[0])
    np.testing.assert_array_equal(out.bit, want[1])
    assert counters["TX_REPORTS"] == slots.size
    assert sum(link.done.values()) > 5 and tx.link_retries > 0, link.done


@pytest.mark.parametrize("n,m", [(1, 1), (8, 1), (1, 9), (100, 37), (4096, 1024)])
def test_rtl_hasher_matches_toeplitz_hash(rtl, n, m):
    rng = np.random.default_rng(n * 7 + m)
    print("seed", n * 7 + m)
    x = rng.integers(0, 2, n).astype(np.uint8)
    s = rng.integers(0, 2, n + m - 1).astype(np.uint8)
    h = HasherDriver(Shared(rtl))
    np.testing.assert_array_equal(h.hash(x, s, m), model.toeplitz_hash(x, s, m))


def test_toeplitz_job_order_matches_the_model(rtl):
    rng = np.random.default_rng(3)
    seq = iter(range(256))

    def f(op, payload=b""):
        return proto.encode_frame(op, payload, next(seq))

    n, m = 100, 37
    data = rng.integers(0, 256, (n + m - 1 + 7) // 8 + (n + 7) // 8, dtype=np.uint8).tobytes()
    reqs = [
        f(Opcode.PING),
        f(Opcode.TOEPLITZ_READ),                                         # no job
        f(Opcode.TOEPLITZ_DATA, b"\x00"),                                # no job
        f(Opcode.TOEPLITZ_START, struct.pack(">II", n, m)),
        f(Opcode.TOEPLITZ_DATA, data[:5]),
        f(Opcode.TOEPLITZ_READ),                                         # not complete
        f(Opcode.TOEPLITZ_DATA, data[5:]),
        f(Opcode.TOEPLITZ_DATA, b"\x01"),                                # beyond the job
        f(Opcode.TOEPLITZ_READ, b"\x00"),                                # takes no payload
        f(Opcode.TOEPLITZ_READ),
        f(Opcode.TOEPLITZ_READ),                                         # all read
        f(Opcode.TOEPLITZ_START, struct.pack(">II", 5000, 10)),          # too large
        f(Opcode.TOEPLITZ_READ),                                         # job abandoned
        f(Opcode.TOEPLITZ_START, struct.pack(">II", 0, 10)),
        f(Opcode.TOEPLITZ_START, struct.pack(">I", 8)),
    ]
    answers = []
    for t in (Shared(ModelTransport(**FIRMWARE["transmitter"])), Shared(rtl)):
        TransmitterDriver(t).reset()
        answers.append([[(fr.opcode, fr.seq, fr.payload) for fr in exchange(t, r)] for r in reqs])
    for k, (a, b) in enumerate(zip(*answers, strict=True)):
        assert a == b, f"request {k}: model {a}, rtl {b}"
    codes = [a[0][2][0] if a[0][0] == Opcode.ERROR.value else None for a in answers[0]]
    seq_err, bad = ErrorCode.SEQUENCE.value, ErrorCode.BAD_REQUEST.value
    assert codes == [None, seq_err, seq_err, None, None, seq_err, None, seq_err, bad, None,
                     seq_err, ErrorCode.TOO_LARGE.value, seq_err, bad, bad]
    x = np.unpackbits(np.frombuffer(data, np.uint8)[(n + m - 1 + 7) // 8:])[:n]
    s = np.unpackbits(np.frombuffer(data, np.uint8))[:n + m - 1]
    y = np.unpackbits(np.frombuffer(answers[1][9][0][2], np.uint8))[:m]
    np.testing.assert_array_equal(y, model.toeplitz_hash(x, s, m))


def test_pattern_generator_behind_the_link_rtl():
    """The pattern generator in the top: words on ``qrng`` → pins and records (tb_pattern)."""
    run_cocotb(Transmitter(), "tests.firmware.tb_pattern", toplevel="transmitter_pattern")


def test_pattern_driver_on_the_model():
    """The driver's pattern calls on the model, which has no random source: no records."""
    tx = TransmitterDriver(ModelTransport(**FIRMWARE["transmitter"]))
    tx.start_pattern(SourceConfig().thresholds(), slot_clocks=5)
    assert tx.read_register("PG_ENABLE") == 1 and tx.read_register("PG_SLOT_CLOCKS") == 5
    assert tx.read_register("PG_T_INT1") == SourceConfig().thresholds()[2]
    assert tx.pattern_records(100).size == 0
    tx.stop_pattern()
    assert tx.read_register("PG_ENABLE") == 0
    with pytest.raises(DeviceError, match="BAD_VALUE"):
        tx.start_pattern((0, 0, 0), slot_clocks=0)
