"""Cascade: correctness, exact leak accounting and the efficiency bar of issue 3."""

import math

import numpy as np
import pytest
from mozi.host.postprocessing.cascade import AliceParityOracle, block_sizes, reconcile

SEED = 424242


def _pair(n, qber, seed):
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors


class RecordingOracle(AliceParityOracle):
    """Alice's oracle that also keeps every answered range, to recount the leak."""

    def __init__(self, bits):
        super().__init__(bits)
        self.answered = 0
        self.calls = 0

    def parities(self, shuffle, lo, hi):
        self.answered += int(np.asarray(lo).size)
        self.calls += 1
        return super().parities(shuffle, lo, hi)


@pytest.mark.parametrize("qber", [0.01, 0.02, 0.05])
def test_efficiency_bar_at_1e5_bits(qber):
    """Issue 3: f <= 1.10 at QBER 1-5 % for 10^5-bit blocks, all errors corrected."""
    alice, bob = _pair(100_000, qber, SEED + int(qber * 1000))
    r = reconcile(alice, bob, qber, seed=SEED)
    print(f"seed {SEED} qber {qber} f {r.efficiency:.4f} leak {r.leaked_bits} msgs {r.messages}")
    np.testing.assert_array_equal(r.corrected, alice)
    assert r.flipped_bits == r.initial_errors
    assert 1.0 < r.efficiency <= 1.10
    assert r.passes == 16 and r.messages > r.passes


@pytest.mark.parametrize("qber", [0.01, 0.03, 0.05, 0.08])
def test_small_trials_leave_no_residual_errors(qber):
    """Small version of the 1,000-trial benchmark: 12 keys of 10^4 bits per QBER."""
    for t in range(12):
        alice, bob = _pair(10_000, qber, SEED + 1000 * t + int(qber * 1e4))
        r = reconcile(alice, bob, qber, seed=t)
        np.testing.assert_array_equal(r.corrected, alice, err_msg=f"trial {t}")


def test_leak_is_exactly_what_alice_answered():
    alice, bob = _pair(30_000, 0.03, SEED + 5)
    oracle = RecordingOracle(alice)
    r = reconcile(alice, bob, 0.03, seed=7, oracle=oracle)
    assert r.leaked_bits == oracle.answered == oracle.leaked_bits
    assert r.messages == oracle.calls == oracle.messages
    np.testing.assert_array_equal(r.corrected, alice)


def test_bob_only_learns_through_the_oracle():
    """Correction must not read alice_bits: give reconcile a decoy, the oracle the truth."""
    alice, bob = _pair(20_000, 0.02, SEED + 6)
    decoy = np.zeros_like(alice)
    r = reconcile(decoy, bob, 0.02, seed=3, oracle=AliceParityOracle(alice))
    np.testing.assert_array_equal(r.corrected, alice)


