"""The receiver role top under Verilator, driven by the real host driver (``rtl`` backend).

Glasgow-style host-in-the-loop tests: :class:`mozi.host.devices.device.ReceiverDriver` talks to the
receiver firmware (link, register bank, cores) in co-simulation, and every byte it receives
must equal what the ``model`` backend answers to the same bytes — correct requests, malformed
ones, and a link that corrupts, truncates, duplicates, delays and garbles frames. One
simulation serves the whole module (its Verilator build is cached under ``build/``).
"""

from __future__ import annotations

import gc
import random
import struct

import numpy as np
import pytest
from mozi.firmware import protocol as proto
from mozi.firmware.protocol import ErrorCode, Opcode
from mozi.firmware.receiver import Receiver
from mozi.host.devices.device import DeviceError, ReceiverDriver, open_device
from mozi.host.devices.model import FIRMWARE, ModelTransport

from tests.firmware.links import FAULTS, FaultyLink, Shared, check_register_ports, exchange

pytestmark = [pytest.mark.cocotb, pytest.mark.xdist_group("rtl-receiver")]

FRAC = 16


@pytest.fixture(scope="module")
def rtl():
    t = open_device("rtl", role="receiver", read_timeout=0.01, response_timeout=1.5)
    yield t
    t.close()


def _events(rng, n, span):
    ts = np.sort(rng.integers(0, span, n))
    masks = rng.integers(1, 16, n).astype(np.uint8)
    lost = np.where(rng.random(n) < 0.05, rng.integers(0, 1 << 16, n), 0).astype(np.uint16)
    return ts, masks, lost


