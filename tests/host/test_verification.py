"""Error verification with a universal Toeplitz tag."""

import numpy as np
import pytest
from mozi.host.postprocessing.cascade import reconcile
from mozi.host.postprocessing.verification import (
    verification_tag,
    verification_tag_bits,
    verify,
)
from mozi.sim.model import toeplitz_hash

SEED = 777


def test_tag_bits():
    assert verification_tag_bits(1e-15) == 50
    assert verification_tag_bits(0.5) == 1
    assert verification_tag_bits(2.0**-32) == 32
    assert verification_tag_bits(1e-10) == 34
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError):
            verification_tag_bits(bad)


def test_equal_keys_pass():
    rng = np.random.default_rng(SEED)
    key = rng.integers(0, 2, 10_000, dtype=np.uint8)
    r = verify(key, key.copy(), 1e-15)
    assert r.ok and r.tag_bits == 50 and r.seed_bits.size == 10_000 + 49


def test_one_bit_difference_fails():
    rng = np.random.default_rng(SEED + 1)
    key = rng.integers(0, 2, 10_000, dtype=np.uint8)
    for pos in (0, 4321, 9_999):
        bad = key.copy()
        bad[pos] ^= 1
        assert not verify(key, bad, 1e-15).ok       # false pass probability 2^-50


def test_tag_matches_golden_toeplitz():
    rng = np.random.default_rng(SEED + 2)
    key = rng.integers(0, 2, 500, dtype=np.uint8)
    seed = rng.integers(0, 2, 500 + 34 - 1, dtype=np.uint8)
    np.testing.assert_array_equal(verification_tag(key, seed, 34), toeplitz_hash(key, seed, 34))


def test_collision_rate_matches_two_to_minus_t():
    """With a 4-bit tag, different keys collide with probability 1/16 over the seeds."""
    rng = np.random.default_rng(SEED + 3)
    key = rng.integers(0, 2, 64, dtype=np.uint8)
    other = key.copy()
    other[[3, 40]] ^= 1
    trials = 4000
    passes = sum(verify(key, other, 1 / 16).ok for _ in range(trials))   # fresh CSPRNG seeds
    # binomial(4000, 1/16): mean 250, sd 15.3 -> 6 sd window
    assert 158 < passes < 342


def test_given_seed_is_used_and_deterministic():
    rng = np.random.default_rng(SEED + 4)
    key = rng.integers(0, 2, 1000, dtype=np.uint8)
    bad = key.copy()
    bad[10] ^= 1
    seed = rng.integers(0, 2, 1000 + 50 - 1, dtype=np.uint8)
    r1 = verify(key, bad, 1e-15, seed_bits=seed)
    r2 = verify(key, bad, 1e-15, seed_bits=seed)
    assert r1.ok == r2.ok is False
    np.testing.assert_array_equal(r1.seed_bits, seed)


def test_after_cascade():
    rng = np.random.default_rng(SEED + 5)
    alice = rng.integers(0, 2, 20_000, dtype=np.uint8)
    bob = alice ^ (rng.random(20_000) < 0.03).astype(np.uint8)
    fixed = reconcile(alice, bob, 0.03, seed=1).corrected
    assert verify(alice, fixed, 1e-15).ok
    assert not verify(alice, bob, 1e-15).ok


def test_empty_and_bad_inputs():
    r = verify(np.zeros(0, np.uint8), np.zeros(0, np.uint8), 1e-15)
    assert r.ok and r.tag_bits == 0
    with pytest.raises(ValueError):
        verify(np.zeros(5, np.uint8), np.zeros(6, np.uint8), 1e-15)
    with pytest.raises(ValueError):
        verify(np.zeros(5, np.uint8), np.zeros(5, np.uint8), 1e-15,
               seed_bits=np.zeros(5, np.uint8))
    with pytest.raises(ValueError):
        verify(np.full(5, 3, np.uint8), np.zeros(5, np.uint8), 1e-15)
