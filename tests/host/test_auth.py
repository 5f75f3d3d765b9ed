"""Wegman–Carter authenticated channel: hash algebra, tamper/replay rejection, accounting."""

import multiprocessing
import os
import secrets
import signal
import time

import numpy as np
import pytest
from mozi.host.crypto.auth import (
    HASH_KEY_BITS,
    AuthenticatedChannel,
    AuthKeyPool,
    AuthKeyPoolExhausted,
    ChannelEmpty,
    MemoryTransport,
    PolyHash,
    auth_key_bits,
    bits_to_int,
    gf128_mul,
    make_channel_pair,
    one_time_tag,
    poly_hash,
    split_auth_key,
)
from mozi.host.errors import AuthenticationError, KeyStoreError, ProtocolAbort

from tests.host.keys import linked_stores

SEED = 31415926
R = 0x87


def _bits(n, seed=SEED):
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def _pools(n_bits=4096, tag_bits=64, seed=SEED):
    boot = _bits(n_bits, seed)
    return (AuthKeyPool.from_key(boot, role=0, tag_bits=tag_bits),
            AuthKeyPool.from_key(boot, role=1, tag_bits=tag_bits))


def _pair(n_bits=4096, tag_bits=64, seed=SEED, **kw):
    return make_channel_pair(*_pools(n_bits, tag_bits, seed), **kw)


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
    assert one_time_tag(ph, b"msg", 0xFF, 72) == ((full >> 56) ^ 0xFF).to_bytes(9, "big")
    with pytest.raises(ValueError):
        one_time_tag(ph, b"msg", 1 << 64, 64)
    with pytest.raises(ValueError):
        one_time_tag(ph, b"msg", 0, 60)


@pytest.mark.parametrize("tag_bits", [8, 32, 56, 136])
def test_short_tags_are_refused(tag_bits):
    """Defect 5 of the security issue: ``t = 32`` was allowed, a forgery chance of 2^-32 per
    attempt. Tags are now at least 64 bits, everywhere."""
    with pytest.raises(ValueError, match="tag_bits"):
        one_time_tag(PolyHash(1), b"msg", 0, tag_bits)
    with pytest.raises(ValueError, match="tag_bits"):
        AuthKeyPool.from_key(_bits(4096), role=0, tag_bits=tag_bits)


def test_bits_to_int():
    assert bits_to_int(np.array([1, 0, 1], np.uint8)) == 5
    assert bits_to_int(np.array([], np.uint8)) == 0
    assert bits_to_int(np.array([1] + [0] * 127, np.uint8)) == 1 << 127


def test_key_split_and_pad_positions():
    boot = _bits(HASH_KEY_BITS + 2 * 64 * 3 + 1)            # an odd last bit is dropped
    h, p0, p1 = split_auth_key(boot)
    assert h == bits_to_int(boot[:HASH_KEY_BITS])
    np.testing.assert_array_equal(p0, boot[HASH_KEY_BITS:HASH_KEY_BITS + 192])
    np.testing.assert_array_equal(p1, boot[HASH_KEY_BITS + 192:HASH_KEY_BITS + 384])
    pool = AuthKeyPool.from_key(boot, role=1)
    assert pool.pad(1, 2) == bits_to_int(p1[128:192])        # pad k = bits [k·t, (k+1)·t)
    assert pool.use(1, 1) == 128                              # pad 0 burned, pad 1 used
    assert pool.next_seq(1) == 2 and pool.available_bits(1) == 64
    with pytest.raises(ValueError, match="used already"):
        pool.pad(1, 1)
    with pytest.raises(AuthKeyPoolExhausted, match="pad 3 of direction 1"):
        pool.pad(1, 3)
    pool.replenish(np.zeros(64, np.uint8), np.ones(64, np.uint8))
    assert pool.pad(1, 3) == (1 << 64) - 1 and pool.available_bits() == (192 + 64) + (64 + 64)
    assert auth_key_bits(1024) == HASH_KEY_BITS + 2 * 1024 * 64
    with pytest.raises(ValueError, match="at least"):
        split_auth_key(_bits(100))


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
    alice, bob = _pair(max_failures=20)
    bob.verify_frame(bob.transport.inbox.popleft())           # alice's open frame
    frame = alice.send("seed", b"toeplitz seed bits")
    inbox = bob.transport.inbox
    for pos in (0, 4, 12, 14, len(frame) - 20, len(frame) - 1):
        bad = bytearray(frame)
        bad[pos] ^= 0x10
        with pytest.raises(AuthenticationError):
            bob.verify_frame(bytes(bad))
    forged = frame.replace(b"toeplitz seed bits", b"attacker seed bits")
    inbox[0] = forged
    with pytest.raises(AuthenticationError, match="failed authentication"):
        bob.receive()
    with pytest.raises(AuthenticationError, match="malformed"):
        bob.verify_frame(frame[:-1])
    with pytest.raises(AuthenticationError, match="malformed"):
        bob.verify_frame(frame + b"\x00")
    with pytest.raises(AuthenticationError, match="malformed"):
        bob.verify_frame(frame[:5])
    assert bob.verify_frame(frame) == ("seed", b"toeplitz seed bits")
    assert bob.failures == 10


