"""Authenticated classical channel: Wegman–Carter tags under a lasting per-link key.

Every message of the post-processing protocol (Bob's slot/basis report, match flags,
parities, the Toeplitz seed, …) travels with a tag

    ``tag = trunc_t(H_h(frame)) XOR pad``

where ``H_h`` is a polynomial hash over GF(2^128) with a secret hash key ``h`` (128 bits, part
of the link's lasting authentication key, reused for every message of the link's life) and
``pad`` is ``t`` fresh secret bits used for one message only. This is information-theoretic
authentication (Wegman & Carter 1981; Stinson's ε-AXU construction): a forger who sees any
number of tagged messages succeeds with probability at most ``L / 2**t`` per attempt, ``L``
being the message length in 16-byte blocks (plus one), independent of computing power.
Rejected attempts teach the forger at most which hash keys they excluded: after ``F`` rejected
attempts the next one succeeds with probability ``<= ε / (1 − F·ε)`` (ε = ``L / 2**t``), which
is why a channel closes after ``max_failures`` rejected frames and tags have ``t >= 64``.

The polynomial hash
-------------------
:func:`poly_hash` splits the data into 16-byte blocks (the last one zero-padded), appends a
block holding the data length in bits, reads every block as a big-endian 128-bit polynomial
``b`` over GF(2) (bit ``i`` = coefficient of ``x**i``) and evaluates, by Horner's rule,
``y = (…((b_1)·h + b_2)·h + … + b_L)·h`` modulo ``x^128 + x^7 + x^2 + x + 1``. Two different
messages give two different polynomials in ``h`` of degree at most ``L``, so their hash
difference equals any given value for at most ``L`` keys ``h``: the family is
``L / 2**128``-almost-XOR-universal, and ``L / 2**t`` after truncation to the top ``t`` bits.

The lasting key and its pads
----------------------------
Both ends of a link hold the same :class:`AuthKeyPool`: the hash key and two *pad streams*,
one per direction (direction 0 carries the frames of the party that was named first when the
link was initialised, direction 1 those of the other). Pad number ``k`` of direction ``d`` is
bits ``[k·t, (k+1)·t)`` of stream ``d``, and the frame with sequence number ``k`` in direction
``d`` is tagged with it — so both ends always agree on a frame's pad, whatever the
interleaving of messages, and sequence numbers run on across sessions for the link's whole
life. A pad leaves the pool (and is erased) when it is used: by the sender *before* the frame
leaves (so a crash can never lead to one pad tagging two frames), by the receiver when it
accepts the frame. A pool kept in a key store (:class:`mozi.host.keys.keystore.StoredAuthKeyPool`)
persists every such step in one transaction before it takes effect.

Channel
-------
A frame is ``b"MZ" | version | direction | seq (u64) | len(kind) | kind | len(payload) (u32) |
payload | tag``; the tag covers everything before it, so kind, direction and sequence number
are authenticated with the payload. Each end starts a session with :meth:`AuthenticatedChannel.
open`, an ``open`` frame. The first frame a receiver accepts in a session must be the peer's
``open``; its sequence number may lie ahead of the one expected (the peer used pads that never
arrived — a crash, a dropped frame of an earlier session), and the pads skipped are *burned*:
erased and counted as consumed. After it every frame must carry exactly the next number, so
replayed, reordered or dropped frames are rejected; older numbers are always rejected.

Two more kinds of frame: an authenticated ``abort`` message (:meth:`AuthenticatedChannel.abort`)
tells the peer its end gave the session up, so the peer stops at once instead of waiting; and
a *public* frame, ``b"MP" | payload`` without tag or pad (:meth:`AuthenticatedChannel.
send_public`), carries the many small messages of an interactive step whose whole transcript
both ends authenticate afterwards (Cascade). A public frame where an authenticated message is
expected is rejected like a forgery.
"""

from __future__ import annotations

import hmac
import struct
import threading
import time
from collections import deque

import numpy as np
from mozi.host.errors import AuthenticationError, KeyStoreError, ProtocolAbort
from mozi.sim.errors import MoziError

__all__ = [
    "DEFAULT_AUTH_KEY_BITS",
    "DEFAULT_MAX_FAILURES",
    "DEFAULT_TAG_BITS",
    "HASH_KEY_BITS",
    "MIN_TAG_BITS",
    "OPEN_KIND",
    "AuthKeyPool",
    "AuthKeyPoolExhausted",
    "ABORT_KIND",
    "AuthenticatedChannel",
    "ChannelEmpty",
    "LocalTransport",
    "frame_kind",
    "MemoryTransport",
    "PeerAbort",
    "PolyHash",
    "auth_key_bits",
    "bits_to_int",
    "check_tag_bits",
    "gf128_mul",
    "make_channel_pair",
    "one_time_tag",
    "poly_hash",
    "split_auth_key",
]

