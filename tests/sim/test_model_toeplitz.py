"""Golden model :func:`mozi.sim.model.toeplitz_hash`: hand-worked cases and properties.

Convention (DESIGN.md): ``y[i] = XOR_j T[i, j] x[j]`` with ``T[i, j] = s[i - j + n - 1]``.
"""

import numpy as np
import pytest
from mozi.sim.model import toeplitz_hash


def ref_matrix(s: np.ndarray, n: int, m: int) -> np.ndarray:
    """The m × n Toeplitz matrix, built entry by entry from the definition."""
    t = np.empty((m, n), np.uint8)
    for i in range(m):
        for j in range(n):
            t[i, j] = s[i - j + n - 1]
    return t


def bits(text: str) -> np.ndarray:
    return np.array([int(c) for c in text], np.uint8)


def test_hand_worked_3x2():
    # n = 3, m = 2, s = s0 s1 s2 s3 = 1 0 1 1
    # T = [[s2 s1 s0],   = [[1 0 1],
    #      [s3 s2 s1]]      [1 1 0]]
    # x = 1 1 0 → y0 = 1^0 = 1, y1 = 1^1 = 0
    s = bits("1011")
    assert ref_matrix(s, 3, 2).tolist() == [[1, 0, 1], [1, 1, 0]]
    np.testing.assert_array_equal(toeplitz_hash(bits("110"), s, 2), bits("10"))
    # x = 1 0 1 → y0 = 1^1 = 0, y1 = 1^0 = 1
    np.testing.assert_array_equal(toeplitz_hash(bits("101"), s, 2), bits("01"))
    # x = 0 1 1 → y0 = 0^1 = 1, y1 = 1^0 = 1
    np.testing.assert_array_equal(toeplitz_hash(bits("011"), s, 2), bits("11"))


def test_hand_worked_2x3():
    # n = 2, m = 3, s = 0 1 1 0: T = [[s1 s0], [s2 s1], [s3 s2]] = [[1 0], [1 1], [0 1]]
    s = bits("0110")
    np.testing.assert_array_equal(toeplitz_hash(bits("10"), s, 3), bits("110"))
    np.testing.assert_array_equal(toeplitz_hash(bits("01"), s, 3), bits("011"))
    np.testing.assert_array_equal(toeplitz_hash(bits("11"), s, 3), bits("101"))


def test_unit_vectors_select_seed_windows():
    # column j of T is the window s[n-1-j : n-1-j+m]
    rng = np.random.default_rng(1)
    n, m = 37, 11
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    for j in (0, 1, 17, n - 1):
        x = np.zeros(n, np.uint8)
        x[j] = 1
        np.testing.assert_array_equal(toeplitz_hash(x, s, m), s[n - 1 - j:n - 1 - j + m])


@pytest.mark.parametrize("n, m", [(1, 1), (1, 9), (9, 1), (8, 8), (13, 70), (130, 7), (200, 64)])
def test_matches_matrix_product(n, m):
    rng = np.random.default_rng(n * 1000 + m)
    for _ in range(3):
        x = rng.integers(0, 2, n, dtype=np.uint8)
        s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        y = toeplitz_hash(x, s, m)
        assert y.dtype == np.uint8 and y.shape == (m,)
        want = (ref_matrix(s, n, m).astype(np.int64) @ x.astype(np.int64)) % 2
        np.testing.assert_array_equal(y, want.astype(np.uint8))


def test_n_equals_one_is_and_with_seed():
    s = bits("1101")
    np.testing.assert_array_equal(toeplitz_hash(bits("1"), s, 4), s)
    np.testing.assert_array_equal(toeplitz_hash(bits("0"), s, 4), np.zeros(4, np.uint8))


def test_m_equals_one_is_parity_with_reversed_seed():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2, 100, dtype=np.uint8)
    s = rng.integers(0, 2, 100, dtype=np.uint8)
    y = toeplitz_hash(x, s, 1)
    assert y.tolist() == [int(np.sum(x & s[::-1]) % 2)]


def test_linear_in_x():
    rng = np.random.default_rng(3)
    n, m = 257, 65
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    x1 = rng.integers(0, 2, n, dtype=np.uint8)
    x2 = rng.integers(0, 2, n, dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(x1 ^ x2, s, m),
                                  toeplitz_hash(x1, s, m) ^ toeplitz_hash(x2, s, m))
    np.testing.assert_array_equal(toeplitz_hash(np.zeros(n, np.uint8), s, m),
                                  np.zeros(m, np.uint8))


def test_linear_in_seed():
    rng = np.random.default_rng(4)
    n, m = 90, 33
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s1 = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    s2 = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    np.testing.assert_array_equal(toeplitz_hash(x, s1 ^ s2, m),
                                  toeplitz_hash(x, s1, m) ^ toeplitz_hash(x, s2, m))


def test_prefix_of_output_uses_prefix_of_seed():
    # rows 0..m'-1 of T depend on s[0 : n + m' - 1] only
    rng = np.random.default_rng(5)
    n, m = 50, 40
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    y = toeplitz_hash(x, s, m)
    for mp in (1, 8, 39):
        np.testing.assert_array_equal(toeplitz_hash(x, s[:n + mp - 1], mp), y[:mp])


def test_accepts_bool_and_int_inputs():
    s = [1, 0, 1, 1]
    np.testing.assert_array_equal(toeplitz_hash(np.array([True, True, False]), s, 2),
                                  bits("10"))


@pytest.mark.parametrize("x, s, m", [
    ([1, 0], [1, 0], 2),            # seed one bit short
    ([1, 0], [1, 0, 1, 1], 2),      # seed one bit long
    ([1, 0], [1], 0),               # m = 0
    ([], [1, 0], 2),                # n = 0
    ([1, 2], [1, 0, 1], 2),         # not bits
    ([[1, 0]], [1, 0, 1], 2),       # not 1-D
])
def test_rejects_bad_shapes(x, s, m):
    with pytest.raises(ValueError):
        toeplitz_hash(np.array(x), np.array(s), m)
