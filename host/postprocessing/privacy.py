"""Privacy amplification: Toeplitz hashing in O(n log n) with the FFT.

The Toeplitz hash of DESIGN.md (``y[i] = XOR_j s[i - j + n - 1] & x[j]``, reference
:func:`mozi.sim.model.toeplitz_hash`) is, over the integers, a slice of the linear convolution
of ``x`` with ``s``: ``y[i] = (x * s)[i + n - 1] mod 2``. The wanted outputs ``i + n - 1`` for
``0 <= i < m`` never wrap around in a *circular* convolution of length ``N >= n + m - 1``
(their terms use ``s[i .. i + n - 1]`` only), so one real FFT of length ``N`` per operand and
one inverse FFT give the whole hash.

Precision. The convolution terms are integers in ``[0, min(n, ·)]``; float64 FFT convolution
has an absolute error bounded by about ``c · eps · log2(N) · ||x||_2 · ||s||_2 <= c · eps ·
log2(N) · N`` (``eps = 2**-53``, ``c`` a small constant). Every FFT here has ``N <=``
:data:`MAX_FFT` ``= 2**22``, so the error stays below ``1e-7`` — far below the ``0.5`` that
rounding tolerates. Larger hashes are split by linearity over GF(2): the input into chunks
whose partial hashes are XOR-ed, the output into independent ranges. Each result is also
checked at run time (every convolution value must lie within ``0.25`` of an integer), so a
precision failure raises instead of returning a wrong key.
"""

from __future__ import annotations

import ctypes
import secrets

import numpy as np
import scipy.fft
from mozi.sim.model import as_bits

__all__ = ["MAX_FFT", "privacy_amplify", "random_seed_bits", "toeplitz_hash_fft"]

#: Largest FFT length used by :func:`toeplitz_hash_fft` (keeps float64 rounding exact).
MAX_FFT = 1 << 22

#: Below this many multiply-accumulates the direct packed method is faster than an FFT.
_DIRECT_LIMIT = 1 << 16

#: Above this ``n + m - 1`` (with ``n > m``) the hash is summed from blocks of the input:
#: transforms of a few 10^5 points stay in the CPU's caches, one of ~10^6 does not.
_BLOCKED_FROM = 1 << 18
#: Transforms longer than this spill out of the caches: about twice the time per point
#: (pocketfft, 2 MB L2, at 437,400 points 6.6 ns, at 1,105,920 points 14 ns).
_CACHE_FFT = 1 << 19