#: Bits of the polynomial hash key ``h`` (one GF(2^128) element).
HASH_KEY_BITS = 128
#: Shortest tag accepted: a forgery succeeds with probability <= L / 2**64 per attempt.
MIN_TAG_BITS = 64
#: Default tag length of a link.
DEFAULT_TAG_BITS = 64
#: Default size of a new link's pre-shared key: the hash key and 1024 pads per direction.
DEFAULT_AUTH_KEY_BITS = HASH_KEY_BITS + 2 * 1024 * DEFAULT_TAG_BITS
#: Rejected frames after which a channel closes (and the session using it aborts).
DEFAULT_MAX_FAILURES = 3
#: Message kind of the frame that opens a session's channel (reserved).
OPEN_KIND = "open"
#: Message kind by which one end tells the other it gave up the session (reserved).
ABORT_KIND = "abort"

_R = (1 << 128) | 0x87          # x^128 + x^7 + x^2 + x + 1
_MASK = (1 << 128) - 1
_MAGIC = b"MZ"
_PUBLIC = b"MP"                  # an unauthenticated public frame (see send_public)
_VERSION = 2
_HEAD = struct.Struct(">2sBBQB")  # magic, version, direction, seq, len(kind)
_PLEN = struct.Struct(">I")
_MAX_SEQ = (1 << 64) - 1



def frame_kind(frame: bytes) -> str:
    """The kind a frame claims (unverified): its message kind, ``"public"`` for a public
    frame, ``""`` when it is neither (for logs and crash points, never for decisions)."""
    if frame[:2] == _PUBLIC:
        return "public"
    if frame[:2] != _MAGIC or len(frame) < _HEAD.size:
        return ""
    return frame[_HEAD.size:_HEAD.size + frame[_HEAD.size - 1]].decode("utf-8", "replace")

class AuthKeyPoolExhausted(KeyStoreError):
    """The authentication key pool holds fewer bits than a tag needs."""


class ChannelEmpty(MoziError):
    """:meth:`AuthenticatedChannel.receive` found no message waiting."""


class PeerAbort(ProtocolAbort):
    """The peer sent an authenticated ``abort`` message: it gave up the session."""


def gf128_mul(a: int, b: int) -> int:
    """Product of two GF(2^128) elements (bit-by-bit reference implementation).

    Parameters
    ----------
    a, b : int
        Elements as integers in ``[0, 2**128)``; bit ``i`` is the coefficient of ``x**i``.

    Returns
    -------
    int
        ``a · b mod (x^128 + x^7 + x^2 + x + 1)``.
    """
    if not (0 <= a <= _MASK and 0 <= b <= _MASK):
        raise ValueError("GF(2^128) elements must lie in [0, 2**128)")
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a >> 128:
            a ^= _R
    return out


class PolyHash:
    """Polynomial hash over GF(2^128) with a fixed key ``h`` (table-driven multiplication).

    Parameters
    ----------
    key : int
        The hash key ``h`` in ``[0, 2**128)``.

    Notes
    -----
    Multiplying by ``h`` is linear over GF(2), so ``h · a`` is the XOR over the 16 bytes of
    ``a`` of a precomputed ``h · (byte << 8k)``: 16 table lookups per block.
    """

    def __init__(self, key: int):
        key = int(key)
        if not 0 <= key <= _MASK:
            raise ValueError("the hash key must lie in [0, 2**128)")
        powers = []
        a = key
        for _ in range(128):                 # h · x^j for j = 0 … 127
            powers.append(a)
            a <<= 1
            if a >> 128:
                a ^= _R
        tables = []
        for k in range(16):
            table = [0] * 256
            for byte in range(1, 256):
                low = byte & -byte
                table[byte] = table[byte ^ low] ^ powers[8 * k + low.bit_length() - 1]
            tables.append(table)
        self._tables = tables

    def mul(self, a: int) -> int:
        """``a · h`` in GF(2^128)."""
        t = self._tables
        return (t[0][a & 0xFF] ^ t[1][(a >> 8) & 0xFF] ^ t[2][(a >> 16) & 0xFF]
                ^ t[3][(a >> 24) & 0xFF] ^ t[4][(a >> 32) & 0xFF] ^ t[5][(a >> 40) & 0xFF]
                ^ t[6][(a >> 48) & 0xFF] ^ t[7][(a >> 56) & 0xFF] ^ t[8][(a >> 64) & 0xFF]
                ^ t[9][(a >> 72) & 0xFF] ^ t[10][(a >> 80) & 0xFF]
                ^ t[11][(a >> 88) & 0xFF] ^ t[12][(a >> 96) & 0xFF]
                ^ t[13][(a >> 104) & 0xFF] ^ t[14][(a >> 112) & 0xFF]
                ^ t[15][(a >> 120) & 0xFF])

    def digest(self, data: bytes) -> int:
        """The 128-bit hash of ``data`` (see the module documentation)."""
        data = bytes(data)
        t = self._tables
        y = 0
        n = len(data)
        padded = data + bytes(-n % 16) + (8 * n).to_bytes(16, "big")
        from_bytes = int.from_bytes
        for i in range(0, len(padded), 16):
            a = y ^ from_bytes(padded[i:i + 16], "big")
            y = (t[0][a & 0xFF] ^ t[1][(a >> 8) & 0xFF] ^ t[2][(a >> 16) & 0xFF]
                 ^ t[3][(a >> 24) & 0xFF] ^ t[4][(a >> 32) & 0xFF] ^ t[5][(a >> 40) & 0xFF]
                 ^ t[6][(a >> 48) & 0xFF] ^ t[7][(a >> 56) & 0xFF]
                 ^ t[8][(a >> 64) & 0xFF] ^ t[9][(a >> 72) & 0xFF]
                 ^ t[10][(a >> 80) & 0xFF] ^ t[11][(a >> 88) & 0xFF]
                 ^ t[12][(a >> 96) & 0xFF] ^ t[13][(a >> 104) & 0xFF]
                 ^ t[14][(a >> 112) & 0xFF] ^ t[15][(a >> 120) & 0xFF])
        return y


