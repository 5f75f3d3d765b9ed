"""Wegman–Carter authenticated channel: hash algebra, tamper/replay rejection, accounting."""

import secrets

import numpy as np
import pytest
from mozi.host.auth import (
    HASH_KEY_BITS,
    AuthenticatedChannel,
    AuthKeyPool,
    AuthKeyPoolExhausted,
    ChannelEmpty,
    MemoryTransport,
    PolyHash,
    bits_to_int,
    gf128_mul,
    make_channel_pair,
    one_time_tag,
    poly_hash,
)
from mozi.host.errors import AuthenticationError, KeyStoreError
from mozi.host.keystore import KeyStore

SEED = 31415926
R = 0x87


def _bits(n, seed=SEED):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def _pair(n_bits=4096, tag_bits=64, seed=SEED):
    boot = _bits(n_bits, seed)
    return make_channel_pair(AuthKeyPool(boot), AuthKeyPool(boot.copy()), tag_bits=tag_bits)


def test_gf128_field_laws():
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    vals = [int.from_bytes(rng.bytes(16), "big") for _ in range(30)]
    for a, b, c in zip(vals, vals[1:], vals[2:], strict=False):
        assert gf128_mul(a, b) == gf128_mul(b, a)
        assert gf128_mul(gf128_mul(a, b), c) == gf128_mul(a, gf128_mul(b, c))
        assert gf128_mul(a, b ^ c) == gf128_mul(a, b) ^ gf128_mul(a, c)
        assert gf128_mul(a, 1) == a
    assert gf128_mul(1 << 127, 2) == R                  # x^128 = x^7 + x^2 + x + 1
    # a^(2^128) = a (Frobenius), checked by 128 squarings
    a = vals[0]
    x = a
    for _ in range(128):
        x = gf128_mul(x, x)
    assert x == a
    with pytest.raises(ValueError):
        gf128_mul(1 << 128, 1)


def test_table_multiply_matches_reference():
    rng = np.random.default_rng(SEED + 1)
    for _ in range(10):
        h = int.from_bytes(rng.bytes(16), "big")
        ph = PolyHash(h)
        for _ in range(20):
            a = int.from_bytes(rng.bytes(16), "big")
            assert ph.mul(a) == gf128_mul(a, h)


def _ref_hash(h, data):
    blocks = data + bytes(-len(data) % 16) + (8 * len(data)).to_bytes(16, "big")
    y = 0
    for i in range(0, len(blocks), 16):
        y = gf128_mul(y ^ int.from_bytes(blocks[i:i + 16], "big"), h)
    return y


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 100, 1000])
def test_poly_hash_matches_horner_reference(size):
    rng = np.random.default_rng(SEED + size)
    h = int.from_bytes(rng.bytes(16), "big")
    data = rng.bytes(size)
    assert poly_hash(h, data) == _ref_hash(h, data)


def test_poly_hash_is_a_polynomial_in_the_key():
    # one block m, length block l: H = m·h^2 + l·h
    h, m = 0x1234567890ABCDEF << 40, 0xDEADBEEF << 64
    expect = gf128_mul(gf128_mul(m, h), h) ^ gf128_mul(128, h)
    assert poly_hash(h, m.to_bytes(16, "big")) == expect


def test_zero_padding_and_length_distinguish_messages():
    h = int.from_bytes(secrets.token_bytes(16), "big") | 1
    assert poly_hash(h, b"abc") != poly_hash(h, b"abc\x00")
    assert poly_hash(h, b"") != poly_hash(h, b"\x00" * 16)


def test_one_time_tag_truncation_and_pad():
    ph = PolyHash(12345)
    full = ph.digest(b"msg")
    assert one_time_tag(ph, b"msg", 0, 128) == full.to_bytes(16, "big")
    assert one_time_tag(ph, b"msg", 0, 64) == (full >> 64).to_bytes(8, "big")
    assert one_time_tag(ph, b"msg", 0xFF, 32) == ((full >> 96) ^ 0xFF).to_bytes(4, "big")
    with pytest.raises(ValueError):
        one_time_tag(ph, b"msg", 1 << 64, 64)
    with pytest.raises(ValueError):
        one_time_tag(ph, b"msg", 0, 60)