def test_replay_and_reorder_rejected():
    alice, bob = _pair(max_failures=10)
    bob.verify_frame(bob.transport.inbox.popleft())
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


def test_first_frame_must_be_the_open_frame():
    """Only the peer's open frame may skip sequence numbers; a session message may not."""
    pa, pb = _pools()
    ta, tb = MemoryTransport.pair()
    alice, bob = AuthenticatedChannel(pa, ta), AuthenticatedChannel(pb, tb)
    alice.open()
    f = alice.send("a", b"x")
    with pytest.raises(AuthenticationError, match="not its open frame"):
        bob.verify_frame(f)
    with pytest.raises(ValueError, match="reserved"):
        alice.send("open", b"")


def test_reflected_message_rejected():
    alice, bob = _pair()
    frame = alice.send("a", b"x")
    with pytest.raises(AuthenticationError, match="direction"):
        alice.verify_frame(frame)           # sent back to its sender


def test_different_pools_cannot_talk():
    a, _ = _pair(seed=1)
    _, b = _pair(seed=2)
    b.transport.inbox.clear()
    with pytest.raises(AuthenticationError, match="failed authentication"):
        b.verify_frame(a.transport.peer.inbox[0])


@pytest.mark.parametrize("tag_bits", [64, 96, 128])
def test_exact_key_accounting(tag_bits):
    """Defect 5: the old accounting reported 1,024 bits for a session that took 1,280 from
    the pool (pads drawn in pairs, one direction's unused half never counted). Every pad
    that leaves the pool is now counted, and the two ends count the same."""
    pa, pb = _pools(HASH_KEY_BITS + 2 * tag_bits * 7, tag_bits)
    before = pa.available_bits()
    alice, bob = make_channel_pair(pa, pb)
    msgs = [("report", b"r" * 100), ("report", b"r" * 7), ("flags", b"f" * 33)]
    for kind, payload in msgs:
        alice.send(kind, payload)
    for _ in msgs:
        bob.receive()
    bob.send("flags", b"ok")
    alice.receive()
    used = tag_bits * (4 + 1)                    # 3 + 1 messages + alice's open ...
    assert alice.consumed_bits == tag_bits * (1 + 3 + 2)      # own open + 3 sent + bob's 2
    assert alice.consumed_bits == bob.consumed_bits == used + tag_bits
    assert before - pa.available_bits() == alice.consumed_bits
    assert before - pb.available_bits() == bob.consumed_bits
    frame_overhead = 8 * (2 + 1 + 1 + 8 + 1 + 4) + tag_bits
    assert alice.sent_bits == {
        "open": frame_overhead + 8 * 4,
        "report": 2 * frame_overhead + 8 * (6 + 6 + 100 + 7),
        "flags": frame_overhead + 8 * (5 + 33)}
    assert alice.payload_bits == {"open": 0, "report": 8 * 107, "flags": 8 * 33}
    assert bob.received_bits == alice.sent_bits
    assert (alice.sent_messages, alice.received_messages) == (4, 2)
    # a rejected frame consumes no pad
    bad = bytearray(alice.send("x", b"y"))
    bad[-1] ^= 1
    before = bob.consumed_bits
    with pytest.raises(AuthenticationError):
        bob.verify_frame(bytes(bad))
    assert bob.consumed_bits == before


