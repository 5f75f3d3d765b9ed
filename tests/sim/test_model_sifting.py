"""Golden models of Bob's basis decoding and Alice's sifting: hand-worked cases and properties."""

import numpy as np
import pytest
from mozi.sim.model import (
    BASIS_X,
    BASIS_Z,
    INTENSITY_DECOY,
    INTENSITY_SIGNAL,
    INTENSITY_VACUUM,
    alice_record,
    decode_basis,
    sift_alice,
    unpack_alice_record,
)

H, V, D, A = 1, 2, 4, 8


def ref_decode_one(mask: int, word: int) -> tuple[bool, int, int, bool]:
    """decode_basis for one event, written out as the prose rule (the independent check)."""
    mask &= 0xF
    r_bit, r_basis = word & 1, (word >> 1) & 1
    if mask == 0:
        return False, 0, 0, False
    z, x = mask & (H | V), mask & (D | A)
    basis = r_basis if (z and x) else (BASIS_X if x else BASIS_Z)
    pair = x >> 2 if basis == BASIS_X else z
    bit = r_bit if pair == 3 else (1 if pair == 2 else 0)
    return True, basis, bit, bin(mask).count("1") > 1


@pytest.mark.parametrize("mask, word, expected", [
    # single clicks: the random word is ignored
    (H, 0b11, (True, BASIS_Z, 0, False)),
    (V, 0b00, (True, BASIS_Z, 1, False)),
    (D, 0b01, (True, BASIS_X, 0, False)),
    (A, 0b10, (True, BASIS_X, 1, False)),
    # both detectors of one basis: that basis, random value
    (H | V, 0b00, (True, BASIS_Z, 0, True)),
    (H | V, 0b11, (True, BASIS_Z, 1, True)),
    (D | A, 0b01, (True, BASIS_X, 1, True)),
    (D | A, 0b10, (True, BASIS_X, 0, True)),
    # cross-basis: random basis, then the click of that basis
    (H | D, 0b00, (True, BASIS_Z, 0, True)),
    (H | D, 0b10, (True, BASIS_X, 0, True)),
    (V | A, 0b01, (True, BASIS_Z, 1, True)),
    (H | A, 0b00, (True, BASIS_Z, 0, True)),
    (H | A, 0b10, (True, BASIS_X, 1, True)),
    (V | D, 0b10, (True, BASIS_X, 0, True)),
    (H | V | D, 0b10, (True, BASIS_X, 0, True)),
    (H | V | D, 0b01, (True, BASIS_Z, 1, True)),
    # all four: random basis and value
    (15, 0b00, (True, BASIS_Z, 0, True)),
    (15, 0b11, (True, BASIS_X, 1, True)),
    (15, 0b10, (True, BASIS_X, 0, True)),
    # no click (bits above the four channels are ignored)
    (0, 0b11, (False, 0, 0, False)),
    (0x10, 0b11, (False, 0, 0, False)),
])
def test_decode_basis_hand_cases(mask, word, expected):
    valid, basis, bit, multi = decode_basis(np.array([mask]), np.array([word]))
    assert (bool(valid[0]), int(basis[0]), int(bit[0]), bool(multi[0])) == expected


def test_decode_basis_full_table_matches_rule():
    masks = np.repeat(np.arange(16, dtype=np.uint8), 4)
    words = np.tile(np.arange(4, dtype=np.uint8), 16)
    valid, basis, bit, multi = decode_basis(masks, words)
    for k in range(masks.size):
        assert (bool(valid[k]), int(basis[k]), int(bit[k]), bool(multi[k])) == \
            ref_decode_one(int(masks[k]), int(words[k]))


def test_decode_basis_properties():
    rng = np.random.default_rng(7)
    masks = rng.integers(0, 256, 20000).astype(np.uint8)
    words = rng.integers(0, 256, 20000).astype(np.uint8)  # only the low 2 bits count
    valid, basis, bit, multi = decode_basis(masks, words)
    m = masks & 0xF
    np.testing.assert_array_equal(valid, m != 0)
    np.testing.assert_array_equal(multi, np.bitwise_count(m) > 1)
    # the decoded (basis, bit) is always a detector that actually clicked
    detector = 1 << (2 * basis.astype(np.int64) + bit)
    assert np.all((m[valid] & detector[valid]) != 0)
    # single clicks never depend on the random word
    single = np.bitwise_count(m) == 1
    v2, b2, t2, _ = decode_basis(masks, words ^ 3)
    np.testing.assert_array_equal(b2[single], basis[single])
    np.testing.assert_array_equal(t2[single], bit[single])
    # within-basis double clicks draw the value from bit 0, cross-basis the basis from bit 1
    zz = m == (H | V)
    np.testing.assert_array_equal(bit[zz], words[zz] & 1)
    cross = ((m & 3) != 0) & ((m & 12) != 0)
    np.testing.assert_array_equal(basis[cross], (words[cross] >> 1) & 1)
    assert valid.dtype == bool and basis.dtype == np.uint8 and bit.dtype == np.uint8
    np.testing.assert_array_equal(v2, valid)