def test_bits_to_int():
    assert bits_to_int(np.array([1, 0, 1], np.uint8)) == 5
    assert bits_to_int(np.array([], np.uint8)) == 0
    assert bits_to_int(np.array([1] + [0] * 127, np.uint8)) == 1 << 127


def test_pool_fifo_and_exhaustion():
    boot = _bits(100)
    pool = AuthKeyPool(boot)
    np.testing.assert_array_equal(pool.take(30), boot[:30])
    pool.replenish(np.ones(10, np.uint8))
    np.testing.assert_array_equal(pool.take(75), np.concatenate([boot[30:], np.ones(5)]))
    assert (pool.available_bits, pool.taken_bits, pool.added_bits) == (5, 105, 110)
    with pytest.raises(AuthKeyPoolExhausted, match="6 bits needed, 5 left"):
        pool.take(6)
    assert pool.available_bits == 5                      # a refused take takes nothing
    assert issubclass(AuthKeyPoolExhausted, KeyStoreError)
    with pytest.raises(ValueError):
        pool.replenish(np.array([0, 3]))


def test_round_trip_both_directions_interleaved():
    alice, bob = _pair()
    alice.send("report", b"slots and bases")
    alice.send("empty", b"")
    bob.send("flags", bytes(range(256)) * 4)
    assert alice.receive() == ("flags", bytes(range(256)) * 4)
    bob.send("parity", b"\x01")
    assert bob.receive() == ("report", b"slots and bases")
    assert bob.receive() == ("empty", b"")
    assert alice.receive() == ("parity", b"\x01")
    with pytest.raises(ChannelEmpty):
        bob.receive()


def test_tampered_message_rejected_then_genuine_accepted():
    alice, bob = _pair()
    frame = alice.send("seed", b"toeplitz seed bits")
    inbox = bob.transport.inbox
    for pos in (0, 4, 12, 14, len(frame) - 20, len(frame) - 1):
        bad = bytearray(frame)
        bad[pos] ^= 0x10
        with pytest.raises(AuthenticationError):
            bob.verify_frame(bytes(bad))
    # substitute the payload completely (same length) and recompute nothing
    forged = frame.replace(b"toeplitz seed bits", b"attacker seed bits")
    inbox[0] = forged
    with pytest.raises(AuthenticationError, match="failed authentication"):
        bob.receive()
    # truncated / extended frames
    with pytest.raises(AuthenticationError, match="malformed"):
        bob.verify_frame(frame[:-1])
    with pytest.raises(AuthenticationError, match="malformed"):
        bob.verify_frame(frame + b"\x00")
    with pytest.raises(AuthenticationError, match="malformed"):
        bob.verify_frame(frame[:5])
    assert bob.verify_frame(frame) == ("seed", b"toeplitz seed bits")


def test_replay_and_reorder_rejected():
    alice, bob = _pair()
    f0 = alice.send("a", b"zero")
    f1 = alice.send("a", b"one")
    bob.transport.inbox.clear()
    with pytest.raises(AuthenticationError, match="out-of-order"):
        bob.verify_frame(f1)
    assert bob.verify_frame(f0) == ("a", b"zero")
    with pytest.raises(AuthenticationError, match="replayed"):
        bob.verify_frame(f0)
    assert bob.verify_frame(f1) == ("a", b"one")
    with pytest.raises(AuthenticationError, match="replayed"):
        bob.verify_frame(f1)


def test_reflected_message_rejected():
    alice, bob = _pair()
    frame = alice.send("a", b"x")
    with pytest.raises(AuthenticationError, match="direction"):
        alice.verify_frame(frame)           # sent back to its sender


def test_different_pools_cannot_talk():
    a, _ = _pair(seed=1)
    _, b = _pair(seed=2)
    frame = a.send("a", b"hello")
    with pytest.raises(AuthenticationError, match="failed authentication"):
        b.verify_frame(frame)