def test_pool_exhaustion_sends_nothing_and_replenish_resumes():
    pa, pb = _pools(HASH_KEY_BITS + 2 * 64 * 2)
    alice, bob = make_channel_pair(pa, pb)                    # each open used one pad
    alice.send("a", b"1")
    with pytest.raises(AuthKeyPoolExhausted):
        alice.send("a", b"2")
    assert len(bob.transport.inbox) == 2
    assert bob.receive() == ("a", b"1")
    more = _bits(128, 7)
    for pool in (pa, pb):
        pool.replenish(more[:64], more[64:])
    alice.send("a", b"2")
    assert bob.receive() == ("a", b"2")


def _forgery_run(n_forged: int):
    """Bob's inbox: Alice's open frame, ``n_forged`` forgeries of her next frame, the frame."""
    alice, bob = _pair()
    genuine = alice.send("msg", b"real")
    forged = bytearray(genuine)
    forged[-1] ^= 1
    inbox = bob.transport.inbox
    inbox.pop()
    inbox.extend([bytes(forged)] * n_forged + [genuine])
    return alice, bob


def test_failed_verifications_close_the_channel():
    """Defect 5: failed verifications were unlimited, so a forger could keep trying against
    one pad. The channel now closes after ``max_failures`` (default 3) rejected frames, and
    ``expect`` skips rejected frames only while it is open."""
    alice, bob = _forgery_run(2)
    assert bob.expect("msg") == b"real"                      # two rejections tolerated
    assert bob.failures == 2 and not bob.closed
    bob.transport.inbox.append(alice.send("msg", b"again"))
    with pytest.raises(ProtocolAbort, match="expected a 'other' message"):
        bob.expect("other")
    _, bob = _forgery_run(3)
    with pytest.raises(AuthenticationError, match="closed after 3 rejected"):
        bob.expect("msg")
    for call in (bob.receive, lambda: bob.send("x", b"")):
        with pytest.raises(AuthenticationError, match="closed"):
            call()
    assert len(bob.transport.inbox) == 1                     # the genuine frame not taken


def test_rebuilt_channel_rejects_replayed_frames(tmp_path):
    """Defect 5: each session drew a fresh bootstrap key in-process and no pool state was
    persisted, so a channel rebuilt from the same bootstrap accepted a replayed frame of an
    earlier session. Now the pads and sequence numbers live in the key stores: frames of an
    old session carry used sequence numbers and are rejected by any later channel."""
    sa, sb = linked_stores(tmp_path, "sat-moscow", "satellite", "moscow")
    alice, bob = make_channel_pair(sa.auth_key("sat-moscow"), sb.auth_key("sat-moscow"))
    old = [bob.transport.inbox[0], alice.send("key-ids", b"session 1")]
    assert bob.receive() == ("key-ids", b"session 1")
    # a new session: both ends rebuild their channel from the store
    alice, bob = make_channel_pair(sa.auth_key("sat-moscow"), sb.auth_key("sat-moscow"))
    bob.transport.inbox.clear()
    for frame in old:
        with pytest.raises(AuthenticationError, match="replayed"):
            bob.verify_frame(frame)
    # the pads of session 1 are gone from both stores (Alice sent 3 frames, received none)
    assert sa.auth_status()["sat-moscow"]["next_seq"] == [3, 0]
    assert sb.auth_status()["sat-moscow"]["next_seq"] == [2, 2]