def test_leak_cost_of_one_error_is_a_binary_search():
    """One error in 4096 bits, first-pass blocks of k: top parities + log2(k) search bits."""
    n = 4096
    rng = np.random.default_rng(SEED + 8)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice.copy()
    bob[1234] ^= 1
    sizes = block_sizes(0.01, n, 16)
    r = reconcile(alice, bob, 0.01, seed=11)
    np.testing.assert_array_equal(r.corrected, alice)
    k1 = sizes[0]
    # pass 1: n/k1 parities, then log2(k1) halvings; every later pass: its blocks minus the
    # last (inferred from the whole-key parity), and no search because all parities match
    later = sum(-(-n // k) - 1 for k in sizes[1:])
    assert r.leaked_bits == n // k1 + int(math.log2(k1)) + later


def test_identical_keys_only_cost_block_parities():
    alice, _ = _pair(10_000, 0.0, SEED + 9)
    r = reconcile(alice, alice, 0.02, seed=1)
    np.testing.assert_array_equal(r.corrected, alice)
    assert r.flipped_bits == 0 and r.initial_errors == 0
    sizes = block_sizes(0.02, 10_000, 16)
    first = -(-10_000 // sizes[0])
    later = sum(-(-10_000 // k) - 1 for k in sizes[1:])
    assert r.leaked_bits == first + later
    assert r.efficiency == math.inf


def test_burst_errors_are_corrected():
    """The shuffles spread a burst of adjacent errors over many blocks."""
    alice, _ = _pair(20_000, 0.0, SEED + 10)
    bob = alice.copy()
    bob[5000:5400] ^= 1          # 2 % of the key, all in one place
    r = reconcile(alice, bob, 0.02, seed=5)
    np.testing.assert_array_equal(r.corrected, alice)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 100])
def test_tiny_keys(n):
    rng = np.random.default_rng(SEED + n)
    for t in range(20):
        alice = rng.integers(0, 2, n, dtype=np.uint8)
        bob = alice ^ (rng.random(n) < 0.1).astype(np.uint8)
        r = reconcile(alice, bob, 0.05, seed=t)
        np.testing.assert_array_equal(r.corrected, alice, err_msg=f"n={n} trial {t}")


def test_empty_key():
    r = reconcile(np.zeros(0, np.uint8), np.zeros(0, np.uint8), 0.02, seed=0)
    assert r.corrected.size == 0 and r.leaked_bits == 0 and r.messages == 0
    assert math.isnan(r.efficiency)


def test_deterministic_for_a_seed_and_input_untouched():
    alice, bob = _pair(20_000, 0.04, SEED + 11)
    keep = bob.copy()
    r1 = reconcile(alice, bob, 0.04, seed=99)
    r2 = reconcile(alice, bob, 0.04, seed=99)
    np.testing.assert_array_equal(bob, keep)
    assert (r1.leaked_bits, r1.messages) == (r2.leaked_bits, r2.messages)
    r3 = reconcile(alice, bob, 0.04, seed=100)
    np.testing.assert_array_equal(r3.corrected, alice)
    assert r3.leaked_bits != r1.leaked_bits or r3.messages != r1.messages


def test_original_schedule_corrects():
    alice, bob = _pair(50_000, 0.03, SEED + 12)
    r = reconcile(alice, bob, 0.03, seed=2, schedule="original")
    np.testing.assert_array_equal(r.corrected, alice)
    assert r.block_sizes[:3] == (25, 50, 100)


def test_block_sizes():
    assert block_sizes(0.01, 10**5, 5) == [128, 1024, 4096, 50_000, 50_000]
    assert block_sizes(0.05, 10**6, 3) == [16, 256, 4096]
    assert block_sizes(0.02, 10**5, 4, "original") == [37, 74, 148, 296]
    assert block_sizes(0.02, 100, 3) == [64, 100, 100]      # capped at n
    with pytest.raises(ValueError):
        block_sizes(0.6, 100)
    with pytest.raises(ValueError):
        block_sizes(0.02, 100, schedule="nope")
    with pytest.raises(ValueError):
        block_sizes(0.02, 100, passes=0)


def test_efficiency_definition():
    alice, bob = _pair(40_000, 0.02, SEED + 13)
    r = reconcile(alice, bob, 0.02, seed=4)
    q = r.initial_errors / r.n
    h = -q * math.log2(q) - (1 - q) * math.log2(1 - q)
    assert r.qber == pytest.approx(q)
    assert r.efficiency == pytest.approx(r.leaked_bits / (r.n * h))


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        reconcile(np.zeros(10, np.uint8), np.zeros(11, np.uint8), 0.02, seed=0)
    with pytest.raises(ValueError):
        reconcile(np.zeros(10, np.uint8), np.full(10, 2, np.uint8), 0.02, seed=0)
    with pytest.raises(ValueError):
        reconcile(np.zeros(10, np.uint8), np.zeros(10, np.uint8), 0.02, seed=0,
                  oracle=AliceParityOracle(np.zeros(12, np.uint8)))


def test_oracle_rejects_bad_ranges():
    oracle = AliceParityOracle(np.ones(8, np.uint8))
    sid = oracle.add_shuffle(np.arange(8))
    np.testing.assert_array_equal(oracle.parities(sid, np.array([0, 2]), np.array([3, 8])),
                                  [1, 0])
    assert oracle.leaked_bits == 2 and oracle.messages == 1
    for lo, hi in [([0], [9]), ([3], [3]), ([-1], [2])]:
        with pytest.raises(ValueError):
            oracle.parities(sid, np.array(lo), np.array(hi))
    with pytest.raises(ValueError):
        oracle.add_shuffle(np.arange(7))