def test_decode_basis_shape_mismatch():
    with pytest.raises(ValueError):
        decode_basis(np.array([1, 2]), np.array([0]))


def test_alice_record_packing():
    assert int(alice_record(1, 0, INTENSITY_VACUUM)) == 0b1010
    assert int(alice_record(0, 1, INTENSITY_DECOY)) == 0b0101
    assert int(alice_record(1, 1, INTENSITY_SIGNAL)) == 0b0011
    basis, bit, intensity = np.meshgrid([0, 1], [0, 1], [0, 1, 2, 3], indexing="ij")
    rec = alice_record(basis.ravel(), bit.ravel(), intensity.ravel())
    np.testing.assert_array_equal(np.sort(rec), np.arange(16))  # a bijection onto 4 bits
    b, t, i = unpack_alice_record(rec)
    np.testing.assert_array_equal(b, basis.ravel())
    np.testing.assert_array_equal(t, bit.ravel())
    np.testing.assert_array_equal(i, intensity.ravel())
    # out-of-range inputs are masked to their field width
    assert int(alice_record(3, 2, 7)) == 0b1110


def test_sift_alice_hand_case():
    # slots 10..15
    rec = alice_record([0, 1, 1, 0, 0, 1], [1, 0, 1, 1, 0, 0], [0, 1, 2, 0, 1, 2])
    match, bit, intensity = sift_alice(rec, [10, 12, 15], [0, 0, 1], first_slot=10)
    np.testing.assert_array_equal(match, [True, False, True])
    np.testing.assert_array_equal(bit, [1, 1, 0])
    np.testing.assert_array_equal(intensity, [0, 2, 2])
    # consecutive slots, both ends of the records
    match, bit, intensity = sift_alice(rec, [10, 11, 12, 13, 14, 15], [1] * 6, first_slot=10)
    np.testing.assert_array_equal(match, [False, True, True, False, False, True])
    # no report: empty answers
    match, bit, intensity = sift_alice(rec, np.array([], np.int64), np.array([], np.uint8),
                                       first_slot=10)
    assert match.size == bit.size == intensity.size == 0


@pytest.mark.parametrize("slots, message", [
    ([11, 11], "strictly increasing"),
    ([13, 12], "strictly increasing"),
    ([9, 12], "outside"),
    ([12, 16], "outside"),
])
def test_sift_alice_protocol_errors(slots, message):
    rec = np.zeros(6, np.uint8)
    with pytest.raises(ValueError, match=message):
        sift_alice(rec, slots, [0] * len(slots), first_slot=10)


def test_sift_alice_shape_mismatch():
    with pytest.raises(ValueError):
        sift_alice(np.zeros(4, np.uint8), [0, 1], [0])


def test_sift_alice_matches_direct_lookup():
    rng = np.random.default_rng(11)
    n, first = 50000, 123456789
    basis = rng.integers(0, 2, n)
    bit = rng.integers(0, 2, n)
    intensity = rng.choice([0, 1, 2], n)
    rec = alice_record(basis, bit, intensity)
    slots = np.sort(rng.choice(n, 2000, replace=False)) + first
    bob = rng.integers(0, 2, slots.size)
    match, sbit, sint = sift_alice(rec, slots, bob, first_slot=first)
    for k, s in enumerate(slots[:300]):
        j = int(s) - first
        assert match[k] == (basis[j] == bob[k]) and sbit[k] == bit[j] \
            and sint[k] == intensity[j]
    np.testing.assert_array_equal(match, basis[slots - first] == bob)
    np.testing.assert_array_equal(sbit, bit[slots - first])
    np.testing.assert_array_equal(sint, intensity[slots - first])
    # about half of the reports match for independent uniform bases
    assert 0.45 < match.mean() < 0.55
