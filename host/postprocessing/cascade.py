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
duplicate work, and every step of all these searches is one round trip (one message). All
bookkeeping is numpy-vectorised across blocks; there is no per-bit Python loop.

Block sizes follow "Cascade opt. (8)" of Martinez-Mateo et al. (16 passes instead of their 14):
``k1 = 2**ceil(α)``, ``k2 = 2**ceil((α + 12) / 2)``, ``k3 = 4096``, then ``n / 2``, with
``α = log2(1/Q) − 1/2``. The classic schedule (``k1 = ⌈0.73/Q⌉`` then doubling) is available as
``schedule="original"``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

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
        self._prefix: list[np.ndarray] = []
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

    def add_shuffle(self, permutation: np.ndarray) -> int:
        """Register a public permutation; returns its id for :meth:`parities`."""
        perm = np.asarray(permutation)
        if perm.shape != (self.n,):
            raise ValueError(f"a shuffle must be a permutation of {self.n} indices")
        prefix = np.empty(self.n + 1, np.uint8)
        prefix[0] = 0
        np.bitwise_xor.accumulate(self._bits[perm], out=prefix[1:])
        self._prefix.append(prefix)
        return len(self._prefix) - 1

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
        prefix = self._prefix[shuffle]
        lo = np.asarray(lo, np.int64)
        hi = np.asarray(hi, np.int64)
        if lo.shape != hi.shape:
            raise ValueError("lo and hi must have the same shape")
        if lo.size and (lo.min() < 0 or hi.max() > self.n or np.any(lo >= hi)):
            raise ValueError("ranges must satisfy 0 <= lo < hi <= n")
        self.leaked_bits += int(lo.size)
        self.messages += 1
        return prefix[hi] ^ prefix[lo]


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

    Position ``j`` of the shuffled key holds original bit ``perm[j]``; block ``b`` is positions
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