def _session_like(rx: ReceiverDriver, rng_seed: int, blocks: int = 3, events: int = 3000):
    """Blocks of events with register updates between them, as a session sends them."""
    rng = np.random.default_rng(rng_seed)
    print("stimulus seed", rng_seed)
    out = []
    for block in range(blocks):
        ts, masks, lost = _events(rng, events, 2 * 10**8)
        period = int(rng.integers(5_000, 20_000)) << FRAC
        offset = int(rng.integers(-period, 10 * period))
        ws = int(rng.integers(0, period // 2))
        we = int(rng.integers(ws + 1, period + 1))
        rx.configure(period=period, offset=offset, window_start=ws, window_end=we)
        half = int(rng.integers(0, ts.size))
        out.append(rx.process(ts[:half], masks[:half], last=False, lost=lost[:half]))
        out.append(rx.process(ts[half:], masks[half:], last=bool(block % 2 == 0),
                              lost=lost[half:]))
    out.append(rx.counters())
    return out


# the width test builds a top it never elaborates
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_register_widths_equal_the_ports_they_drive():
    top = Receiver()
    check_register_ports(top, Receiver.REGISTERS)
    assert proto.register("RX_RANDOM_CAPACITY").width == len(top.random_fifo.level)
    del top
    gc.collect()                      # while the filter above is in force


def test_rtl_answers_byte_for_byte_like_the_model(rtl):
    model = Shared(ModelTransport(**FIRMWARE['receiver']))
    sim = Shared(rtl)
    results = []
    for t in (model, sim):
        rx = ReceiverDriver(t, random_key=bytes(range(32)))
        rx.reset()
        results.append(_session_like(rx, 1234))
    assert sim.received == model.received
    assert sim.written == model.written
    for a, b in zip(results[0][:-1], results[1][:-1], strict=True):
        for f in ("slots", "basis", "bit", "multi", "lost"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert results[0][-1] == results[1][-1]
    assert results[0][-1]["RX_EVENTS"] == 9000


def _spoilt(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 1])


def test_malformed_requests_and_link_errors_match_the_model(rtl):
    period = proto.register("SA_PERIOD")
    reqs = [
        proto.encode_frame(Opcode.PING, b"", 0),                              # resync seq
        proto.encode_frame(Opcode.READ_REG, b"\x00", 1),                      # short
        proto.encode_frame(Opcode.READ_REG, b"\x77\x77", 2),                  # no register
        proto.encode_frame(Opcode.READ_REG, struct.pack(">HB", period.address, 0), 3),
        proto.encode_frame(Opcode.WRITE_REG, struct.pack(">HI", 0x0000, 5), 4),   # read-only
        proto.encode_frame(Opcode.WRITE_REG, struct.pack(">HI", period.address, 0), 5),
        proto.encode_frame(Opcode.WRITE_REG, struct.pack(">HH", period.address, 0), 6),
        proto.encode_frame(Opcode.WRITE_REG, struct.pack(">HB8s", 0x0102, 2, bytes(8)), 7),
        proto.encode_frame(Opcode.LOAD_RECORDS, b"\x00" * 11, 8),                # not served
        proto.encode_frame(Opcode.RANDOM_WORDS, b"\x00", 9),
        proto.encode_frame(Opcode.RANDOM_WORDS, struct.pack(">H", 5) + b"\x00", 10),
        proto.encode_frame(Opcode.RANDOM_WORDS, struct.pack(">H", 5000) + bytes(1250), 11),
        proto.encode_frame(Opcode.TAG_EVENTS, b"", 12),
        proto.encode_frame(Opcode.TAG_EVENTS, b"\x02", 13),                   # reserved flag
        proto.encode_frame(Opcode.TAG_EVENTS, b"\x01" + bytes(10), 14),      # not 9k bytes
        proto.encode_frame(Opcode.TAG_EVENTS, b"\x01" + bytes(9), 15),       # no random word
        proto.encode_frame(Opcode.RANDOM_WORDS, struct.pack(">H", 8) + b"\x1b\xe4", 16),
        proto.encode_frame(Opcode.TAG_EVENTS, b"\x01" + proto.encode_tag_events(
            [3, 70000, 70001], [1, 2, 0], [1, 2, 3]), 17),                   # empty mask
        proto.encode_frame(Opcode.TAG_EVENTS, b"\x01" + proto.encode_tag_events(
            [5], [4], [9]), 18),                                              # lost rides on
        proto.encode_frame(Opcode.PING, b"again", 18),                        # repeat: seq
        proto.encode_frame(Opcode.TAG_EVENTS, b"\x01" + proto.encode_tag_events(
            [5], [4], [9]), 18),                                              # repeat: cached
        proto.encode_frame(Opcode.PING, b"old", 7),                           # stale
        b"\x13\x37\xa5\x00\xa5",                                              # garbage
        _spoilt(proto.encode_frame(Opcode.PING, bytes(300), 19)),            # bad CRC
        proto.SYNC + bytes([Opcode.PING.value, 19]) + b"\xff\xff",            # oversize
        proto.encode_frame(Opcode.PING, b"ok", 19),
    ]
    for seq, name in enumerate(("RX_DROPPED", "RX_LOST", "RX_DETECTIONS", "LINK_CRC_ERRORS",
                                "LINK_FRAMING_ERRORS", "LINK_RETRIES"), start=20):
        reqs.append(proto.encode_frame(Opcode.READ_REG, struct.pack(
            ">H", proto.register(name).address), seq))
    source = proto.register("TT_SOURCE")
    live = [
        (Opcode.LIVE_DETECTIONS, struct.pack(">HI", 5, 100)),             # not live: SOURCE
        (Opcode.LIVE_DETECTIONS, struct.pack(">HH", 5, 100)),             # short
        (Opcode.WRITE_REG, struct.pack(">H", source.address) + source.encode(1)),
        (Opcode.TAG_EVENTS, b"\x01"),                                     # live: SOURCE
        (Opcode.LIVE_DETECTIONS, struct.pack(">HI", 0, 100)),             # count 0
        (Opcode.LIVE_DETECTIONS, struct.pack(">HI", 1000, 100)),          # too large
        (Opcode.LIVE_DETECTIONS, struct.pack(">HI", 5, 1000)),            # no clicks
        (Opcode.READ_REG, struct.pack(">H", source.address)),
        (Opcode.WRITE_REG, struct.pack(">H", source.address) + source.encode(0)),
    ]
    reqs += [proto.encode_frame(op, p, seq) for seq, (op, p) in enumerate(live, start=26)]
    # the write rules, each side of every comparison (after reset: period = window_end = 1.0)
    one = 1 << 16
    rules = [("SA_WINDOW_END", one + 1), ("SA_WINDOW_START", one), ("SA_PERIOD", one - 1),
             ("SA_WINDOW_END", 300), ("SA_PERIOD", 299), ("SA_PERIOD", 300),
             ("SA_WINDOW_START", 300), ("SA_WINDOW_START", 299), ("SA_WINDOW_END", 299),
             ("SA_WINDOW_END", 0xFFFFFFFF), ("SA_PERIOD", 0xFFFFFFFF),
             ("SA_WINDOW_END", 0xFFFFFFFF)]
    reqs += [proto.encode_frame(Opcode.WRITE_REG, struct.pack(">H", proto.register(n).address)
                                + proto.register(n).encode(v), seq)
             for seq, (n, v) in enumerate(rules, start=26 + len(live))]
    answers = []
    for t in (Shared(ModelTransport(**FIRMWARE['receiver'])), Shared(rtl)):
        ReceiverDriver(t).reset()
        answers.append([[(f.opcode, f.seq, f.payload) for f in exchange(t, r)] for r in reqs])
    for k, (a, b) in enumerate(zip(*answers, strict=True)):
        assert a == b, f"request {k}: model {a}, rtl {b}"
    codes = [a[0][2][0] if a and a[0][0] == Opcode.ERROR.value else None
             for a in answers[0]]
    assert codes[1:16] == [ErrorCode.BAD_REQUEST.value, ErrorCode.BAD_ADDRESS.value,
                           ErrorCode.BAD_REQUEST.value, ErrorCode.READ_ONLY.value,
                           ErrorCode.BAD_VALUE.value, ErrorCode.BAD_REQUEST.value,
                           ErrorCode.BAD_VALUE.value, ErrorCode.UNKNOWN_OPCODE.value,
                           ErrorCode.BAD_REQUEST.value, ErrorCode.BAD_REQUEST.value,
                           ErrorCode.TOO_LARGE.value, ErrorCode.BAD_REQUEST.value,
                           ErrorCode.BAD_REQUEST.value, ErrorCode.BAD_REQUEST.value,
                           ErrorCode.RANDOM_UNDERFLOW.value]
    assert codes[19] == codes[21] == ErrorCode.STALE.value
    assert answers[0][20] == answers[0][18]                 # the cached answer, again
    assert codes[23] == ErrorCode.BAD_FRAME.value and codes[24] == ErrorCode.BAD_FRAME.value
    assert codes[32:38] == [ErrorCode.SOURCE.value, ErrorCode.BAD_REQUEST.value, None,
                            ErrorCode.SOURCE.value, ErrorCode.BAD_REQUEST.value,
                            ErrorCode.TOO_LARGE.value]
    assert answers[0][38][0][0] == Opcode.DETECTIONS.value and answers[0][38][0][2] == b""
    bad = ErrorCode.BAD_VALUE.value
    assert codes[41:] == [bad, bad, bad, None, bad, None, bad, None, bad, bad, None, None]


@pytest.mark.parametrize("seed", [7])
def test_faulty_link_never_changes_a_detection(rtl, seed):
    """Corrupted, truncated, duplicated, delayed and garbled frames both ways: retries or
    errors, never a different detection (the fault-free model is the reference)."""
    print("fault seed", seed)
    ref = ReceiverDriver(ModelTransport(), random_key=bytes(range(32)))
    want = _session_like(ref, seed, blocks=12, events=1500)
    for inner in (ModelTransport(**FIRMWARE['receiver']), Shared(rtl)):
        link = FaultyLink(inner, random.Random(seed), rate=0.3)
        rx = ReceiverDriver(link, random_key=bytes(range(32)))
        rx.reset()
        got = _session_like(rx, seed, blocks=12, events=1500)
        for a, b in zip(want[:-1], got[:-1], strict=True):
            for f in ("slots", "basis", "bit", "multi", "lost"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        assert got[-1] == want[-1]
        assert all(link.done[f] for f in FAULTS), link.done
        errors = rx.link_errors()
        assert rx.link_retries > 0 and errors["LINK_CRC_ERRORS"] > 0
        assert errors["LINK_FRAMING_ERRORS"] > 0 and errors["LINK_RETRIES"] > 0


def test_a_dead_link_is_a_clear_error(rtl):
    class Deaf(Shared):
        def write(self, data):
            pass                                       # every request is lost
    rx = ReceiverDriver(Shared(rtl))
    rx.transport = Deaf(rtl)
    with pytest.raises(DeviceError, match="no valid response to READ_REG after 3 retries"):
        rx.read_register("RX_EVENTS")
