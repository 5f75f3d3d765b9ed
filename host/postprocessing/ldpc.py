"""Rate-adaptive, blind LDPC syndrome reconciliation (one to three round trips).

The key is cut into frames of at most :data:`MAX_FRAME` bits. For a frame of ``n`` bits and an
estimated QBER ``q`` both ends build the same code: an irregular LDPC parity-check matrix
``H`` with ``m = ceil(f_start · n · h(q))`` rows (the rate is chosen from the QBER by the
number of checks, so no shortening or puncturing is needed: every column is a key bit and the
frame leaks exactly its ``m`` syndrome bits). Alice sends the syndromes ``H x`` of all frames
in one message. Bob decodes each with layered normalised min-sum belief propagation on his bits
(compiled with numba) and checks ``H x̂ = s``. A frame that fails is *blind*-retried: Bob names
the ``r`` bits his decoder is least sure of, Alice reveals them (``r`` more leaked bits), and he
decodes again with those bits fixed — at most :data:`MAX_ROUNDS` rounds. A frame still failing
makes the reconciliation fail (the session then corrects the key with Cascade; discarding frames
by their decoding outcome would select the key by its errors). A wrong codeword that satisfies
the syndrome is caught by the verification hash like any error correction's residual error.

Leak, exactly: ``Σ_frames m + Σ revealed bits`` (a failed frame's bits count too).

Codes. Variable-node degrees 2, 3 and 6 with edge fractions λ2 = 0.1, λ3 = 0.5, λ6 = 0.4 (the
best of a small measured sweep at rates 0.7–0.9; λ2 stays under the BSC stability bound at the
high check degrees of these rates, which the classic rate-1/2 distributions violate), check
degrees as equal as ``E / m`` allows, edges placed by a seeded random permutation (seed fixed by
``(n, m)``, so the codes are public and cached) with repeated edges dropped. :func:`make_code`
is deterministic across machines (numpy's PCG64). These codes are not density-evolution
optimised nor PEG-built: they leave f at 1.2–1.4 where optimised codes reach 1.1 (``make
bench`` reconciliation); density evolution of this decoder puts the distribution's own
threshold at f* = 1.2–1.45 for rates 0.7–0.92 (docs/postprocessing.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct

import numba
import numpy as np
from mozi.host.postprocessing.finite_key import binary_entropy
from mozi.sim.model import as_bits

__all__ = ["AliceLdpc", "BobLdpc", "Frames", "LdpcCode", "LdpcFailure", "LdpcResult",
           "MAX_FRAME", "MAX_ROUNDS", "checks_for", "decode", "frame_sizes", "make_code",
           "reconcile_ldpc", "reveal_count", "syndrome"]

#: Largest frame (code length) in bits.
MAX_FRAME = 100_000
#: Syndrome round plus blind retries.
MAX_ROUNDS = 3
#: Leak of the first round as a multiple of ``n h(q)``: 1.25 at QBER <= 1 %, 1.15 from 3 %,
#: linear between (these codes need more margin at high rates: ``make bench`` reconciliation).
F_START_LOW, F_START_HIGH = 1.25, 1.15
#: Bits revealed per retry as a fraction of ``n h(q)``.
REVEAL_STEP = 0.08
#: Belief-propagation iterations per decoding attempt.
MAX_ITERATIONS = 60
#: Normalisation of the min-sum check update.
_ALPHA = np.float32(0.78)

_DEGREES = np.array([2, 3, 6])
_EDGE_FRACTIONS = np.array([0.1, 0.5, 0.4])
_NODE_FRACTIONS = (_EDGE_FRACTIONS / _DEGREES) / (_EDGE_FRACTIONS / _DEGREES).sum()


def frame_sizes(n: int) -> list[int]:
    """Cut ``n`` key bits into ``ceil(n / MAX_FRAME)`` frames of (nearly) equal length."""
    if n < 1:
        raise ValueError(f"the key must have at least one bit, not {n}")
    count = -(-n // MAX_FRAME)
    base, extra = divmod(n, count)
    return [base + 1] * extra + [base] * (count - extra)


def checks_for(n: int, qber: float) -> int:
    """Syndrome bits of a frame of ``n`` bits at QBER ``qber`` (first round)."""
    f = F_START_HIGH + (F_START_LOW - F_START_HIGH) * min(1.0, max(0.0, (0.03 - qber) / 0.02))
    m = math.ceil(f * n * binary_entropy(qber))
    return int(min(n, max(m, 16)))


def reveal_count(n: int, qber: float) -> int:
    """Bits revealed per blind retry of a frame of ``n`` bits."""
    return int(min(n, max(8, math.ceil(REVEAL_STEP * n * binary_entropy(qber)))))


@dataclasses.dataclass(frozen=True)
class LdpcCode:
    """Sparse parity-check matrix, check-major (row ``c`` has columns
    ``cols[row_ptr[c]:row_ptr[c + 1]]``)."""

    n: int
    m: int
    row_ptr: np.ndarray
    cols: np.ndarray

    @property
    def edges(self) -> int:
        return int(self.cols.size)


@functools.lru_cache(maxsize=16)
def make_code(n: int, m: int) -> LdpcCode:
    """The code of length ``n`` with ``m`` checks (deterministic, see the module docstring)."""
    if not 1 <= m <= n:
        raise ValueError(f"need 1 <= m <= n, not n={n}, m={m}")
    rng = np.random.default_rng([0x4D6F7A69, n, m])
    degrees = np.minimum(_DEGREES, m)
    counts = np.floor(_NODE_FRACTIONS * n).astype(np.int64)
    counts[min(1, counts.size - 1)] += n - counts.sum()
    var_degree = rng.permutation(np.repeat(degrees, counts))
    sockets = rng.permutation(np.repeat(np.arange(n, dtype=np.int64), var_degree))
    e = sockets.size
    # check c takes sockets [bounds[c], bounds[c + 1]) of the permutation
    bounds = (np.arange(m + 1, dtype=np.int64) * e) // m
    check = np.repeat(np.arange(m, dtype=np.int64), np.diff(bounds))
    order = np.lexsort((sockets, check))
    check, var = check[order], sockets[order]
    keep = np.ones(e, bool)
    keep[1:] = (check[1:] != check[:-1]) | (var[1:] != var[:-1])
    check, var = check[keep], var[keep]
    row_ptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(check, minlength=m), out=row_ptr[1:])
    return LdpcCode(n, m, row_ptr, var.astype(np.int32))


@numba.njit(cache=True, nogil=True)
def _syndrome(row_ptr, cols, bits, out):
    for c in range(out.size):
        p = 0
        for e in range(row_ptr[c], row_ptr[c + 1]):
            p ^= bits[cols[e]]
        out[c] = p


def syndrome(code: LdpcCode, bits) -> np.ndarray:
    """``H x`` over GF(2), one uint8 per check."""
    x = as_bits(bits, "bits")
    if x.size != code.n:
        raise ValueError(f"frame has {x.size} bits, the code {code.n}")
    out = np.empty(code.m, np.uint8)
    _syndrome(code.row_ptr, code.cols, x, out)
    return out


@numba.njit(cache=True, nogil=True)
def _min_sum(row_ptr, cols, syn, llr, max_iter, alpha, post):
    """Layered normalised min-sum; ``post`` (in: channel LLRs copied, out: posteriors).
    Returns the iterations used, or -1 if the syndrome was never met."""
    m = syn.size
    r = np.zeros(cols.size, np.float32)
    q = np.empty(cols.size, np.float32)
    for v in range(llr.size):
        post[v] = llr[v]
    for it in range(max_iter):
        for c in range(m):
            a = row_ptr[c]
            b = row_ptr[c + 1]
            min1 = np.float32(1e30)
            min2 = np.float32(1e30)
            arg = -1
            neg = syn[c]
            for e in range(a, b):
                t = post[cols[e]] - r[e]
                q[e] = t
                if t < 0:
                    neg ^= 1
                    t = -t
                if t < min1:
                    min2 = min1
                    min1 = t
                    arg = e
                elif t < min2:
                    min2 = t
            for e in range(a, b):
                t = q[e]
                mag = min2 if e == arg else min1
                s = neg ^ (1 if t < 0 else 0)
                val = alpha * mag
                if s:
                    val = -val
                r[e] = val
                post[cols[e]] = t + val
        ok = True
        for c in range(m):
            p = syn[c]
            for e in range(row_ptr[c], row_ptr[c + 1]):
                if post[cols[e]] < 0:
                    p ^= 1
            if p:
                ok = False
                break
        if ok:
            return it + 1
    return -1


def decode(code: LdpcCode, syn: np.ndarray, bits, qber: float, *, known=None,
           max_iter: int = MAX_ITERATIONS) -> tuple[np.ndarray, np.ndarray, int]:
    """Bob's decoding of one frame.

    Parameters
    ----------
    code : LdpcCode
    syn : uint8 array, shape (m,)
        Alice's syndrome.
    bits : uint8 bit array, shape (n,)
        Bob's frame.
    qber : float
        Crossover probability of the channel model (the estimated QBER).
    known : (positions, values) or None
        Bits Alice revealed: fixed in the decoder.

    Returns
    -------
    corrected : uint8 bit array, shape (n,)
        Hard decisions (equal to ``bits`` where nothing converged).
    reliability : float32 array, shape (n,)
        ``|posterior LLR|`` (small = unsure), for choosing what to ask for.
    iterations : int
        Iterations used, ``-1`` if the syndrome was not met.
    """
    y = as_bits(bits, "bits")
    q = min(max(float(qber), 1e-4), 0.4)
    mag = np.float32(math.log((1 - q) / q))
    llr = np.where(y == 0, mag, -mag).astype(np.float32)
    if known is not None:
        pos, val = known
        llr[pos] = np.where(np.asarray(val) == 0, 1e4, -1e4)
    post = np.empty(code.n, np.float32)
    its = _min_sum(code.row_ptr, code.cols, np.ascontiguousarray(syn, np.uint8), llr,
                   int(max_iter), _ALPHA, post)
    return (post < 0).astype(np.uint8), np.abs(post), int(its)



# -- the protocol -------------------------------------------------------------------------------
#
# Alice → Bob  syndromes: every frame's packed syndrome, in frame order.
# Bob → Alice  request:   u8 status (0 = reveal and go on, 1 = all frames decoded, 2 = failed),
#                         with status 0: u32 count, then per frame u32 index and
#                         reveal_count(frame) u32 positions.
# Alice → Bob  reveal:    the requested bits, packed, in request order.

_CONTINUE, _DECODED, _FAILED = 0, 1, 2


class LdpcFailure(Exception):
    """A frame was not decoded within :data:`MAX_ROUNDS` rounds (or a peer broke the rules)."""


@dataclasses.dataclass(frozen=True)
class Frames:
    """The cut of a key into frames and each frame's code, as both ends compute it."""

    bounds: tuple[int, ...]
    checks: tuple[int, ...]
    reveal: tuple[int, ...]

    @classmethod
    def plan(cls, n: int, qber: float) -> Frames:
        sizes = frame_sizes(n)
        bounds = (0, *np.cumsum(sizes).tolist())
        return cls(tuple(int(b) for b in bounds), tuple(checks_for(f, qber) for f in sizes),
                   tuple(reveal_count(f, qber) for f in sizes))

    def __len__(self) -> int:
        return len(self.checks)

    def frame(self, i: int) -> slice:
        return slice(self.bounds[i], self.bounds[i + 1])

    def code(self, i: int) -> LdpcCode:
        return make_code(self.bounds[i + 1] - self.bounds[i], self.checks[i])