class _Bob:
    """Bob's side: his bits, the passes so far, and the cascade of binary searches.

    Memory: per pass a shuffle (4 bytes per bit) and a block map (4 bytes per bit; 1 byte for
    the two-block passes), Alice's prefix parities (1 byte per bit), and a search tree
    allocated when the pass is first searched (at most ~4 bytes per bit) — about 100 bytes
    per key bit for 16 passes.
    """

    def __init__(self, bits: np.ndarray, oracle: AliceParityOracle) -> None:
        self.b = bits
        self.n = bits.size
        self.oracle = oracle
        self.passes: list[_Pass] = []
        self.flipped = 0
        self.total_parity: int | None = None   # parity of Alice's whole key, once known

    def start_pass(self, perm: np.ndarray, bounds: np.ndarray, block_of: np.ndarray) -> None:
        sid = self.oracle.add_shuffle(perm)
        lo, hi = bounds[:-1], bounds[1:]
        if self.total_parity is None:
            alice = self.oracle.parities(sid, lo, hi)
            self.total_parity = int(np.bitwise_xor.reduce(alice))
        elif lo.size == 1:
            alice = np.array([self.total_parity], np.uint8)
        else:
            # the last block's parity follows from the whole key's parity: not disclosed
            head = self.oracle.parities(sid, lo[:-1], hi[:-1])
            last = np.uint8(self.total_parity ^ int(np.bitwise_xor.reduce(head)))
            alice = np.append(head, last).astype(np.uint8)
        bob = (np.add.reduceat(self.b[perm], lo, dtype=np.int64) & 1).astype(np.uint8)
        self.passes.append(_Pass(perm, bounds, block_of, sid, alice, bob))

    def _bob_parities(self, ps: _Pass, lo: np.ndarray, hi: np.ndarray,
                      prefix: np.ndarray | None) -> np.ndarray:
        if prefix is not None:
            return prefix[hi] ^ prefix[lo]
        lengths = hi - lo
        starts = np.zeros(lengths.size, np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        idx = np.arange(int(starts[-1] + lengths[-1]), dtype=np.int64)
        idx += np.repeat(lo - starts, lengths)
        vals = self.b[ps.perm[idx]]
        return (np.add.reduceat(vals, starts, dtype=np.int64) & 1).astype(np.uint8)

    def search(self, ps: _Pass) -> np.ndarray:
        """Binary-search every odd block of a pass in parallel; returns the error bits.

        Each step needs Alice's parity of the first half of every active range; it is asked
        only when not already known from an earlier search of the same block (asked then, or
        inferred as the parent's parity XOR the other half's). Blocks of one pass are
        disjoint, so the parallel searches never overlap.
        """
        if ps.tree is None:
            ps.tree = np.full((ps.bounds.size - 1) * ps.stride, -1, np.int8)
        tree = ps.tree
        odd = np.flatnonzero(ps.mismatch)
        lo = ps.bounds[odd]
        hi = ps.bounds[odd + 1]
        node = odd.astype(np.int64) * ps.stride + 1   # tree index of each current range
        apar = ps.alice[odd]                           # Alice's parity of each current range
        prefix = None
        if int((hi - lo).sum()) > self.n // 4:   # cheaper to prefix-XOR the shuffled key
            prefix = np.empty(self.n + 1, np.uint8)
            prefix[0] = 0
            np.bitwise_xor.accumulate(self.b[ps.perm], out=prefix[1:])
        found = []
        while lo.size:
            done = hi - lo == 1
            if done.any():
                found.append(lo[done])
                keep = ~done
                lo, hi, apar, node = lo[keep], hi[keep], apar[keep], node[keep]
                if not lo.size:
                    break
            mid = lo + ((hi - lo) >> 1)
            # node h of block b sits at b * stride + h, so the children are at 2h, 2h + 1
            left_node = node + (node & (ps.stride - 1))
            left = tree[left_node]
            ask = np.flatnonzero(left < 0)
            if ask.size:
                got = self.oracle.parities(ps.sid, lo[ask], mid[ask])
                left[ask] = got
                tree[left_node[ask]] = got
                tree[left_node[ask] + 1] = got ^ apar[ask]
            left = left.astype(np.uint8)
            go_left = (left ^ self._bob_parities(ps, lo, mid, prefix)).astype(bool)
            apar = np.where(go_left, left, apar ^ left)
            lo = np.where(go_left, lo, mid)
            hi = np.where(go_left, mid, hi)
            node = np.where(go_left, left_node, left_node + 1)
        return ps.perm[np.concatenate(found)] if found else np.zeros(0, np.int64)

    def flip(self, bits: np.ndarray) -> None:
        self.b[bits] ^= 1
        self.flipped += int(bits.size)
        for ps in self.passes:
            np.bitwise_xor.at(ps.mismatch, ps.block_of[bits], 1)

    def cascade(self) -> None:
        """Search odd blocks, cheapest pass first, until every known parity matches."""
        while True:
            odd = [ps for ps in self.passes if ps.mismatch.any()]
            if not odd:
                return
            self.flip(self.search(min(odd, key=lambda ps: ps.size)))


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
    sizes = block_sizes(qber_estimate, n, passes, schedule)
    leaked0, messages0 = oracle.leaked_bits, oracle.messages
    bob = _Bob(b, oracle)
    if n:
        rng = np.random.default_rng(seed)
        for k in sizes:
            bob.start_pass(*_shuffle(rng, n, k))
            bob.cascade()
    return CascadeResult(
        corrected=bob.b,
        leaked_bits=oracle.leaked_bits - leaked0,
        passes=len(sizes) if n else 0,
        messages=oracle.messages - messages0,
        n=int(n),
        initial_errors=(bob.flipped if a is None
                        else int(np.count_nonzero(a != as_bits(bob_bits, "bob_bits")))),
        flipped_bits=bob.flipped,
        block_sizes=tuple(sizes),
    )


# -- the two parties over a classical channel ----------------------------------------------
#
# Bob's queries and Alice's answers travel as public frames of the session's authenticated
# channel (no pad each); at the end Bob sends his whole query transcript and the number of
# bits he flipped as one authenticated ``cascade-end`` message, Alice compares it with what she
# received and answers with her whole answer transcript (``cascade-answers``), which Bob
# compares with what he received. So hundreds of round trips cost two tags, and a query or
# answer altered on the wire aborts the session before its key is used.

_QUERY = struct.Struct(">HI")       # shuffle id, number of ranges; then lo[], hi[] as u32


def _encode_query(shuffle: int, lo: np.ndarray, hi: np.ndarray) -> bytes:
    return _QUERY.pack(shuffle, lo.size) + lo.astype(">u4").tobytes() \
        + hi.astype(">u4").tobytes()


def _decode_query(query: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    if len(query) < _QUERY.size:
        raise ProtocolAbort("malformed Cascade query")
    sid, count = _QUERY.unpack_from(query)
    if len(query) != _QUERY.size + 8 * count:
        raise ProtocolAbort("malformed Cascade query")
    lo = np.frombuffer(query, ">u4", count, _QUERY.size).astype(np.int64)
    hi = np.frombuffer(query, ">u4", count, _QUERY.size + 4 * count).astype(np.int64)
    return sid, lo, hi


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

    def add_shuffle(self, permutation: np.ndarray) -> int:
        """Alice regenerates the shuffle from the public seed: only its number is kept."""
        self._shuffles += 1
        return self._shuffles - 1

    def parities(self, shuffle: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """One query as a public frame, Alice's answer as the next one."""
        lo = np.asarray(lo, np.int64)
        hi = np.asarray(hi, np.int64)
        query = _encode_query(shuffle, lo, hi)
        self._channel.send_public(query)
        answer = self._channel.expect_public()
        self._queries.append(query)
        self._answers.append(answer)
        self.public_bytes += len(query) + len(answer)
        if len(answer) != (lo.size + 7) // 8:
            raise ProtocolAbort("malformed Cascade answer")
        self.leaked_bits += int(lo.size)
        self.messages += 1
        return np.unpackbits(np.frombuffer(answer, np.uint8))[:lo.size].copy()

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
    sizes = block_sizes(qber_estimate, n, passes, schedule) if n else []
    rng = np.random.default_rng(seed)
    received, sent = [], []
    while True:
        kind, payload = channel.receive_any()
        if kind == "cascade-end":
            break
        if kind is not None:
            raise ProtocolAbort(f"expected a Cascade query, got a {kind!r} message")
        sid, lo, hi = _decode_query(payload)
        while oracle.shuffles <= sid:
            if oracle.shuffles >= len(sizes):
                raise ProtocolAbort(f"Cascade query for pass {sid} of {len(sizes)}")
            oracle.add_shuffle(_shuffle(rng, n, sizes[oracle.shuffles])[0])
        try:
            answer = np.packbits(oracle.parities(sid, lo, hi)).tobytes()
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