def random_seed_bits(length: int) -> np.ndarray:
    """Draw ``length`` uniformly random bits from the operating system's CSPRNG.

    Parameters
    ----------
    length : int
        Number of bits, ``>= 0``.

    Returns
    -------
    bits : uint8 array of 0/1, shape (length,)
    """
    if length < 0:
        raise ValueError(f"length must be non-negative, not {length!r}")
    raw = np.frombuffer(secrets.token_bytes((length + 7) // 8), np.uint8)
    return np.unpackbits(raw)[:length].copy()


def _direct(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """Small hashes: parity of ``s[i : i + n]`` AND reversed ``x`` with packed words."""
    n = x.size
    # window matrix of s, shape (m, n), without copying: row i is s[i : i + n]
    win = np.lib.stride_tricks.sliding_window_view(s, n)[:m]
    packed = np.packbits(win, axis=1)
    xp = np.packbits(x[::-1])
    return (np.bitwise_count(packed & xp).sum(axis=1) & 1).astype(np.uint8)


def _fft_block(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """One circular convolution of length ``N >= n + m - 1`` (caller keeps N <= MAX_FFT)."""
    n = x.size
    size = scipy.fft.next_fast_len(n + m - 1, real=True)
    fx = scipy.fft.rfft(x.astype(np.float64), size)
    fs = scipy.fft.rfft(s.astype(np.float64), size)
    conv = scipy.fft.irfft(fx * fs, size)[n - 1:n - 1 + m]
    rounded = np.rint(conv)
    if m and float(np.max(np.abs(conv - rounded))) > 0.25:
        raise ArithmeticError("FFT rounding error too large for an exact Toeplitz hash")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


def _smooth_len(n: int) -> int:
    """Smallest ``N >= n`` of the form ``2^a 3^b 5^c`` with ``b <= 3`` and ``c <= 1``.

    pocketfft's radix-3 and radix-5 passes cost more per point than its radix-4 ones: at a few
    10^5 points such lengths run at 4.4–5.1 ns per point against up to 6.1 for other 5-smooth
    lengths (437,400 = 2^3 3^7 5^2: 6.1; 442,368 = 2^14 3^3: 5.1).
    """
    best = None
    for c in (1, 5):
        for b in (1, 3, 9, 27):
            base = b * c
            size = base << max(0, (-(-n // base) - 1).bit_length())
            if best is None or size < best:
                best = size
    return best


def _block_plan(n: int, m: int, max_fft: int) -> tuple[int, int] | None:
    """Number of input blocks and transform length for :func:`_fft_blocked`, or None when
    one transform of the whole input is cheaper.

    ``c`` blocks of ``ceil(n / c)`` bits cost ``2c + 1`` transforms of ``N_c =
    _smooth_len(ceil(n / c) + m - 1)`` points, at twice the price per point when ``N_c``
    leaves the caches (:data:`_CACHE_FFT`).
    """
    if max_fft - m + 1 < 1:
        return None
    fewest = -(-n // (max_fft - m + 1))          # blocks that fit max_fft
    cached = -(-n // max(1, _CACHE_FFT - m + 1))  # blocks that fit the caches
    best = None
    for count in range(fewest, max(fewest, min(n // m, cached + 16)) + 1):
        size = _smooth_len(-(-n // count) + m - 1)
        if size > max_fft:
            continue
        cost = (2 * count + 1) * size * (2 if size > _CACHE_FFT else 1)
        if best is None or cost < best[0]:
            best = (cost, count, size)
    if best is None or best[1] == 1:
        return None
    return best[1], best[2]


def _keep_large_blocks_in_heap() -> None:
    """Ask glibc to serve allocations up to 32 MB from the heap instead of fresh ``mmap``.

    pocketfft allocates a scratch buffer per transform; from ``mmap`` (glibc's default above
    128 kB until a freed block raises the limit) each one costs its page faults again, 40 %
    of the hash at (10^6, 10^5). Process-wide but harmless: freed memory is reused, and the
    heap is trimmed as usual above 64 MB of free space. No-op without glibc.
    """
    global _heap_tuned
    if _heap_tuned:
        return
    _heap_tuned = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 64 << 20)


_heap_tuned = False


def _fft_blocked(x: np.ndarray, s: np.ndarray, m: int, count: int, size: int) -> np.ndarray:
    """``y = T x`` as the sum over ``count`` input blocks of length ``L = ceil(n / count)``,
    each a circular convolution of ``size >= L + m - 1`` points, summed as spectra and
    inverted once.

    ``x`` is padded at the front and ``s`` at the end with ``p = count L - n`` zeros so that
    every block has length ``L`` (the padded ``T`` has the same entries where ``x`` is not
    padding): block ``c`` is padded ``x[cL : (c + 1) L]`` and sees the padded seed's window
    starting at ``n + p - (c + 1) L``, of ``L + m - 1`` bits. Each transform reads a buffer
    already zero-padded to ``size`` (pocketfft pads a shorter input on the fly at up to
    twice the cost) and writes into a preallocated one.
    """
    n = x.size
    blk = -(-n // count)
    pad = count * blk - n
    win = blk + m - 1
    half = size // 2 + 1
    bx, bs, conv = np.empty(size), np.empty(size), np.empty(size)
    fx, fs, total = (np.empty(half, np.complex128) for _ in range(3))
    total[:] = 0
    for c in range(count):
        lo = c * blk - pad                  # x of block c, in unpadded indices
        bx[:max(0, -lo)] = 0
        bx[max(0, -lo):blk] = x[max(0, lo):lo + blk]
        bx[blk:] = 0
        lo = n + pad - (c + 1) * blk        # its seed window
        hi = min(s.size, lo + win)
        bs[:hi - lo] = s[lo:hi]
        bs[hi - lo:] = 0
        np.fft.rfft(bx, out=fx)
        np.fft.rfft(bs, out=fs)
        fx *= fs
        total += fx
    np.fft.irfft(total, size, out=conv)
    conv = conv[blk - 1:blk - 1 + m]
    rounded = np.rint(conv)
    if float(np.max(np.abs(conv - rounded))) > 0.25:
        raise ArithmeticError("FFT rounding error too large for an exact Toeplitz hash")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


def _hash(x: np.ndarray, s: np.ndarray, m: int, max_fft: int) -> np.ndarray:
    n = x.size
    if n * m <= _DIRECT_LIMIT:
        return _direct(x, s, m)
    _keep_large_blocks_in_heap()
    if n > m and n + m - 1 > _BLOCKED_FROM:
        plan = _block_plan(n, m, max_fft)
        if plan is not None:
            return _fft_blocked(x, s, m, *plan)
    if n + m - 1 <= max_fft:
        return _fft_block(x, s, m)
    # Split the longer dimension. Output rows [i0, i1) need seed s[i0 : i1 + n - 1].
    if m >= n:
        half = max_fft // 2
        out = np.empty(m, np.uint8)
        for i0 in range(0, m, half):
            i1 = min(m, i0 + half)
            out[i0:i1] = _hash(x, s[i0:i1 + n - 1], i1 - i0, max_fft)
        return out
    # Input chunk x[j0 : j1] (length L) sees seed s[n - j1 : n - j1 + L + m - 1].
    chunk = max(1, max_fft - m + 1) if m < max_fft // 2 else max_fft // 2
    out = np.zeros(m, np.uint8)
    for j0 in range(0, n, chunk):
        j1 = min(n, j0 + chunk)
        out ^= _hash(x[j0:j1], s[n - j1:n - j1 + (j1 - j0) + m - 1], m, max_fft)
    return out


def toeplitz_hash_fft(x, s, m: int, *, max_fft: int = MAX_FFT) -> np.ndarray:
    """Toeplitz hash ``y = T x`` over GF(2) in O((n + m) log(n + m)).

    Bit-exact with :func:`mozi.sim.model.toeplitz_hash` for every size.

    Parameters
    ----------
    x : uint8 bit array, shape (n,)
        Input, ``n >= 1``.
    s : uint8 bit array, shape (n + m - 1,)
        Seed; ``T[i, j] = s[i - j + n - 1]``.
    m : int
        Output length, ``m >= 1``.
    max_fft : int, optional
        Largest FFT length; bigger hashes are computed in chunks (lowering it is only
        useful for testing the chunked path).

    Returns
    -------
    y : uint8 bit array, shape (m,)

    Raises
    ------
    ValueError
        Non-bit input, ``n < 1``, ``m < 1`` or a seed of the wrong length.
    """
    x = as_bits(x, "x")
    s = as_bits(s, "s")
    m = int(m)
    n = x.size
    if m < 1 or n < 1:
        raise ValueError("n and m must be positive")
    if s.size != n + m - 1:
        raise ValueError(f"seed must have n + m - 1 = {n + m - 1} bits, not {s.size}")
    if max_fft < 4:
        raise ValueError(f"max_fft must be at least 4, not {max_fft!r}")
    return _hash(x, s, m, int(max_fft))


def privacy_amplify(
    key_bits, final_length: int, *, seed_bits=None
) -> tuple[np.ndarray, np.ndarray]:
    """Compress a reconciled key to ``final_length`` secret bits with a random Toeplitz hash.

    Parameters
    ----------
    key_bits : uint8 bit array, shape (n,)
        The reconciled, verified key (identical on both sides).
    final_length : int
        Secret key length ``m`` from the finite-key analysis, ``1 <= m <= n``.
    seed_bits : uint8 bit array, shape (n + m - 1,), optional
        The Toeplitz seed. The party that picks it (Alice) leaves it out: it is then drawn from
        the OS CSPRNG (:mod:`secrets`) and returned, to be sent to the other party over the
        authenticated channel, who passes it here.

    Returns
    -------
    final_key : uint8 bit array, shape (m,)
    seed_bits : uint8 bit array, shape (n + m - 1,)
        The seed used (public; it need not stay secret, only be fresh and uniform).

    Raises
    ------
    ValueError
        ``final_length`` outside ``[1, n]`` or a seed of the wrong length.
    """
    key = as_bits(key_bits, "key_bits")
    n = key.size
    m = int(final_length)
    if not 1 <= m <= n:
        raise ValueError(f"final_length must lie in [1, {n}], not {final_length!r}")
    if seed_bits is None:
        seed = random_seed_bits(n + m - 1)
    else:
        seed = as_bits(seed_bits, "seed_bits")
    return toeplitz_hash_fft(key, seed, m), seed