class AliceLdpc:
    """Alice's half: syndromes out, revealed bits on request; counts what she discloses."""

    def __init__(self, key, qber: float):
        self.key = as_bits(key, "key")
        self.frames = Frames.plan(self.key.size, qber)
        self.leaked_bits = 0
        self.rounds = 0
        self._revealed = [set() for _ in range(len(self.frames))]

    def syndromes(self) -> bytes:
        out = []
        for i in range(len(self.frames)):
            out.append(np.packbits(syndrome(self.frames.code(i),
                                            self.key[self.frames.frame(i)])).tobytes())
            self.leaked_bits += self.frames.checks[i]
        self.rounds = 1
        return b"".join(out)

    def answer(self, request: bytes) -> bytes | None:
        """Bob's request → the bits to reveal, or None when he is done.

        Raises :class:`LdpcFailure` when he reports a failure, and ``ValueError`` for a
        request outside the protocol (a round too many, a frame or position out of range,
        a bit asked twice)."""
        if not request:
            raise ValueError("empty LDPC request")
        status = request[0]
        if status == _DECODED and len(request) == 1:
            return None
        if status == _FAILED and len(request) == 1:
            raise LdpcFailure(f"LDPC reconciliation failed: a frame was not decoded in "
                              f"{MAX_ROUNDS} rounds")
        if status != _CONTINUE or len(request) < 5:
            raise ValueError("malformed LDPC request")
        if self.rounds >= MAX_ROUNDS:
            raise ValueError(f"LDPC request beyond round {MAX_ROUNDS}")
        (count,) = struct.unpack_from(">I", request, 1)
        if not 1 <= count <= len(self.frames):
            raise ValueError("LDPC request names no frame or too many")
        at, bits, seen = 5, [], set()
        for _ in range(count):
            (i,) = struct.unpack_from(">I", request, at)
            at += 4
            if i >= len(self.frames) or i in seen:
                raise ValueError("LDPC request names a frame out of range or twice")
            seen.add(i)
            k = self.frames.reveal[i]
            pos = np.frombuffer(request, ">u4", k, at).astype(np.int64)
            at += 4 * k
            size = self.frames.bounds[i + 1] - self.frames.bounds[i]
            new = set(pos.tolist())
            if len(new) != k or pos.max() >= size or new & self._revealed[i]:
                raise ValueError("LDPC request asks for a position out of range or twice")
            self._revealed[i] |= new
            bits.append(self.key[self.frames.frame(i)][pos])
        if at != len(request):
            raise ValueError("LDPC request has trailing bytes")
        self.rounds += 1
        revealed = np.concatenate(bits)
        self.leaked_bits += revealed.size
        return np.packbits(revealed).tobytes()