class _Crash(Exception):
    pass


class _DeadTransport:
    def send(self, frame):
        raise _Crash("power cut")


def test_a_pad_is_spent_before_its_frame_leaves(tmp_path):
    """A crash after the pad is persisted but before the frame is sent burns that pad: the
    restarted sender tags its next frame with the next pad (one pad never tags two frames),
    and the receiver accepts the restarted sender's open frame, skipping the burned pad."""
    sa, sb = linked_stores(tmp_path, "l", "a", "b")
    c = AuthenticatedChannel(sa.auth_key("l"), _DeadTransport())
    with pytest.raises(_Crash):
        c.open()
    assert sa.auth_status()["l"]["next_seq"] == [1, 0]       # pad 0 spent and persisted
    alice, bob = make_channel_pair(sa.auth_key("l"), sb.auth_key("l"))
    first = bob.transport.inbox[0]
    assert first[4:12] == (1).to_bytes(8, "big")             # the restarted open is frame 1
    alice.send("m", b"after the crash")
    assert bob.receive() == ("m", b"after the crash")
    assert bob.burned_bits == 64
    assert sb.auth_status()["l"]["next_seq"] == [3, 1]


def test_channel_parameter_checks():
    pool = AuthKeyPool.from_key(_bits(512), role=0)
    with pytest.raises(ValueError):
        AuthKeyPool.from_key(_bits(512), role=2)
    with pytest.raises(ValueError):
        AuthenticatedChannel(pool, MemoryTransport(), max_failures=0)
    with pytest.raises(ValueError):
        make_channel_pair(pool, AuthKeyPool.from_key(_bits(512), role=0))
    alice, _ = _pair()
    with pytest.raises(ValueError):
        alice.send("", b"x")
    with pytest.raises(KeyStoreError):
        raise AuthKeyPoolExhausted("is a key store error")


class _FileTransport:
    """Frames appended to a file, each behind a 4-byte length, unbuffered."""

    def __init__(self, path):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def send(self, frame):
        os.write(self._fd, len(frame).to_bytes(4, "big") + frame)


def _send_forever(store_path, out_path, ready):
    from mozi.host.keys.keystore import KeyStore

    channel = AuthenticatedChannel(KeyStore(store_path).auth_key("l"), _FileTransport(out_path))
    channel.open()
    ready.set()
    i = 0
    while True:
        channel.send("m", i.to_bytes(8, "big"))
        i += 1


def _frames(path):
    data, out, pos = path.read_bytes(), [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if pos + 4 + n > len(data):
            break                                    # the kill cut this frame short
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def test_no_pad_is_used_twice_across_sigkills(tmp_path):
    """A sender killed with SIGKILL at random moments, 20 times, restarted from its store
    each time: no two frames it ever wrote share a sequence number (hence a pad), and the
    receiver accepts every one of them in order, each run's open frame skipping the pads the
    killed run had spent but not sent."""
    sa, sb = linked_stores(tmp_path, "l", "a", "b", key_bits=128 + 2 * 64 * 20_000)
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    ctx = multiprocessing.get_context("fork")
    runs = []
    for k in range(20):
        out = tmp_path / f"run{k}.frames"
        ready = ctx.Event()
        proc = ctx.Process(target=_send_forever, args=(sa.path, out, ready))
        proc.start()
        assert ready.wait(30)
        time.sleep(float(rng.uniform(0.0, 0.05)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        runs.append(_frames(out))
    seqs = [int.from_bytes(f[4:12], "big") for run in runs for f in run]
    assert len(seqs) == len(set(seqs)) and sum(len(r) > 1 for r in runs) >= 10
    assert seqs == sorted(seqs)
    for run in runs:                                 # each restart is a session of its own
        bob = AuthenticatedChannel(sb.auth_key("l"), MemoryTransport())
        for frame in run:
            bob.verify_frame(frame)
        assert bob.failures == 0
    assert sa.auth_status()["l"]["next_seq"][0] >= max(seqs) + 1
