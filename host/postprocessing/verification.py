"""Error verification: do Alice and Bob now hold the same key?

After error correction Alice picks a fresh uniformly random Toeplitz seed (OS CSPRNG), hashes
her key to a ``t``-bit tag and sends seed and tag over the authenticated channel; Bob hashes
his corrected key with the same seed and compares. Random Toeplitz matrices form a universal
family — for any non-zero difference ``d`` of the keys, ``T d`` is uniform over ``t``-bit
strings — so two different keys pass with probability exactly ``2**-t``. With
``t = ⌈log2(1/ε_cor)⌉`` the protocol is ``ε_cor``-correct (Lim et al. 2014, step 5).

The ``t`` tag bits are public information about the key: they count as leaked (the finite-key
formula's ``log2(2/ε_cor)`` term accounts for them). A mismatch means error correction
failed: the caller discards the block and reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mozi.host.postprocessing.privacy import random_seed_bits, toeplitz_hash_fft

__all__ = ["VerificationResult", "verification_tag", "verification_tag_bits", "verify"]


def verification_tag_bits(eps_cor: float) -> int:
    """Tag length ``⌈log2(1/ε_cor)⌉`` for a collision probability of at most ``ε_cor``.

    Parameters
    ----------
    eps_cor : float
        Correctness parameter, ``0 < ε_cor < 1``.

    Returns
    -------
    int
    """
    if not 0.0 < eps_cor < 1.0:
        raise ValueError(f"eps_cor must lie in (0, 1), not {eps_cor!r}")
    return math.ceil(math.log2(1.0 / eps_cor))


def verification_tag(key, seed_bits, tag_bits: int) -> np.ndarray:
    """Toeplitz tag of ``key``: ``tag_bits`` bits, seed of ``len(key) + tag_bits − 1`` bits."""
    return toeplitz_hash_fft(key, seed_bits, tag_bits)


@dataclass
class VerificationResult:
    """Outcome of :func:`verify`.

    Attributes
    ----------
    ok : bool
        The tags matched (keys equal except with probability ``2**-tag_bits``).
    tag_bits : int
        Tag length; these bits were disclosed and count as leaked.
    seed_bits : uint8 bit array or None
        The public Toeplitz seed used (None for an empty key).
    """

    ok: bool
    tag_bits: int
    seed_bits: np.ndarray | None = None


def verify(alice_key, bob_key, eps_cor: float, *, seed_bits=None) -> VerificationResult:
    """Compare two keys through a universal-hash tag of ``⌈log2(1/ε_cor)⌉`` bits.

    Parameters
    ----------
    alice_key, bob_key : uint8 bit arrays of the same length ``n``
        Alice's key and Bob's corrected key.
    eps_cor : float
        Correctness parameter.
    seed_bits : uint8 bit array of ``n + t − 1`` bits, optional
        Toeplitz seed; drawn fresh from the OS CSPRNG when left out (the normal case: a seed
        must never be reused with the same key).

    Returns
    -------
    VerificationResult

    Raises
    ------
    ValueError
        Keys of different lengths, non-bit input, a seed of the wrong length.
    """
    a = np.asarray(alice_key)
    b = np.asarray(bob_key)
    if a.ndim != 1 or b.ndim != 1 or a.size != b.size:
        raise ValueError(f"keys must be 1-D and of equal length, not {a.shape} and {b.shape}")
    t = verification_tag_bits(eps_cor)
    if a.size == 0:
        return VerificationResult(ok=True, tag_bits=0, seed_bits=None)
    if seed_bits is None:
        seed_bits = random_seed_bits(a.size + t - 1)
    seed = np.asarray(seed_bits)
    if seed.shape != (a.size + t - 1,):
        raise ValueError(f"seed_bits must have n + t - 1 = {a.size + t - 1} bits")
    ok = bool(np.array_equal(verification_tag(a, seed, t), verification_tag(b, seed, t)))
    return VerificationResult(ok=ok, tag_bits=t, seed_bits=seed)