def poly_hash(key: int, data: bytes) -> int:
    """128-bit polynomial hash of ``data`` under key ``key`` (see :class:`PolyHash`)."""
    return PolyHash(key).digest(data)


def bits_to_int(bits) -> int:
    """Read a bit array as an unsigned integer, first bit most significant."""
    b = np.asarray(bits, np.uint8)
    if b.size == 0:
        return 0
    pad = -b.size % 8
    raw = np.packbits(np.concatenate([np.zeros(pad, np.uint8), b])).tobytes()
    return int.from_bytes(raw, "big")


def one_time_tag(hasher: PolyHash, data: bytes, pad: int, tag_bits: int = 128) -> bytes:
    """Wegman–Carter tag: top ``tag_bits`` bits of the hash XOR a one-time ``pad``.

    Parameters
    ----------
    hasher : PolyHash
        Hash with the secret key ``h``.
    data : bytes
        The authenticated data.
    pad : int
        ``tag_bits`` fresh uniform secret bits, never used for another tag.
    tag_bits : int
        Tag length, a multiple of 8 in ``[64, 128]`` (:func:`check_tag_bits`).

    Returns
    -------
    bytes
        ``tag_bits // 8`` bytes.
    """
    check_tag_bits(tag_bits)
    if not 0 <= pad < (1 << tag_bits):
        raise ValueError(f"pad must have {tag_bits} bits")
    value = (hasher.digest(data) >> (128 - tag_bits)) ^ pad
    return value.to_bytes(tag_bits // 8, "big")


def check_tag_bits(tag_bits: int) -> int:
    """``tag_bits`` as an int, checked: a multiple of 8 in [:data:`MIN_TAG_BITS`, 128]."""
    if isinstance(tag_bits, bool) or not isinstance(tag_bits, int | np.integer) \
            or int(tag_bits) not in range(MIN_TAG_BITS, 129, 8):
        raise ValueError(f"tag_bits must be a multiple of 8 in [{MIN_TAG_BITS}, 128], "
                         f"not {tag_bits!r}")
    return int(tag_bits)


def _as_pool_bits(bits, name: str) -> np.ndarray:
    b = np.asarray(bits)
    if b.ndim != 1 or (b.size and (b.dtype.kind not in "biu" or b.min() < 0 or b.max() > 1)):
        raise ValueError(f"{name} must be a 1-D array of 0 and 1")
    return b.astype(np.uint8)


def auth_key_bits(pads_per_direction: int, tag_bits: int = DEFAULT_TAG_BITS) -> int:
    """Size of a pre-shared key holding the hash key and ``pads_per_direction`` pads each way."""
    return HASH_KEY_BITS + 2 * int(pads_per_direction) * check_tag_bits(tag_bits)


def split_auth_key(key_bits) -> tuple[int, np.ndarray, np.ndarray]:
    """Cut a pre-shared authentication key into the hash key and the two pad streams.

    The first :data:`HASH_KEY_BITS` bits are the hash key ``h``; of the rest, the first half
    (rounded down) is the pad stream of direction 0 and the next as many bits that of
    direction 1 (an odd last bit is dropped). Both ends apply this same rule.

    Returns
    -------
    hash_key : int
    pads0, pads1 : uint8 bit arrays of equal length
    """
    bits = _as_pool_bits(key_bits, "key_bits")
    if bits.size < HASH_KEY_BITS + 2 * MIN_TAG_BITS:
        raise ValueError(f"an authentication key needs at least "
                         f"{HASH_KEY_BITS + 2 * MIN_TAG_BITS} bits, not {bits.size}")
    half = (bits.size - HASH_KEY_BITS) // 2
    rest = bits[HASH_KEY_BITS:]
    return bits_to_int(bits[:HASH_KEY_BITS]), rest[:half].copy(), rest[half:2 * half].copy()


class AuthKeyPool:
    """One end's copy of a link's lasting authentication key (see the module documentation).

    Both ends hold identical pools (same hash key, same pad streams, same replenishments in
    the same order) with different ``role``. This class keeps its state in memory;
    :class:`mozi.host.keys.keystore.StoredAuthKeyPool` persists every change in a key store.

    Parameters
    ----------
    hash_key : int
        ``h``, in ``[0, 2**128)``.
    pads : pair of uint8 bit arrays
        The unused part of each direction's pad stream; ``pads[d][0]`` is bit
        ``next_seq[d] · tag_bits`` of stream ``d``.
    role : {0, 1}
        The direction this end sends in.
    tag_bits : int
        Tag length ``t`` of the link (fixed for its life), at least :data:`MIN_TAG_BITS`.
    next_seq : pair of int
        Sequence number of the next unused pad of each direction.
    target_bits : pair of int, optional
        Pad bits per direction the pool is refilled to after a session
        (:meth:`refill_need`); default: the initial size.
    """

    def __init__(self, *, hash_key: int, pads, role: int, tag_bits: int = DEFAULT_TAG_BITS,
                 next_seq=(0, 0), target_bits=None):
        if not 0 <= int(hash_key) <= _MASK:
            raise ValueError("the hash key must lie in [0, 2**128)")
        if role not in (0, 1):
            raise ValueError(f"role must be 0 or 1, not {role!r}")
        self.tag_bits = check_tag_bits(tag_bits)
        self.role = int(role)
        self.hash_key = int(hash_key)
        self._pads = [_as_pool_bits(pads[0], "pads"), _as_pool_bits(pads[1], "pads")]
        self._next = [int(next_seq[0]), int(next_seq[1])]
        if min(self._next) < 0:
            raise ValueError("sequence numbers must be non-negative")
        self.target_bits = tuple(int(x) for x in (
            target_bits if target_bits is not None else (p.size for p in self._pads)))

    @classmethod
    def from_key(cls, key_bits, *, role: int, tag_bits: int = DEFAULT_TAG_BITS) -> AuthKeyPool:
        """A new link's pool from its pre-shared key (:func:`split_auth_key`)."""
        h, p0, p1 = split_auth_key(key_bits)
        return cls(hash_key=h, pads=(p0, p1), role=role, tag_bits=tag_bits)

    # -- state ---------------------------------------------------------------------------

    def next_seq(self, direction: int) -> int:
        """Sequence number of the next unused pad of ``direction``."""
        return self._next[direction]

    def available_bits(self, direction: int | None = None) -> int:
        """Unused pad bits of one direction, or of both."""
        if direction is None:
            return int(self._pads[0].size + self._pads[1].size)
        return int(self._pads[direction].size)

    def refill_need(self, *, pending_out: int = 0, pending_in: int = 0) -> tuple[int, int]:
        """Bits per direction that bring the pool back to ``target_bits``.

        Parameters
        ----------
        pending_out, pending_in : int
            Frames this end will still send, and still receive, in the session whose key
            refills the pool (their pads count as used already).
        """
        need = []
        for d in (0, 1):
            pending = pending_out if d == self.role else pending_in
            left = self._pads[d].size - pending * self.tag_bits
            need.append(max(0, self.target_bits[d] - left))
        return need[0], need[1]

    # -- pads ----------------------------------------------------------------------------

    def pad(self, direction: int, seq: int) -> int:
        """Pad of frame ``seq`` in ``direction``, without using it.

        Raises
        ------
        AuthKeyPoolExhausted
            The pool does not reach that far.
        ValueError
            ``seq`` was used or burned already.
        """
        first = self._next[direction]
        if seq < first:
            raise ValueError(f"pad {seq} of direction {direction} was used already")
        t = self.tag_bits
        lo = (seq - first) * t
        if lo + t > self._pads[direction].size:
            raise AuthKeyPoolExhausted(
                f"authentication key exhausted: pad {seq} of direction {direction} needs "
                f"{lo + t} bits, {self._pads[direction].size} left")
        return bits_to_int(self._pads[direction][lo:lo + t])

    def use(self, direction: int, seq: int) -> int:
        """Use pad ``seq`` of ``direction``, burning the unused pads before it.

        The change is persisted (:meth:`_save`) before it takes effect in memory.

        Returns
        -------
        int
            Pad bits that left the pool (``tag_bits`` times the pads used and burned).
        """
        self.pad(direction, seq)                       # checks bounds and order
        n = (seq + 1 - self._next[direction]) * self.tag_bits
        rest = self._pads[direction][n:]
        self._save(direction, seq + 1, rest)
        self._next[direction] = seq + 1
        self._pads[direction] = rest
        return n

    def replenish(self, bits0, bits1) -> int:
        """Append fresh key bits to the two pad streams; returns the bits added.

        Both ends must append the same bits in the same order.
        """
        refill = (_as_pool_bits(bits0, "bits0"), _as_pool_bits(bits1, "bits1"))
        self._persist_refill(refill)
        self._apply_refill(refill)
        return int(refill[0].size + refill[1].size)

    def _apply_refill(self, refill) -> None:
        self._pads = [np.concatenate([self._pads[0], refill[0]]),
                      np.concatenate([self._pads[1], refill[1]])]

    # -- persistence hooks (no-ops in memory) -------------------------------------------------

    def record_failure(self) -> None:
        """Persist that a frame was rejected (the channel counts its own)."""

    def _save(self, direction: int, next_seq: int, pads: np.ndarray) -> None:
        """Persist one direction's new state before it takes effect."""

    def _persist_refill(self, refill) -> None:
        """Persist a replenishment before it takes effect."""


class MemoryTransport:
    """In-process frame transport: what one end sends lands in the other's ``inbox``.

    ``inbox`` is a :class:`collections.deque` of frames (``bytes``); tests may inspect,
    drop, duplicate or modify its entries to play the man in the middle.

    Parameters
    ----------
    tap : callable, optional
        A man in the middle on this end's sends: ``tap(name, frame) -> frames`` (none, the
        frame, a modified frame, several) are delivered instead of ``frame``.
    name : str
        The name ``tap`` receives, e.g. the direction or the link.
    """

    def __init__(self, *, tap=None, name: str = ""):
        self.inbox: deque[bytes] = deque()
        self.peer: MemoryTransport | None = None
        self._tap = tap
        self.name = name

    def send(self, frame: bytes) -> None:
        """Deliver ``frame`` (or what the tap makes of it) to the peer's inbox."""
        if self.peer is None:
            raise MoziError("transport is not connected")
        frame = bytes(frame)
        for f in [frame] if self._tap is None else self._tap(self.name, frame):
            self.peer.inbox.append(bytes(f))

    def recv(self) -> bytes:
        """The oldest waiting frame.

        Raises
        ------
        ChannelEmpty
            No frame is waiting.
        """
        if not self.inbox:
            raise ChannelEmpty("no message waiting on the classical channel")
        return self.inbox.popleft()

    @staticmethod
    def pair(*, tap=None, names: tuple[str, str] = ("a->b", "b->a")
             ) -> tuple[MemoryTransport, MemoryTransport]:
        """Two connected transports, each end's sends through ``tap`` under its name."""
        a, b = MemoryTransport(tap=tap, name=names[0]), MemoryTransport(tap=tap, name=names[1])
        a.peer, b.peer = b, a
        return a, b


class LocalTransport:
    """In-process frame transport between two threads, each end blocking in :meth:`recv`.

    :func:`~mozi.host.postprocessing.session.run_session` runs Alice's and Bob's halves of a
    session in two threads joined by a pair of these, so the halves share nothing but frames,
    as two nodes do over TCP. A :meth:`recv` that can never be answered — the peer is waiting
    too with nothing on its way, or has finished — raises :class:`ChannelEmpty` at once
    instead of hanging; ``timeout`` bounds any wait.

    Parameters
    ----------
    tap : callable, optional
        A man in the middle on this end's sends: ``tap(name, frame) -> frames``.
    name : str
        The name ``tap`` receives.
    timeout : float
        Longest wait for a frame, in seconds.
    """

    def __init__(self, *, tap=None, name: str = "", timeout: float = 600.0):
        self.inbox: deque[bytes] = deque()
        self.peer: LocalTransport | None = None
        self._tap = tap
        self.name = name
        self.timeout = float(timeout)
        self._cond = threading.Condition()
        self._waiting = False
        self._closed = False

    def send(self, frame: bytes) -> None:
        """Deliver ``frame`` (or what the tap makes of it) to the peer's inbox."""
        if self.peer is None:
            raise MoziError("transport is not connected")
        frames = [bytes(frame)] if self._tap is None else self._tap(self.name, bytes(frame))
        with self._cond:
            self.peer.inbox.extend(bytes(f) for f in frames)
            self._cond.notify_all()

    def recv(self) -> bytes:
        """The oldest waiting frame, waiting while the peer may still send one.

        Raises
        ------
        ChannelEmpty
            No frame can come: the peer is closed, or waits for this end with nothing sent.
        """
        peer = self.peer
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._waiting = True
            self._cond.notify_all()
            try:
                while not self.inbox:
                    stuck = peer._closed or (peer._waiting and not peer.inbox)
                    left = deadline - time.monotonic()
                    if stuck or left <= 0:
                        raise ChannelEmpty("no message waiting on the classical channel")
                    self._cond.wait(min(left, 1.0))
                return self.inbox.popleft()
            finally:
                self._waiting = False

    def close(self) -> None:
        """This end sends nothing more: a peer waiting on it gets :class:`ChannelEmpty`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @staticmethod
    def pair(*, tap=None, names: tuple[str, str] = ("a->b", "b->a"), timeout: float = 600.0
             ) -> tuple[LocalTransport, LocalTransport]:
        """Two connected transports sharing one lock, each end's sends through ``tap``."""
        a = LocalTransport(tap=tap, name=names[0], timeout=timeout)
        b = LocalTransport(tap=tap, name=names[1], timeout=timeout)
        b._cond = a._cond
        a.peer, b.peer = b, a
        return a, b


class AuthenticatedChannel:
    """One end of an authenticated classical channel (see the module documentation).

    Parameters
    ----------
    pool : AuthKeyPool
        This end's copy of the link's authentication key; its ``role`` is the direction this
        end sends in, its ``tag_bits`` the tag length.
    transport : object with ``send(bytes)`` and ``recv() -> bytes``
        Carries the frames (e.g. :class:`MemoryTransport`, a socket wrapper).
    max_failures : int
        Rejected frames after which the channel closes: every later call raises
        :class:`~mozi.host.errors.AuthenticationError`.

    Attributes
    ----------
    consumed_bits : int
        Pad bits that left the pool through this channel: one pad per frame sent or
        accepted, plus the pads an ``open`` frame skipped (burned).
    burned_bits : int
        Of which skipped pads.
    failures : int
        Frames rejected so far.
    sent_bits, received_bits : dict of str to int
        Frame bits (header, payload and tag: what crosses the wire) per message kind.
    payload_bits : dict of str to int
        Payload bits sent per message kind.
    sent_messages, received_messages : int
    public_sent_bits, public_received_bits : int
        Bits of public (unauthenticated) frames, see :meth:`send_public`.
    """

    def __init__(self, pool: AuthKeyPool, transport, *,
                 max_failures: int = DEFAULT_MAX_FAILURES):
        if isinstance(max_failures, bool) or int(max_failures) < 1:
            raise ValueError(f"max_failures must be a positive integer, not {max_failures!r}")
        self.pool = pool
        self.transport = transport
        self.tag_bits = pool.tag_bits
        self.max_failures = int(max_failures)
        self._out_dir = pool.role
        self._in_dir = 1 - pool.role
        self._hasher = PolyHash(pool.hash_key)
        self._opened_out = False
        self._opened_in = False
        self.consumed_bits = 0
        self.burned_bits = 0
        self.failures = 0
        self.sent_bits: dict[str, int] = {}
        self.received_bits: dict[str, int] = {}
        self.payload_bits: dict[str, int] = {}
        self.sent_messages = 0
        self.received_messages = 0
        self.public_sent_bits = 0
        self.public_received_bits = 0

    @property
    def closed(self) -> bool:
        """True once ``max_failures`` frames were rejected."""
        return self.failures >= self.max_failures

    def _closed_message(self) -> str:
        n = self.failures
        return f"authenticated channel closed after {n} rejected frame{'s' * (n != 1)}"

    def _check_open(self) -> None:
        if self.closed:
            raise AuthenticationError(self._closed_message())

    def open(self) -> bytes:
        """Send this end's ``open`` frame (once, before any other message)."""
        if self._opened_out:
            raise MoziError("the channel is open already")
        frame = self._send(OPEN_KIND, b"")
        self._opened_out = True
        return frame

    def send(self, kind: str, payload: bytes) -> bytes:
        """Tag and send one message (opening the channel first if needed).

        Parameters
        ----------
        kind : str
            Message type (1 … 255 UTF-8 bytes, not ``"open"``), authenticated with the
            payload.
        payload : bytes
            At most ``2**32 - 1`` bytes.

        Returns
        -------
        frame : bytes
            The frame handed to the transport.

        Raises
        ------
        AuthKeyPoolExhausted
            No pad left for the tag (nothing is sent).
        """
        if kind in (OPEN_KIND, ABORT_KIND):
            raise ValueError(f"message kind {kind!r} is reserved")
        if not self._opened_out:
            self.open()
        return self._send(kind, payload)

    def _send(self, kind: str, payload: bytes, *, aborting: bool = False) -> bytes:
        if not aborting:            # a closed channel accepts nothing more, but says why
            self._check_open()
        kind_b = kind.encode("utf-8")
        payload = bytes(payload)
        if not 1 <= len(kind_b) <= 255:
            raise ValueError("kind must be 1 to 255 UTF-8 bytes")
        if len(payload) >= 1 << 32:
            raise ValueError("payload too long for one frame")
        seq = self.pool.next_seq(self._out_dir)
        if seq > _MAX_SEQ:
            raise AuthKeyPoolExhausted("sequence numbers of the link are exhausted")
        body = (_HEAD.pack(_MAGIC, _VERSION, self._out_dir, seq, len(kind_b))
                + kind_b + _PLEN.pack(len(payload)) + payload)
        frame = body + one_time_tag(self._hasher, body, self.pool.pad(self._out_dir, seq),
                                    self.tag_bits)
        # the pad is spent (and persisted) before the frame can leave
        self.consumed_bits += self.pool.use(self._out_dir, seq)
        self.transport.send(frame)
        self.sent_messages += 1
        self.sent_bits[kind] = self.sent_bits.get(kind, 0) + 8 * len(frame)
        self.payload_bits[kind] = self.payload_bits.get(kind, 0) + 8 * len(payload)
        return frame

    def send_public(self, payload: bytes) -> None:
        """Send an unauthenticated *public* frame (no pad used).

        For the many small messages of an interactive step whose whole transcript both ends
        authenticate afterwards (Cascade's parity queries and answers): a tampered public
        frame is caught then, and costs no key now.
        """
        self._check_open()
        frame = _PUBLIC + bytes(payload)
        self.transport.send(frame)
        self.public_sent_bits += 8 * len(frame)

    def abort(self, reason: str) -> None:
        """Tell the peer, authenticated, that this end gives the session up (best effort).

        The peer's next :meth:`expect` raises :class:`PeerAbort` with ``reason``. A channel
        closed by rejected frames still sends it: only what comes in is no longer trusted.
        """
        try:
            if not self._opened_out:
                self._send(OPEN_KIND, b"", aborting=True)
                self._opened_out = True
            self._send(ABORT_KIND, str(reason).encode("utf-8")[:1000], aborting=True)
        except (MoziError, OSError):
            pass

    def _rejection(self, message: str) -> AuthenticationError:
        """Count one rejected frame; the error to raise for it."""
        self.failures += 1
        self.pool.record_failure()
        if self.closed:
            return AuthenticationError(f"{message}; {self._closed_message()}")
        return AuthenticationError(message)

    def _next(self) -> tuple[str | None, bytes]:
        """The next frame: ``(None, payload)`` for a public one, else the verified message."""
        while True:
            self._check_open()
            frame = self.transport.recv()
            if frame[:2] == _PUBLIC:
                self.public_received_bits += 8 * len(frame)
                return None, frame[2:]
            kind, payload = self.verify_frame(frame)
            if kind == ABORT_KIND:
                raise PeerAbort(f"the peer aborted the session: "
                                f"{payload.decode('utf-8', 'replace')}")
            if kind != OPEN_KIND:
                return kind, payload

    def receive(self) -> tuple[str, bytes]:
        """Receive, verify and return the next message from the peer.

        The peer's ``open`` frame is handled here and not returned.

        Returns
        -------
        kind : str
        payload : bytes

        Raises
        ------
        AuthenticationError
            Malformed, tampered, replayed, reordered or misdirected frame, or a public frame
            (the genuine next frame is still accepted until the channel closes), or the
            channel is closed.
        PeerAbort
            The peer aborted the session.
        ChannelEmpty
            No frame waiting (from :class:`MemoryTransport`).
        """
        kind, payload = self._next()
        if kind is None:
            raise self._rejection("an unauthenticated frame where an authenticated one was "
                                  "expected")
        return kind, payload

    def receive_any(self) -> tuple[str | None, bytes]:
        """The next public frame (``kind`` None) or accepted message, skipping rejected
        frames while the channel stays open (see :meth:`expect`)."""
        while True:
            try:
                return self._next()
            except AuthenticationError:
                if self.closed:
                    raise

    def expect(self, kind: str) -> bytes:
        """The payload of the next accepted message, which must be of ``kind``.

        Rejected frames (tampered, replayed, …) are skipped while the channel stays open, so
        the genuine frame behind them is still taken; the ``max_failures``-th rejection closes
        the channel and raises.

        Raises
        ------
        AuthenticationError
            The channel closed.
        PeerAbort
            The peer aborted the session.
        ProtocolAbort
            The next accepted message is of another kind.
        ChannelEmpty
            No frame waiting.
        """
        while True:
            try:
                got, payload = self.receive()
            except AuthenticationError:
                if self.closed:
                    raise
                continue
            if got != kind:
                raise ProtocolAbort(f"expected a {kind!r} message, got {got!r}")
            return payload

    def expect_public(self) -> bytes:
        """The payload of the next public frame (see :meth:`send_public`).

        Raises
        ------
        PeerAbort
            The peer aborted the session.
        ProtocolAbort
            An authenticated message came instead.
        """
        got, payload = self.receive_any()
        if got is not None:
            raise ProtocolAbort(f"expected a public frame, got a {got!r} message")
        return payload

    def verify_frame(self, frame: bytes) -> tuple[str, bytes]:
        """Verify one frame received by other means (see :meth:`receive`).

        Returns ``(kind, payload)``, ``("open", b"")`` for the peer's open frame.
        """
        self._check_open()
        try:
            return self._verify(bytes(frame))
        except AuthenticationError as exc:
            raise self._rejection(str(exc)) from None

    def _verify(self, frame: bytes) -> tuple[str, bytes]:
        tag_len = self.tag_bits // 8
        if len(frame) < _HEAD.size + _PLEN.size + tag_len:
            raise AuthenticationError("malformed message: frame too short")
        magic, version, direction, seq, klen = _HEAD.unpack_from(frame)
        if magic != _MAGIC or version != _VERSION:
            raise AuthenticationError("malformed message: bad magic or version")
        if direction != self._in_dir:
            raise AuthenticationError("message has the wrong direction (reflected?)")
        pos = _HEAD.size + klen
        if len(frame) < pos + _PLEN.size + tag_len:
            raise AuthenticationError("malformed message: frame too short")
        (plen,) = _PLEN.unpack_from(frame, pos)
        end = pos + _PLEN.size + plen
        if len(frame) != end + tag_len:
            raise AuthenticationError("malformed message: length mismatch")
        expected = self.pool.next_seq(self._in_dir)
        if seq < expected:
            raise AuthenticationError(f"replayed message: sequence number {seq}, "
                                      f"expected {expected}")
        kind_b = frame[_HEAD.size:pos]
        opening = not self._opened_in
        if opening and kind_b != OPEN_KIND.encode():
            raise AuthenticationError("the peer's first message is not its open frame")
        if not opening and seq != expected:
            raise AuthenticationError(f"out-of-order message: sequence number {seq}, "
                                      f"expected {expected}")
        try:
            pad = self.pool.pad(self._in_dir, seq)
        except AuthKeyPoolExhausted as exc:
            raise AuthenticationError(f"message {seq} cannot be verified: {exc}") from None
        expect = one_time_tag(self._hasher, frame[:end], pad, self.tag_bits)
        if not hmac.compare_digest(expect, frame[end:]):
            raise AuthenticationError(f"message {seq} failed authentication (tampered?)")
        try:
            kind = kind_b.decode("utf-8")
        except UnicodeDecodeError:  # authenticated, so the peer sent it: still malformed
            raise AuthenticationError("malformed message kind") from None
        if not opening and kind == OPEN_KIND:
            raise AuthenticationError("the peer opened the channel twice")
        used = self.pool.use(self._in_dir, seq)
        self.consumed_bits += used
        self.burned_bits += used - self.tag_bits
        self._opened_in = True
        self.received_messages += 1
        self.received_bits[kind] = self.received_bits.get(kind, 0) + 8 * len(frame)
        return kind, frame[end - plen:end]


def make_channel_pair(pool_a: AuthKeyPool, pool_b: AuthKeyPool, *,
                      max_failures: int = DEFAULT_MAX_FAILURES
                      ) -> tuple[AuthenticatedChannel, AuthenticatedChannel]:
    """The two ends of an in-process authenticated channel, each opened.

    Parameters
    ----------
    pool_a, pool_b : AuthKeyPool
        The two ends' copies of the link's key (different roles).
    max_failures : int
        See :class:`AuthenticatedChannel`.

    Returns
    -------
    a, b : AuthenticatedChannel
        For ``pool_a`` and ``pool_b``, connected through a :class:`MemoryTransport` pair
        (``b.transport.inbox`` holds what ``a`` sent and ``b`` has not received yet, starting
        with ``a``'s open frame).
    """
    if pool_a.role == pool_b.role:
        raise ValueError("the two ends of a channel need different roles")
    ta, tb = MemoryTransport.pair()
    a = AuthenticatedChannel(pool_a, ta, max_failures=max_failures)
    b = AuthenticatedChannel(pool_b, tb, max_failures=max_failures)
    a.open()
    b.open()
    return a, b
