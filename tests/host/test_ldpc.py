"""LDPC reconciliation: codes, decoder, the blind protocol and its message checks."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from mozi.host.postprocessing import ldpc
from mozi.host.postprocessing.finite_key import binary_entropy
from mozi.host.postprocessing.ldpc import (
    AliceLdpc,
    BobLdpc,
    LdpcFailure,
    make_code,
    reconcile_ldpc,
    syndrome,
)

from tests.host.test_cascade import _pair

SEED = 1414


def test_code_is_deterministic_and_sparse():
    c1, c2 = make_code(5000, 700), make_code(5000, 700)
    np.testing.assert_array_equal(c1.cols, c2.cols)
    assert c1.row_ptr[-1] == c1.edges and c1.m == 700
    # every column is a key bit in some check; rows have no repeated column
    assert np.unique(c1.cols).size == 5000
    for c in range(0, 700, 97):
        row = c1.cols[c1.row_ptr[c]:c1.row_ptr[c + 1]]
        assert np.unique(row).size == row.size


def test_syndrome_matches_dense_parity_check():
    code = make_code(600, 120)
    h = np.zeros((120, 600), np.uint8)
    for c in range(120):
        h[c, code.cols[code.row_ptr[c]:code.row_ptr[c + 1]]] = 1
    x = np.random.default_rng(SEED).integers(0, 2, 600, dtype=np.uint8)
    np.testing.assert_array_equal(syndrome(code, x), (h.astype(int) @ x) % 2)


@pytest.mark.parametrize("n,q", [(10_000, 0.05), (20_000, 0.03), (120_000, 0.02)])
def test_reconciliation_corrects_and_counts_every_disclosed_bit(n, q):
    a, b = _pair(n, q, SEED + n)
    r = reconcile_ldpc(a, b, q)
    print(f"seed {SEED + n}: rounds {r.rounds}, f {r.leaked_bits / (n * binary_entropy(q)):.3f}")
    assert r.decoded
    np.testing.assert_array_equal(r.corrected, a)
    plan = ldpc.Frames.plan(n, q)
    assert r.frames == len(plan) == -(-n // ldpc.MAX_FRAME)
    assert r.leaked_bits == sum(plan.checks) + r.revealed_bits
    assert 1 <= r.rounds <= ldpc.MAX_ROUNDS


def test_identical_keys_leak_only_the_syndromes():
    a, _ = _pair(8000, 0.0, SEED)
    r = reconcile_ldpc(a, a, 0.02)
    assert r.decoded and r.rounds == 1 and r.revealed_bits == 0
    assert r.leaked_bits == ldpc.checks_for(8000, 0.02)


def test_too_many_errors_fail_after_three_rounds_and_alice_learns_it():
    a, b = _pair(4000, 0.12, SEED)       # far beyond the rate designed for 2 %
    alice, bob = AliceLdpc(a, 0.02), BobLdpc(b, 0.02)
    request = bob.first(alice.syndromes())
    rounds = 1
    while request[0] == 0:
        request = bob.retry(alice.answer(request))
        rounds += 1
    assert rounds == ldpc.MAX_ROUNDS and request == bytes([2])
    with pytest.raises(LdpcFailure):
        alice.answer(request)


def _failing_request(n=4000):
    a, b = _pair(n, 0.12, SEED)
    alice, bob = AliceLdpc(a, 0.02), BobLdpc(b, 0.02)
    request = bob.first(alice.syndromes())
    assert request[0] == 0
    return alice, request


def test_alice_reveals_each_bit_at_most_once_and_only_in_range():
    alice, request = _failing_request()
    k = alice.frames.reveal[0]
    head = bytes([0]) + struct.pack(">II", 1, 0)
    # the same position twice in one request
    with pytest.raises(ValueError, match="twice"):
        alice.answer(head + struct.pack(">I", 5) * k)
    # out of the frame
    with pytest.raises(ValueError, match="out of range"):
        alice.answer(head + np.arange(3990, 3990 + k, dtype=">u4").tobytes())
    # a frame that does not exist
    with pytest.raises(ValueError, match="frame"):
        alice.answer(bytes([0]) + struct.pack(">II", 1, 7) + request[9:])
    # the genuine request is answered once; asking for the same bits again is refused
    assert alice.answer(request) is not None
    with pytest.raises(ValueError, match="twice"):
        alice.answer(request)


def test_alice_refuses_a_round_beyond_the_limit_and_malformed_requests():
    alice, request = _failing_request()
    for bad in (b"", bytes([9]), bytes([1, 0]), request + b"\0", request[:-1]):
        with pytest.raises((ValueError, struct.error)):
            alice.answer(bad)
    alice.rounds = ldpc.MAX_ROUNDS
    with pytest.raises(ValueError, match="beyond round"):
        alice.answer(request)


def test_bob_rejects_syndromes_and_reveals_of_the_wrong_length():
    a, b = _pair(4000, 0.12, SEED)
    alice, bob = AliceLdpc(a, 0.02), BobLdpc(b, 0.02)
    syn = alice.syndromes()
    with pytest.raises(ValueError, match="syndromes"):
        bob.first(syn[:-1])
    request = bob.first(syn)
    reveal = alice.answer(request)
    with pytest.raises(ValueError, match="reveal"):
        bob.retry(reveal + b"\0")
