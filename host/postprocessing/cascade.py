"""Cascade error correction with exact accounting of every disclosed parity bit.

Cascade (Brassard & Salvail 1993) as tuned in J. Martinez-Mateo, C. Pacher, M. Peev,
A. Ciurana, V. Martin, "Demystifying the information reconciliation protocol Cascade",
Quantum Inf. Comput. 15, 453 (2015), arXiv:1407.3257.

Two parties
-----------
Alice holds the reference key and only ever *answers parity queries*: the
:class:`AliceParityOracle` is given her bits and nothing else, and every parity it returns is
counted as one disclosed bit. Bob (this module's :func:`reconcile`) never sees Alice's bits; he
learns about them only through the oracle. So ``leaked_bits`` is exact by construction: it is
the number of parities Alice sent, which is what the finite-key analysis must subtract as
``λ_EC``. What is counted and why:

* **top-level block parities** of every pass — one bit per block, except the last block of
  passes after the first, whose parity Bob infers for free: the parity of the whole key is
  invariant under the public shuffles and already known from the first pass;
* **binary-search parities** — one bit per halving step (``⌈log2 k⌉`` per search of a block
  of size ``k``); the parity of the other half follows from the parent's and is not asked;
* **not counted**: the shuffles (public randomness, sent as a seed), which blocks Bob asks
  about, and the QBER estimate (all independent of Alice's key given the error pattern), and
  Bob's own parities, which are never sent.

The verification tag (:mod:`mozi.host.postprocessing.verification`) is disclosed on top of this
and counted there.

Algorithm
---------
Pass ``p`` shuffles the key with a public pseudo-random permutation, cuts it into blocks of
size ``k_p``, and Alice discloses the block parities. Every block whose parity differs holds an
odd number of errors; a binary search (Alice disclosing the parity of the first half at each
step) finds one and Bob flips it. Flipping bit ``i`` toggles the parity mismatch of the block
holding ``i`` in every earlier pass, which may expose another error there: that is the cascade.
Bob always searches the *cheapest* pass (smallest blocks) that has odd blocks, and searches all
odd blocks of that pass at once — blocks of one pass are disjoint, so parallel searches never
duplicate work, and every step of all these searches is one round trip (one message; a message
holds ``(shuffle, ranges)`` groups, one per segment with a pending query). All
bookkeeping is numpy-vectorised across blocks; there is no per-bit Python loop.

Keys longer than :data:`SEGMENT` bits are cut into segments of (nearly) equal length, each a
Cascade of its own (own shuffles from its own generator, own blocks; the block sizes those of
the segment's length). The segments run side by side: every message carries the pending query
of each segment that has one, so the round trips are about those of one segment instead of the
whole key's sequential chain of searches (about half at 10^6 bits), for a slightly higher
leak (smaller blocks in the last passes).

Block sizes follow "Cascade opt. (8)" of Martinez-Mateo et al. (16 passes instead of their 14):
``k1 = 2**ceil(α)``, ``k2 = 2**ceil((α + 12) / 2)``, ``k3 = 4096``, then ``n / 2``, with
``α = log2(1/Q) − 1/2``. The classic schedule (``k1 = ⌈0.73/Q⌉`` then doubling) is available as
``schedule="original"``.
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass

import numba
import numpy as np
from mozi.host.errors import ProtocolAbort
from mozi.sim.model import as_bits

__all__ = [
    "SCHEDULES",
    "AliceParityOracle",
    "CascadeResult",
    "RemoteParityOracle",
    "block_sizes",
    "reconcile",
    "serve_parities",
]

SCHEDULES = ("demystifying", "original")

_MIN_QBER = 1e-5



def _h(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def block_sizes(qber_estimate: float, n: int, passes: int = 16,
                schedule: str = "demystifying") -> list[int]:
    """Block size of every Cascade pass.

    Parameters
    ----------
    qber_estimate : float
        Expected bit error rate, in ``(0, 0.5)`` (clamped below at 1e-5).
    n : int
        Key length; no block is larger than ``n``.
    passes : int
        Number of passes.
    schedule : {"demystifying", "original"}
        ``"demystifying"``: Cascade opt. (8) of Martinez-Mateo et al. (2015);
        ``"original"``: ``⌈0.73/Q⌉`` then doubling (Brassard & Salvail).

    Returns
    -------
    list of int
        ``passes`` block sizes, each in ``[1, n]``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    if not 0.0 <= qber_estimate < 0.5:
        raise ValueError(f"qber_estimate must lie in [0, 0.5), not {qber_estimate!r}")
    if passes < 1:
        raise ValueError(f"passes must be a positive integer, not {passes!r}")
    q = max(float(qber_estimate), _MIN_QBER)
    sizes = []
    for p in range(passes):
        if schedule == "original":
            k = math.ceil(0.73 / q) << p
        else:
            alpha = math.log2(1.0 / q) - 0.5
            k = (2 ** math.ceil(alpha) if p == 0 else
                 2 ** math.ceil((alpha + 12.0) / 2.0) if p == 1 else
                 4096 if p == 2 else
                 (n + 1) // 2)
        sizes.append(int(min(max(k, 1), max(n, 1))))
    return sizes


class AliceParityOracle:
    """Alice's side of Cascade: answers parity queries about index sets of her key.

    An index set is always named as ``shuffle[lo:hi]`` for a shuffle (a permutation of
    ``0 … n−1``, public: on the wire it is sent as the seed that generates it) registered with
    :meth:`add_shuffle`. Every parity returned is counted in :attr:`leaked_bits`; every call to
    :meth:`parities` is one message (a round trip) counted in :attr:`messages`.

    Parameters
    ----------
    bits : uint8 bit array
        Alice's key (never exposed by this object).
    """

    def __init__(self, bits) -> None:
        self._bits = as_bits(bits, "bits").copy()
        self._prefix: dict[int, np.ndarray] = {}
        self.leaked_bits = 0
        self.messages = 0

    @property
    def n(self) -> int:
        """Key length."""
        return int(self._bits.size)

    @property
    def shuffles(self) -> int:
        """Shuffles registered so far."""
        return len(self._prefix)

    def add_shuffle(self, permutation: np.ndarray, sid: int | None = None) -> int:
        """Register a public shuffle — distinct key indices, a permutation of the whole key or
        of one segment — under ``sid`` (default: the next free number); returns the id."""
        perm = np.asarray(permutation)
        if perm.ndim != 1 or not 0 < perm.size <= self.n or perm.min() < 0 \
                or perm.max() >= self.n or np.bincount(perm - perm.min()).max() > 1:
            raise ValueError(f"a shuffle must list distinct indices of the {self.n}-bit key")
        sid = len(self._prefix) if sid is None else int(sid)
        if sid in self._prefix:
            raise ValueError(f"shuffle {sid} is already registered")
        prefix = np.empty(perm.size + 1, np.uint8)
        prefix[0] = 0
        np.bitwise_xor.accumulate(self._bits[perm], out=prefix[1:])
        self._prefix[sid] = prefix
        return sid

    def parities(self, shuffle: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Parities of Alice's bits ``shuffle[lo[j]:hi[j]]`` for every ``j`` (one message).

        Parameters
        ----------
        shuffle : int
            Id from :meth:`add_shuffle`.
        lo, hi : integer arrays of the same shape
            Ranges in shuffled order, ``0 <= lo < hi <= n``.

        Returns
        -------
        uint8 array
            One parity bit per range; ``len(lo)`` bits are added to :attr:`leaked_bits`.
        """
        return self.parities_many([(shuffle, lo, hi)])[0]

    def parities_many(self, groups) -> list[np.ndarray]:
        """:meth:`parities` of several ``(shuffle, lo, hi)`` groups in one message."""
        checked = []
        for shuffle, lo, hi in groups:
            if shuffle not in self._prefix:
                raise ValueError(f"no shuffle {shuffle}")
            prefix = self._prefix[shuffle]
            lo = np.asarray(lo, np.int64)
            hi = np.asarray(hi, np.int64)
            if lo.shape != hi.shape:
                raise ValueError("lo and hi must have the same shape")
            if lo.size and (lo.min() < 0 or hi.max() > prefix.size - 1 or np.any(lo >= hi)):
                raise ValueError("ranges must satisfy 0 <= lo < hi <= the shuffle's length")
            checked.append((prefix, lo, hi))
        self.messages += 1
        out = []
        for prefix, lo, hi in checked:
            self.leaked_bits += int(lo.size)
            out.append(prefix[hi] ^ prefix[lo])
        return out


@dataclass
class CascadeResult:
    """Outcome of :func:`reconcile`.

    Attributes
    ----------
    corrected : uint8 bit array
        Bob's key after correction (equal to Alice's unless Cascade failed, which the
        verification step detects).
    leaked_bits : int
        Parity bits Alice disclosed (see the module notes for exactly what is counted).
    passes : int
        Cascade passes run.
    messages : int
        Round trips (one per batch of parity queries answered by Alice).
    n : int
        Key length.
    initial_errors : int
        Positions where the inputs differed (known to the simulation, not to Bob); used for
        :attr:`qber` and :attr:`efficiency`.
    flipped_bits : int
        Bits Bob flipped (what Bob knows: the QBER estimate he reports afterwards).
    block_sizes : tuple of int
        Block size of each pass.
    """

    corrected: np.ndarray
    leaked_bits: int
    passes: int
    messages: int
    n: int
    initial_errors: int
    flipped_bits: int
    block_sizes: tuple[int, ...] = ()

    @property
    def qber(self) -> float:
        """Actual bit error rate of the inputs."""
        return self.initial_errors / self.n if self.n else 0.0

    @property
    def efficiency(self) -> float:
        """Reconciliation efficiency ``f = leaked_bits / (n · h(actual QBER))``.

        ``inf`` when the inputs were identical but bits were disclosed (``nan`` for ``n = 0``).
        """
        denom = self.n * _h(self.qber)
        if denom == 0.0:
            return math.nan if self.n == 0 else (math.inf if self.leaked_bits else 1.0)
        return self.leaked_bits / denom


class _Pass:
    """One Cascade pass as Bob sees it: a public shuffle cut into blocks, and what he knows.

    Position ``j`` of the shuffled segment holds original bit ``perm[j]``; block ``b`` is positions
    ``bounds[b] : bounds[b + 1]``. ``mismatch[b]`` is Alice's block parity XOR Bob's current
    one. ``tree`` caches Alice's sub-block parities learnt in earlier searches (-1: unknown),
    indexed ``block * stride + heap index`` of the node in the block's binary-search tree (root
    1, children ``2h`` and ``2h + 1``); her key never changes, so they stay valid.
    """

    def __init__(self, perm, bounds, block_of, sid, alice, bob_parities) -> None:
        self.perm = perm
        self.bounds = bounds
        self.block_of = block_of
        self.sid = sid
        self.alice = alice
        self.mismatch = alice ^ bob_parities
        self.size = float(perm.size) / max(1, bounds.size - 1)
        longest = int(np.diff(bounds).max()) if bounds.size > 1 else 1
        self.stride = 2 << max(0, (longest - 1).bit_length())
        self.tree: np.ndarray | None = None     # allocated on the first search


def _shuffle(rng: np.random.Generator, n: int, k: int):
    """Public shuffle for blocks of size ``k``: (perm, bounds, block_of).

    Blocks of ``k >= n/2`` are a random split of the key into two halves (each bit joins a
    half with probability 1/2: O(n), no full permutation needed, sizes ``n/2 ± O(√n)``);
    otherwise a uniformly random permutation cut into blocks of exactly ``k`` bits.
    """
    index = np.int32 if n < 2**31 else np.int64
    if k >= n:
        return (np.arange(n, dtype=index), np.array([0, n], np.int64),
                np.zeros(n, np.uint8))
    if 2 * k >= n:
        label = np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), np.uint8))[:n]
        first = np.flatnonzero(label == 0).astype(index)
        if 0 < first.size < n:
            second = np.flatnonzero(label).astype(index)
            return (np.concatenate([first, second]),
                    np.array([0, first.size, n], np.int64), label)
    perm = rng.permutation(n).astype(index)
    bounds = np.append(np.arange(0, n, k, dtype=np.int64), n)
    block_of = np.empty(n, index)
    block_of[perm] = (np.arange(n, dtype=np.int64) // k).astype(index)
    return perm, bounds, block_of


#: Keys longer than this are cut into segments of (nearly) equal length, each with its own
#: shuffles and blocks, whose Cascades run side by side: one message carries the searches of
#: every segment, so round trips are those of one segment, not of the whole key
#: (``make bench`` reconciliation).
SEGMENT = 1 << 17


def segments(n: int) -> np.ndarray:
    """Boundaries of the Cascade segments of an ``n``-bit key (``[0, n]`` when unsplit)."""
    count = max(1, -(-n // SEGMENT))
    return (np.arange(count + 1, dtype=np.int64) * n) // count


@numba.njit(cache=True, nogil=True)
def _descend(lo, hi, node, apar, count, tree, stride, b, perm, prefix, found, nfound):
    """Walk each of the first ``count`` search ranges down while the parity of its left half
    is known from Alice (cached in ``tree``); a range of one bit is an error, written to
    ``found``. Compacts the ranges still needing a parity to the front; returns
    ``(ranges left, errors found)``."""
    kept = 0
    for i in range(count):
        a, z, h, p = np.int64(lo[i]), np.int64(hi[i]), np.int64(node[i]), np.int64(apar[i])
        while True:
            if z - a == 1:
                found[nfound] = perm[a]
                nfound += 1
                break
            mid = a + ((z - a) >> 1)
            left_node = h + (h & (stride - 1))
            left = np.int64(tree[left_node])
            if left < 0:
                lo[kept], hi[kept], node[kept], apar[kept] = a, z, h, p
                kept += 1
                break
            mine = np.int64(0)
            if prefix.size:
                mine = np.int64(prefix[mid] ^ prefix[a])
            else:
                for j in range(a, mid):
                    mine ^= np.int64(b[perm[j]])
            if (left ^ mine) & 1:
                z, h, p = mid, left_node, left
            else:
                a, h, p = mid, left_node + 1, p ^ left
    return kept, nfound


@numba.njit(cache=True, nogil=True)
def _learn(node, apar, count, got, tree, stride):
    """Alice's parities of the left halves of the first ``count`` ranges (and so of their
    right halves: the parent's parity XOR the left's) into the cache."""
    for i in range(count):
        left_node = node[i] + (node[i] & (stride - 1))
        tree[left_node] = got[i]
        tree[left_node + 1] = got[i] ^ apar[i]


class _Segment:
    """Bob's Cascade on one segment ``[s0, s1)`` of the key, as a generator of queries.

    :meth:`run` yields the ``(shuffle id, lo, hi)`` groups of each message it needs and is sent
    Alice's answers back; :func:`_drive` runs the segments side by side, one message per step
    of all of them. Shuffle ``p · segments + j`` is pass ``p`` of segment ``j``.

    Memory: per pass a shuffle (4 bytes per bit) and a block map (4 bytes per bit; 1 byte for
    the two-block passes), Alice's prefix parities (1 byte per bit), and a search tree
    allocated when the pass is first searched (at most ~4 bytes per bit) — about 100 bytes
    per key bit for 16 passes.
    """

    def __init__(self, bob: np.ndarray, j: int, s0: int, s1: int, count: int,
                 rng: np.random.Generator, sizes: list[int], oracle) -> None:
        self.b = bob
        self.j, self.s0, self.s1, self.count = j, s0, s1, count
        self.rng = rng
        self.sizes = sizes
        self.oracle = oracle
        self.passes: list[_Pass] = []
        self.flipped = 0
        self.parity = 0     # parity of Alice's segment, from the first pass

    def run(self):
        length = self.s1 - self.s0
        for p, k in enumerate(self.sizes):
            perm, bounds, block_of = _shuffle(self.rng, length, k)
            perm = perm + perm.dtype.type(self.s0)
            sid = p * self.count + self.j
            self.oracle.add_shuffle(perm, sid)
            lo, hi = bounds[:-1], bounds[1:]
            if p == 0:
                (alice,) = yield [(sid, lo, hi)]
                self.parity = int(np.bitwise_xor.reduce(alice))
            elif lo.size == 1:
                alice = np.array([self.parity], np.uint8)
            else:
                # the last block's parity follows from the segment's parity: not disclosed
                (head,) = yield [(sid, lo[:-1], hi[:-1])]
                last = np.uint8(self.parity ^ int(np.bitwise_xor.reduce(head)))
                alice = np.append(head, last).astype(np.uint8)
            bob = (np.add.reduceat(self.b[perm], lo, dtype=np.int64) & 1).astype(np.uint8)
            self.passes.append(_Pass(perm, bounds, block_of, sid, alice, bob))
            # the cascade: search the cheapest pass with odd blocks until none is left
            while True:
                odd = [ps for ps in self.passes if ps.mismatch.any()]
                if not odd:
                    break
                found = yield from self.search(min(odd, key=lambda ps: ps.size))
                self.flip(found)

    def search(self, ps: _Pass):
        """Binary-search every odd block of a pass in parallel (a generator: yields each
        step's query, returns the error bits found).

        Each step needs Alice's parity of the first half of every active range; it is asked
        only when not already known from an earlier search of the same block (asked then, or
        inferred as the parent's parity XOR the other half's). Blocks of one pass are
        disjoint, so the parallel searches never overlap.
        """
        if ps.tree is None:
            ps.tree = np.full((ps.bounds.size - 1) * ps.stride, -1, np.int8)
        odd = np.flatnonzero(ps.mismatch)
        lo = ps.bounds[odd].astype(np.int64)
        hi = ps.bounds[odd + 1].astype(np.int64)
        node = odd.astype(np.int64) * ps.stride + 1   # tree index of each current range
        apar = ps.alice[odd].astype(np.uint8)          # Alice's parity of each current range
        if int((hi - lo).sum()) > ps.perm.size // 4:  # cheaper to prefix-XOR the shuffled key
            prefix = np.empty(ps.perm.size + 1, np.uint8)
            prefix[0] = 0
            np.bitwise_xor.accumulate(self.b[ps.perm], out=prefix[1:])
        else:
            prefix = np.zeros(0, np.uint8)
        found = np.empty(lo.size, np.int64)
        count, nfound = lo.size, 0
        while True:
            # every range walks down as far as Alice's parities are already known
            count, nfound = _descend(lo, hi, node, apar, count, ps.tree, ps.stride, self.b,
                                     ps.perm, prefix, found, nfound)
            if not count:
                return found[:nfound]
            mid = lo[:count] + ((hi[:count] - lo[:count]) >> 1)
            (got,) = yield [(ps.sid, lo[:count].copy(), mid)]
            _learn(node, apar, count, np.asarray(got, np.uint8), ps.tree, ps.stride)

    def flip(self, bits: np.ndarray) -> None:
        self.b[bits] ^= 1
        self.flipped += int(bits.size)
        local = bits - self.s0
        for ps in self.passes:
            np.bitwise_xor.at(ps.mismatch, ps.block_of[local], 1)


def _drive(segments_: list[_Segment], oracle) -> None:
    """Run the segments' Cascades side by side: each message carries the pending query of
    every segment that has one."""
    pending = {}
    for seg in segments_:
        gen = seg.run()
        with contextlib.suppress(StopIteration):
            pending[gen] = next(gen)
    while pending:
        gens = list(pending)
        answers = oracle.parities_many([g for gen in gens for g in pending[gen]])
        at = 0
        for gen in gens:
            k = len(pending[gen])
            try:
                pending[gen] = gen.send(answers[at:at + k])
            except StopIteration:
                del pending[gen]
            at += k


def reconcile(alice_bits, bob_bits, qber_estimate: float, *, seed: int, passes: int = 16,
              schedule: str = "demystifying",
              oracle: AliceParityOracle | RemoteParityOracle | None = None) -> CascadeResult:
    """Correct Bob's key towards Alice's with Cascade.

    Parameters
    ----------
    alice_bits : uint8 bit array, shape (n,), or None
        Alice's sifted key. Bob's side never reads it: it builds the
        :class:`AliceParityOracle` (unless ``oracle`` is given, which must then hold Alice's
        key) and gives the simulation's true error count for :attr:`CascadeResult.qber`.
        None with an ``oracle`` (Bob alone, e.g. :class:`RemoteParityOracle`): the error
        count is then the number of bits Bob flipped.
    bob_bits : uint8 bit array, shape (n,)
        Bob's sifted key (not modified).
    qber_estimate : float
        Expected error rate (from parameter estimation), in ``[0, 0.5)``; sets the block sizes.
    seed : int
        Seed of the public shuffles (both parties derive the same permutations from it).
    passes : int
        Number of Cascade passes (default 16).
    schedule : {"demystifying", "original"}
        Block-size schedule, see :func:`block_sizes`.
    oracle : AliceParityOracle, optional
        Alice's side, e.g. to inspect its counters; a fresh one is made from ``alice_bits``.

    Returns
    -------
    CascadeResult
    """
    b = as_bits(bob_bits, "bob_bits").copy()
    n = b.size
    a = None
    if alice_bits is not None:
        a = as_bits(alice_bits, "alice_bits")
        if a.shape != b.shape:
            raise ValueError(f"keys differ in length: {a.size} and {b.size} bits")
    if oracle is None:
        if a is None:
            raise ValueError("reconcile needs Alice's bits or an oracle")
        oracle = AliceParityOracle(a)
    elif oracle.n != n:
        raise ValueError(f"the oracle holds {oracle.n} bits, Bob has {n}")
    seg = segments(n)
    if (seg.size - 1) * passes > 1 << 16:
        raise ValueError(f"a {n}-bit key needs more than 2^16 shuffles: too long for Cascade")
    sizes = block_sizes(qber_estimate, int(np.diff(seg).max()), passes, schedule)
    leaked0, messages0 = oracle.leaked_bits, oracle.messages
    parts = [_Segment(b, j, int(seg[j]), int(seg[j + 1]), seg.size - 1,
                      _segment_rng(seed, j, seg.size - 1), sizes, oracle)
             for j in range(seg.size - 1)] if n else []
    _drive(parts, oracle)
    flipped = sum(part.flipped for part in parts)
    return CascadeResult(
        corrected=b,
        leaked_bits=oracle.leaked_bits - leaked0,
        passes=len(sizes) if n else 0,
        messages=oracle.messages - messages0,
        n=int(n),
        initial_errors=(flipped if a is None
                        else int(np.count_nonzero(a != as_bits(bob_bits, "bob_bits")))),
        flipped_bits=flipped,
        block_sizes=tuple(sizes),
    )


def _segment_rng(seed: int, j: int, count: int) -> np.random.Generator:
    """The shuffles' generator of segment ``j`` (an unsplit key keeps ``default_rng(seed)``)."""
    return np.random.default_rng(seed if count == 1 else [seed, j])


# -- the two parties over a classical channel ----------------------------------------------
#
# Bob's queries and Alice's answers travel as public frames of the session's authenticated
# channel (no pad each); at the end Bob sends his whole query transcript and the number of
# bits he flipped as one authenticated ``cascade-end`` message, Alice compares it with what she
# received and answers with her whole answer transcript (``cascade-answers``), which Bob
# compares with what he received. So hundreds of round trips cost two tags, and a query or
# answer altered on the wire aborts the session before its key is used.

_QUERY = struct.Struct(">HI")       # per group: shuffle id, number of ranges; lo[], hi[] as u32


def _encode_query(groups) -> bytes:
    return b"".join(_QUERY.pack(sid, lo.size) + lo.astype(">u4").tobytes()
                    + hi.astype(">u4").tobytes() for sid, lo, hi in groups)


def _decode_query(query: bytes) -> list[tuple[int, np.ndarray, np.ndarray]]:
    groups, at = [], 0
    while at < len(query) or not groups:
        if len(query) - at < _QUERY.size:
            raise ProtocolAbort("malformed Cascade query")
        sid, count = _QUERY.unpack_from(query, at)
        at += _QUERY.size
        if len(query) - at < 8 * count:
            raise ProtocolAbort("malformed Cascade query")
        lo = np.frombuffer(query, ">u4", count, at).astype(np.int64)
        hi = np.frombuffer(query, ">u4", count, at + 4 * count).astype(np.int64)
        at += 8 * count
        groups.append((sid, lo, hi))
    return groups


class RemoteParityOracle:
    """Bob's handle on Alice's oracle across the channel (see the notes above); it has the
    interface of :class:`AliceParityOracle` that :func:`reconcile` uses.

    Parameters
    ----------
    channel : mozi.host.crypto.auth.AuthenticatedChannel
        Bob's end of the session's channel.
    n : int
        Key length.
    """

    def __init__(self, channel, n: int) -> None:
        self._channel = channel
        self._n = int(n)
        self._shuffles = 0
        self._queries: list[bytes] = []
        self._answers: list[bytes] = []
        self.leaked_bits = 0
        self.messages = 0
        self.public_bytes = 0

    @property
    def n(self) -> int:
        """Key length."""
        return self._n

    def add_shuffle(self, permutation: np.ndarray, sid: int | None = None) -> int:
        """Alice regenerates the shuffle from the public seed: only its number is kept."""
        self._shuffles += 1
        return self._shuffles - 1 if sid is None else int(sid)

    def parities(self, shuffle: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """One query as a public frame, Alice's answer as the next one."""
        return self.parities_many([(shuffle, lo, hi)])[0]

    def parities_many(self, groups) -> list[np.ndarray]:
        """Several ``(shuffle, lo, hi)`` groups in one query frame, one answer frame."""
        groups = [(int(sid), np.asarray(lo, np.int64), np.asarray(hi, np.int64))
                  for sid, lo, hi in groups]
        query = _encode_query(groups)
        self._channel.send_public(query)
        answer = self._channel.expect_public()
        self._queries.append(query)
        self._answers.append(answer)
        self.public_bytes += len(query) + len(answer)
        total = sum(lo.size for _, lo, _ in groups)
        if len(answer) != (total + 7) // 8:
            raise ProtocolAbort("malformed Cascade answer")
        self.leaked_bits += total
        self.messages += 1
        bits = np.unpackbits(np.frombuffer(answer, np.uint8))[:total]
        ends = np.cumsum([lo.size for _, lo, _ in groups])[:-1]
        return [part.copy() for part in np.split(bits, ends)]

    def finish(self, flipped: int) -> None:
        """Authenticate both transcripts (Bob's side of the exchange described above).

        Raises
        ------
        ProtocolAbort
            Alice's answers as she sent them differ from those received (tampering).
        """
        self._channel.send("cascade-end", struct.pack(">Q", int(flipped))
                           + b"".join(self._queries))
        if self._channel.expect("cascade-answers") != b"".join(self._answers):
            raise ProtocolAbort("Cascade answers were altered on the public link")


def serve_parities(channel, bits, *, seed: int, qber_estimate: float, passes: int = 16,
                   schedule: str = "demystifying") -> tuple[AliceParityOracle, int]:
    """Alice's side of :func:`reconcile` across the channel: answer until ``cascade-end``.

    The shuffles are regenerated from the public ``seed`` exactly as Bob's :func:`reconcile`
    draws them (same block sizes, same generator, same order).

    Returns
    -------
    oracle : AliceParityOracle
        Its ``leaked_bits`` and ``messages`` count what was disclosed.
    flipped : int
        The number of bits Bob says he corrected (authenticated).

    Raises
    ------
    ProtocolAbort
        A malformed query, a query for a pass that does not exist, or Bob's query transcript
        differs from the queries received (tampering).
    """
    oracle = AliceParityOracle(bits)
    n = oracle.n
    seg = segments(n)
    count = seg.size - 1
    sizes = block_sizes(qber_estimate, int(np.diff(seg).max()), passes, schedule) if n else []
    rngs = [_segment_rng(seed, j, count) for j in range(count)]
    made = [0] * count          # passes generated so far, per segment
    received, sent = [], []
    while True:
        kind, payload = channel.receive_any()
        if kind == "cascade-end":
            break
        if kind is not None:
            raise ProtocolAbort(f"expected a Cascade query, got a {kind!r} message")
        groups = _decode_query(payload)
        for sid, _, _ in groups:
            p, j = divmod(sid, count)
            if p >= len(sizes):
                raise ProtocolAbort(f"Cascade query for pass {p} of {len(sizes)}")
            while made[j] <= p:      # a segment's shuffles come from its generator in order
                s0, s1 = int(seg[j]), int(seg[j + 1])
                perm = _shuffle(rngs[j], s1 - s0, sizes[made[j]])[0]
                oracle.add_shuffle(perm + perm.dtype.type(s0), made[j] * count + j)
                made[j] += 1
        try:
            answer = np.packbits(np.concatenate(oracle.parities_many(groups))).tobytes()
        except ValueError as exc:
            raise ProtocolAbort(f"malformed Cascade query ({exc})") from None
        received.append(payload)
        sent.append(answer)
        channel.send_public(answer)
    if len(payload) < 8 or payload[8:] != b"".join(received):
        raise ProtocolAbort("Cascade queries were altered on the public link")
    (flipped,) = struct.unpack_from(">Q", payload)
    channel.send("cascade-answers", b"".join(sent))
    return oracle, int(flipped)