class BobLdpc:
    """Bob's half: decodes, asks for the least reliable bits of the frames that failed."""

    def __init__(self, key, qber: float):
        self.key = as_bits(key, "key")
        self.qber = float(qber)
        self.frames = Frames.plan(self.key.size, qber)
        self.corrected = self.key.copy()
        self.leaked_bits = 0
        self.rounds = 0
        self.revealed_bits = 0
        f = len(self.frames)
        self._syn: list[np.ndarray] = []
        self._known = [(np.zeros(0, np.int64), np.zeros(0, np.uint8)) for _ in range(f)]
        self._asked: list[tuple[int, np.ndarray]] = []

    def _decode(self, frames) -> bytes:
        self.rounds += 1
        failed, asks = [], []
        for i in frames:
            code, sl = self.frames.code(i), self.frames.frame(i)
            pos, val = self._known[i]
            bits, rel, its = decode(code, self._syn[i], self.key[sl], self.qber,
                                    known=(pos, val) if pos.size else None)
            if its >= 0:
                self.corrected[sl] = bits
                continue
            failed.append(i)
            rel[pos] = np.inf
            k = self.frames.reveal[i]
            asks.append((i, np.sort(np.argpartition(rel, k - 1)[:k]).astype(np.int64)))
        if not failed:
            return bytes([_DECODED])
        if self.rounds >= MAX_ROUNDS:
            return bytes([_FAILED])
        self._asked = asks
        return bytes([_CONTINUE]) + struct.pack(">I", len(asks)) + b"".join(
            struct.pack(">I", i) + pos.astype(">u4").tobytes() for i, pos in asks)

    def first(self, payload: bytes) -> bytes:
        """Alice's syndromes → Bob's request (status byte first)."""
        sizes = [(m + 7) // 8 for m in self.frames.checks]
        if len(payload) != sum(sizes):
            raise ValueError(f"LDPC syndromes of {len(payload)} bytes, expected {sum(sizes)}")
        at = 0
        for m, size in zip(self.frames.checks, sizes, strict=True):
            self._syn.append(np.unpackbits(np.frombuffer(payload, np.uint8, size, at))[:m])
            at += size
            self.leaked_bits += m
        return self._decode(range(len(self.frames)))

    def retry(self, payload: bytes) -> bytes:
        """Alice's revealed bits → the next request."""
        total = sum(pos.size for _, pos in self._asked)
        if len(payload) != (total + 7) // 8:
            raise ValueError("LDPC reveal of the wrong length")
        bits = np.unpackbits(np.frombuffer(payload, np.uint8))[:total]
        at = 0
        for i, pos in self._asked:
            old_pos, old_val = self._known[i]
            self._known[i] = (np.concatenate([old_pos, pos]),
                              np.concatenate([old_val, bits[at:at + pos.size]]))
            at += pos.size
        self.leaked_bits += total
        self.revealed_bits += total
        return self._decode([i for i, _ in self._asked])


@dataclasses.dataclass
class LdpcResult:
    """Outcome of :func:`reconcile_ldpc` (both halves in one process)."""

    corrected: np.ndarray
    leaked_bits: int
    rounds: int
    frames: int
    revealed_bits: int
    decoded: bool


def reconcile_ldpc(alice_key, bob_key, qber: float) -> LdpcResult:
    """Both halves of the protocol in one process, exchanging the real messages."""
    alice, bob = AliceLdpc(alice_key, qber), BobLdpc(bob_key, qber)
    if alice.key.size != bob.key.size:
        raise ValueError("keys of different lengths")
    request = bob.first(alice.syndromes())
    decoded = True
    while True:
        try:
            reveal = alice.answer(request)
        except LdpcFailure:
            decoded = False
            break
        if reveal is None:
            break
        request = bob.retry(reveal)
    assert alice.leaked_bits == bob.leaked_bits
    return LdpcResult(bob.corrected, bob.leaked_bits, bob.rounds, len(bob.frames),
                      bob.revealed_bits, decoded)
