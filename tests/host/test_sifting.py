"""Sifting over the authenticated channel: messages, decoy counts, tamper detection."""

import numpy as np
import pytest
from mozi.host.crypto.auth import AuthKeyPool, make_channel_pair
from mozi.host.devices.device import TransmitterDriver, open_device
from mozi.host.errors import AuthenticationError, ProtocolAbort
from mozi.host.postprocessing.sifting import (
    SiftingError,
    alice_answer_report,
    bob_receive_flags,
    bob_send_report,
    decode_report,
    encode_report,
    run_sifting,
)
from mozi.sim.model import alice_record
from mozi.sim.source import AliceSource


def _channels(tag_bits=64, max_failures=3):
    boot = np.random.default_rng(0).integers(0, 2, 1 << 14).astype(np.uint8)
    return make_channel_pair(AuthKeyPool.from_key(boot, role=0, tag_bits=tag_bits),
                             AuthKeyPool.from_key(boot, role=1, tag_bits=tag_bits),
                             max_failures=max_failures)


def _bob(src, n=20_000, qber=0.03, seed=0):
    """Bob's detections at random slots: random basis, Alice's bit with ``qber`` flips."""
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(10**8, n, replace=False)) + 5
    a_basis, a_bit, a_int = src.choices(slots)
    basis = rng.integers(0, 2, n).astype(np.uint8)
    bit = np.where(basis == a_basis, a_bit ^ (rng.random(n) < qber),
                   rng.integers(0, 2, n)).astype(np.uint8)
    return slots, basis, bit, (a_basis, a_bit, a_int)


def _records(src):
    return lambda s: alice_record(*src.choices(s))


def test_sifting_counts_match_ground_truth():
    src = AliceSource(123)
    slots, basis, bit, (a_basis, a_bit, a_int) = _bob(src)
    ch_a, ch_b = _channels()
    tx = TransmitterDriver(open_device("model"))
    alice, bob = run_sifting(ch_a, ch_b, tx, _records(src), slots, basis, bit)
    match = basis == a_basis
    z = match & (basis == 0)
    x = match & (basis == 1)
    np.testing.assert_array_equal(alice.slots, slots[z])
    np.testing.assert_array_equal(bob.slots, slots[z])
    np.testing.assert_array_equal(alice.key, a_bit[z])
    np.testing.assert_array_equal(bob.key, bit[z])
    np.testing.assert_array_equal(bob.intensity, a_int[z])
    for stats in (alice.stats, bob.stats):
        np.testing.assert_array_equal(stats.n_z, np.bincount(a_int[z], minlength=3))
        np.testing.assert_array_equal(stats.n_x, np.bincount(a_int[x], minlength=3))
        np.testing.assert_array_equal(
            stats.m_x, np.bincount(a_int[x & (bit != a_bit)], minlength=3))
    qx = bob.stats.m_x.sum() / bob.stats.n_x.sum()
    assert 0.02 < qx < 0.04
    # five messages (and each end's open frame), each authenticated once on each side;
    # nothing left in the inboxes
    assert ch_a.sent_messages == 1 + 3 and ch_b.sent_messages == 1 + 2
    # five messages and the two ends' open frames, one 64-bit pad each, at both ends
    assert ch_a.consumed_bits == 7 * 64 == ch_b.consumed_bits
    assert not ch_a.transport.inbox and not ch_b.transport.inbox
    assert set(ch_b.payload_bits) == {"open", "sift-report", "x-bits"}
    # varint differences (mean gap 5000 slots: 2 bytes) + 1 bit of basis per detection
    assert ch_b.payload_bits["sift-report"] < 8 * 2.2 * slots.size


def test_tampered_report_is_rejected():
    src = AliceSource(5)
    slots, basis, bit, _ = _bob(src, n=500)
    ch_a, ch_b = _channels(max_failures=1)
    tx = TransmitterDriver(open_device("model"))
    bob_send_report(ch_b, slots, basis)
    frame = bytearray(ch_a.transport.inbox.pop())
    frame[40] ^= 1                                        # flip one bit of a reported slot
    ch_a.transport.inbox.append(bytes(frame))
    with pytest.raises(AuthenticationError):
        alice_answer_report(ch_a, tx, _records(src))


def test_inconsistent_flags_abort():
    src = AliceSource(6)
    slots, basis, bit, _ = _bob(src, n=300)
    ch_a, ch_b = _channels()
    tx = TransmitterDriver(open_device("model"))
    bob_send_report(ch_b, slots, basis)
    alice_answer_report(ch_a, tx, _records(src))
    with pytest.raises(SiftingError, match="match flags"):
        bob_receive_flags(ch_b, slots[:-1], basis[:-1], bit[:-1])
    assert issubclass(SiftingError, ProtocolAbort)


def test_unsorted_report_refused():
    ch_a, ch_b = _channels()
    with pytest.raises(ValueError):
        bob_send_report(ch_b, np.array([3, 2]), np.zeros(2, np.uint8))


@pytest.mark.parametrize("slots", [[], [0], [-5, 7], [3, 4, 5, 6],
                                   [0, 127, 128, 255, 16_511, 16_512, 2**40, 2**62]])
def test_report_encoding_roundtrip(slots):
    s = np.array(slots, np.int64)
    b = (np.arange(s.size) % 2).astype(np.uint8)
    payload = encode_report(s, b)
    s2, b2 = decode_report(payload)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(b2, b)
    if s.size >= 2:
        with pytest.raises(SiftingError):
            decode_report(payload[:-2])


def test_report_encoding_large_random():
    rng = np.random.default_rng(9)
    s = np.cumsum(rng.geometric(1e-4, 100_000)).astype(np.int64) + 10**10
    b = rng.integers(0, 2, s.size).astype(np.uint8)
    payload = encode_report(s, b)
    assert len(payload) < 3 * s.size
    s2, b2 = decode_report(payload)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(b2, b)
    with pytest.raises(SiftingError):
        decode_report(payload[:4] + payload[12:])


@pytest.mark.parametrize("payload", [
    bytes.fromhex("00000001" "0000000000000003" "c5" "01"),       # found by `make fuzz`
    bytes.fromhex("00000001" "0000000000000003" "c5" "fffffeffffff"),
    bytes.fromhex("00000002" "0000000000000003" "80" "01"),
])
def test_report_with_stray_difference_bytes_is_malformed(payload):
    """One report and leftover varint bytes (all continuation bytes): an IndexError in the old
    decoder; a ``SiftingError`` now."""
    with pytest.raises(SiftingError):
        decode_report(payload)