@pytest.mark.parametrize("tag_bits", [32, 64, 128])
def test_exact_key_accounting(tag_bits):
    boot = _bits(HASH_KEY_BITS + 2 * tag_bits * 7)
    pa, pb = AuthKeyPool(boot), AuthKeyPool(boot.copy())
    alice, bob = make_channel_pair(pa, pb, tag_bits=tag_bits)
    msgs = [("report", b"r" * 100), ("report", b"r" * 7), ("flags", b"f" * 33)]
    for kind, payload in msgs:
        alice.send(kind, payload)
    for _ in msgs:
        bob.receive()
    bob.send("flags", b"ok")
    alice.receive()
    used = HASH_KEY_BITS + tag_bits * 4
    assert alice.consumed_bits == bob.consumed_bits == used
    # three Alice→Bob pads were taken in pairs, so two Bob→Alice pads wait unused
    assert alice.reserved_bits == bob.reserved_bits == 2 * tag_bits
    assert pa.taken_bits == alice.consumed_bits + alice.reserved_bits
    assert pb.taken_bits == pa.taken_bits
    frame_overhead = 8 * (2 + 1 + 1 + 8 + 1 + 4) + tag_bits
    assert alice.sent_bits == {
        "report": 2 * frame_overhead + 8 * (6 + 6 + 100 + 7),
        "flags": frame_overhead + 8 * (5 + 33)}
    assert alice.payload_bits == {"report": 8 * 107, "flags": 8 * 33}
    assert bob.received_bits == alice.sent_bits
    assert bob.sent_bits == alice.received_bits == {"flags": frame_overhead + 8 * (5 + 2)}
    assert (alice.sent_messages, alice.received_messages) == (3, 1)
    # a failed verification consumes nothing
    bad = bytearray(alice.send("x", b"y"))
    bad[-1] ^= 1
    before = bob.consumed_bits
    with pytest.raises(AuthenticationError):
        bob.verify_frame(bytes(bad))
    assert bob.consumed_bits == before


def test_pool_exhaustion_sends_nothing_and_replenish_resumes():
    boot = _bits(HASH_KEY_BITS + 2 * 64)
    alice, bob = make_channel_pair(AuthKeyPool(boot), AuthKeyPool(boot.copy()))
    alice.send("a", b"1")
    with pytest.raises(AuthKeyPoolExhausted):
        alice.send("a", b"2")
    assert len(bob.transport.inbox) == 1
    assert bob.receive() == ("a", b"1")
    more = _bits(256, 7)
    alice.pool.replenish(more)
    bob.pool.replenish(more)
    alice.send("a", b"2")
    assert bob.receive() == ("a", b"2")


def test_replenish_from_key_stores(tmp_path):
    key = _bits(3000, 5)
    with KeyStore(tmp_path / "a.db") as sa, KeyStore(tmp_path / "b.db") as sb:
        ids = sa.add_key("auth", key, block_bits=1000)
        sb.add_key("auth", key, key_ids=ids, block_bits=1000)
        boot = _bits(HASH_KEY_BITS)
        pa, pb = AuthKeyPool(boot), AuthKeyPool(boot.copy())
        alice, bob = make_channel_pair(pa, pb)
        sent_ids = pa.reserve_from_store(sa, "auth", 1500)
        assert sent_ids == ids[:2]
        assert pb.replenish_from_store(sb, sent_ids) == 2000
        for i in range(15):
            alice.send("m", bytes([i]))
            assert bob.receive() == ("m", bytes([i]))
        with pytest.raises(KeyStoreError, match="already used"):
            pb.replenish_from_store(sb, sent_ids)


def test_channel_parameter_checks():
    pool = AuthKeyPool(_bits(512))
    with pytest.raises(ValueError):
        AuthenticatedChannel(pool, "eve", MemoryTransport())
    with pytest.raises(ValueError):
        AuthenticatedChannel(pool, "alice", MemoryTransport(), tag_bits=24)
    alice, _ = _pair()
    with pytest.raises(ValueError):
        alice.send("", b"x")
