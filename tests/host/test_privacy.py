"""FFT Toeplitz hashing and privacy amplification against the golden model."""

import numpy as np
import pytest
from mozi.host.postprocessing.privacy import (
    MAX_FFT,
    privacy_amplify,
    random_seed_bits,
    toeplitz_hash_fft,
)
from mozi.sim.model import toeplitz_hash

SEED = 20260311


def _bits(rng, k):
    return rng.integers(0, 2, k, dtype=np.uint8)


@pytest.mark.parametrize("n,m", [(1, 1), (1, 9), (9, 1), (2, 2), (8, 8), (63, 65), (64, 1),
                                 (1, 300), (300, 1), (257, 129), (1000, 999), (4096, 33)])
def test_edge_sizes_bit_exact(n, m):
    rng = np.random.default_rng(SEED + n * 7919 + m)
    x, s = _bits(rng, n), _bits(rng, n + m - 1)
    np.testing.assert_array_equal(toeplitz_hash_fft(x, s, m), toeplitz_hash(x, s, m))


def test_many_random_sizes_bit_exact():
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    for _ in range(60):
        n = int(rng.integers(1, 3000))
        m = int(rng.integers(1, 1500))
        x, s = _bits(rng, n), _bits(rng, n + m - 1)
        np.testing.assert_array_equal(toeplitz_hash_fft(x, s, m), toeplitz_hash(x, s, m),
                                      err_msg=f"n={n} m={m}")


@pytest.mark.parametrize("n,m,max_fft", [(5000, 20, 64), (5000, 40, 64), (3000, 2500, 256),
                                         (40, 5000, 128), (777, 777, 100)])
def test_chunked_path_bit_exact(n, m, max_fft):
    """Forcing tiny FFTs exercises the input and output splitting used above MAX_FFT."""
    rng = np.random.default_rng(SEED + max_fft)
    x, s = _bits(rng, n), _bits(rng, n + m - 1)
    want = toeplitz_hash(x, s, m)
    np.testing.assert_array_equal(toeplitz_hash_fft(x, s, m, max_fft=max_fft), want)


def test_all_ones_worst_case_magnitude():
    """All-ones input and seed make every convolution term as large as possible."""
    n, m = 20000, 3000
    x = np.ones(n, np.uint8)
    s = np.ones(n + m - 1, np.uint8)
    # every output is the parity of n ones
    np.testing.assert_array_equal(toeplitz_hash_fft(x, s, m), np.full(m, n & 1, np.uint8))
    np.testing.assert_array_equal(toeplitz_hash_fft(x[:-1], s[:-1], m),
                                  np.full(m, (n - 1) & 1, np.uint8))


def test_large_n_against_reference_rows():
    """n beyond one MAX_FFT: compare sampled rows with the defining parity directly."""
    rng = np.random.default_rng(SEED + 1)
    n, m = MAX_FFT + 12345, 64
    x, s = _bits(rng, n), _bits(rng, n + m - 1)
    y = toeplitz_hash_fft(x, s, m)
    xr = x[::-1]
    for i in (0, 1, 31, 63):
        assert y[i] == int(np.bitwise_xor.reduce(s[i:i + n] & xr))
    # and the small-m result matches the golden model on a prefix-sized problem
    np.testing.assert_array_equal(toeplitz_hash_fft(x[:4000], s[:4000 + m - 1], m),
                                  toeplitz_hash(x[:4000], s[:4000 + m - 1], m))


def test_linearity():
    rng = np.random.default_rng(SEED + 2)
    n, m = 5000, 700
    x1, x2, s = _bits(rng, n), _bits(rng, n), _bits(rng, n + m - 1)
    np.testing.assert_array_equal(toeplitz_hash_fft(x1 ^ x2, s, m),
                                  toeplitz_hash_fft(x1, s, m) ^ toeplitz_hash_fft(x2, s, m))


@pytest.mark.parametrize("bad", [
    dict(x=np.zeros(0, np.uint8), s=np.zeros(3, np.uint8), m=4),
    dict(x=np.zeros(4, np.uint8), s=np.zeros(3, np.uint8), m=0),
    dict(x=np.zeros(4, np.uint8), s=np.zeros(6, np.uint8), m=4),
    dict(x=np.array([0, 2, 1]), s=np.zeros(5, np.uint8), m=3),
    dict(x=np.zeros((2, 2), np.uint8), s=np.zeros(5, np.uint8), m=3),
])
def test_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        toeplitz_hash_fft(bad["x"], bad["s"], bad["m"])


def test_privacy_amplify_two_parties_agree():
    rng = np.random.default_rng(SEED + 3)
    key = _bits(rng, 3000)
    final_a, seed = privacy_amplify(key, 1000)
    assert seed.dtype == np.uint8 and seed.size == 3000 + 1000 - 1
    final_b, seed_b = privacy_amplify(key.copy(), 1000, seed_bits=seed)
    np.testing.assert_array_equal(final_a, final_b)
    np.testing.assert_array_equal(seed, seed_b)
    np.testing.assert_array_equal(final_a, toeplitz_hash(key, seed, 1000))


def test_privacy_amplify_fresh_seeds():
    key = np.ones(512, np.uint8)
    _, s1 = privacy_amplify(key, 100)
    _, s2 = privacy_amplify(key, 100)
    assert not np.array_equal(s1, s2)   # 2^-611 chance of a false failure


def test_random_seed_bits_is_balanced():
    bits = random_seed_bits(100_003)
    assert bits.size == 100_003 and set(np.unique(bits)) <= {0, 1}
    assert abs(bits.mean() - 0.5) < 0.01   # ~6 sigma
    assert random_seed_bits(0).size == 0


@pytest.mark.parametrize("length", [0, 101, -1])
def test_privacy_amplify_rejects_bad_length(length):
    with pytest.raises(ValueError):
        privacy_amplify(np.zeros(100, np.uint8), length)


def test_privacy_amplify_rejects_wrong_seed():
    with pytest.raises(ValueError):
        privacy_amplify(np.zeros(100, np.uint8), 10, seed_bits=np.zeros(100, np.uint8))


@pytest.mark.parametrize("n,m", [(20_000, 300), (20_001, 1_000), (9_000, 999), (70_000, 17)])
def test_blocked_path_bit_exact(monkeypatch, n, m):
    """The input-blocked FFT (taken for large keys) on small sizes, by lowering its
    thresholds: bit-exact with the model, whatever the padding of the last block."""
    from mozi.host.postprocessing import privacy

    monkeypatch.setattr(privacy, "_BLOCKED_FROM", 1 << 10)
    monkeypatch.setattr(privacy, "_CACHE_FFT", 1 << 11)
    assert privacy._block_plan(n, m, privacy.MAX_FFT) is not None
    rng = np.random.default_rng(SEED + n + m)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash_fft(x, s, m), toeplitz_hash(x, s, m))
