"""Authenticated classical channel: Wegman–Carter tags with keys from QKD.

Every message of the post-processing protocol (Bob's slot/basis report, match flags,
parities, the Toeplitz seed, …) travels with a tag

    ``tag = trunc_t(H_h(frame)) XOR pad``

where ``H_h`` is a polynomial hash over GF(2^128) with a secret hash key ``h`` (128 bits,
drawn once per channel and reused for every message) and ``pad`` is a fresh ``t``-bit
one-time pad used for one message only. Both come from an :class:`AuthKeyPool`: a pre-shared
bootstrap key at first, replenished from QKD keys afterwards. This is information-theoretic
authentication (Wegman & Carter 1981; Stinson's ε-AXU construction): a forger who sees any
number of tagged messages succeeds with probability at most ``L / 2**t`` per attempt, ``L``
being the message length in 16-byte blocks (plus one), independent of computing power.

The polynomial hash
-------------------
:func:`poly_hash` splits the data into 16-byte blocks (the last one zero-padded), appends a
block holding the data length in bits, reads every block as a big-endian 128-bit polynomial
``b`` over GF(2) (bit ``i`` = coefficient of ``x**i``) and evaluates, by Horner's rule,
``y = (…((b_1)·h + b_2)·h + … + b_L)·h`` modulo ``x^128 + x^7 + x^2 + x + 1``. Two different
messages give two different polynomials in ``h`` of degree at most ``L``, so their hash
difference equals any given value for at most ``L`` keys ``h``: the family is
``L / 2**128``-almost-XOR-universal, and ``L / 2**t`` after truncation to the top ``t`` bits.

Channel
-------
A frame is ``b"MZ" | version | direction | seq (u64) | len(kind) | kind | len(payload) (u32) |
payload | tag``; the tag covers everything before it, so kind, direction and sequence number
are authenticated with the payload. Each direction numbers its messages 0, 1, 2, …; a
receiver accepts only the next number, so replayed, reordered or dropped messages are
rejected. The two directions use disjoint pads: each time an endpoint needs a pad it takes
``2·t`` bits from its pool, the first ``t`` for Alice → Bob and the next ``t`` for Bob → Alice,
so both ends draw identical pads in an identical order whatever the interleaving of messages.
"""

from __future__ import annotations

import hmac
import struct
from collections import deque
from collections.abc import Sequence

import numpy as np
from mozi.host.errors import AuthenticationError, KeyStoreError
from mozi.sim.errors import MoziError

__all__ = [
    "HASH_KEY_BITS",
    "AuthKeyPool",
    "AuthKeyPoolExhausted",
    "AuthenticatedChannel",
    "ChannelEmpty",
    "MemoryTransport",
    "bits_to_int",
    "PolyHash",
    "gf128_mul",
    "make_channel_pair",
    "one_time_tag",
    "poly_hash",
]

#: Bits of the polynomial hash key ``h`` (one GF(2^128) element).
HASH_KEY_BITS = 128

_R = (1 << 128) | 0x87          # x^128 + x^7 + x^2 + x + 1
_MASK = (1 << 128) - 1
_MAGIC = b"MZ"
_VERSION = 1
_HEAD = struct.Struct(">2sBBQB")  # magic, version, direction, seq, len(kind)
_PLEN = struct.Struct(">I")
DIRECTIONS = {"alice": 0, "bob": 1}


class AuthKeyPoolExhausted(KeyStoreError):
    """The authentication key pool holds fewer bits than a tag needs."""


class ChannelEmpty(MoziError):
    """:meth:`AuthenticatedChannel.receive` found no message waiting."""


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
        Tag length, a multiple of 8 in ``[32, 128]``.

    Returns
    -------
    bytes
        ``tag_bits // 8`` bytes.
    """
    _check_tag_bits(tag_bits)
    if not 0 <= pad < (1 << tag_bits):
        raise ValueError(f"pad must have {tag_bits} bits")
    value = (hasher.digest(data) >> (128 - tag_bits)) ^ pad
    return value.to_bytes(tag_bits // 8, "big")


def _check_tag_bits(tag_bits: int) -> None:
    if tag_bits not in range(32, 129, 8):
        raise ValueError(f"tag_bits must be a multiple of 8 in [32, 128], not {tag_bits!r}")


class AuthKeyPool:
    """FIFO of secret bits shared by both ends of a channel, used for authentication only.

    Both parties hold an identical pool (same bootstrap key, same replenishments in the same
    order) and take bits from it in the same order.

    Parameters
    ----------
    bootstrap_bits : uint8 bit array
        The pre-shared key the first session authenticates with.

    Attributes
    ----------
    taken_bits : int
        Bits handed out so far.
    added_bits : int
        Bootstrap plus every replenishment.
    """

    def __init__(self, bootstrap_bits):
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0              # bits already taken from self._chunks[0]
        self.added_bits = 0
        self.taken_bits = 0
        self.replenish(bootstrap_bits)

    @property
    def available_bits(self) -> int:
        """Bits still in the pool."""
        return self.added_bits - self.taken_bits

    def replenish(self, bits) -> None:
        """Append key bits (e.g. fresh QKD key) to the end of the pool."""
        b = np.asarray(bits)
        if b.ndim != 1 or (b.size and (b.min() < 0 or b.max() > 1)):
            raise ValueError("pool bits must be a 1-D array of 0 and 1")
        if b.size:
            self._chunks.append(b.astype(np.uint8).copy())
            self.added_bits += int(b.size)

    def take(self, n_bits: int) -> np.ndarray:
        """Remove and return the next ``n_bits`` bits.

        Raises
        ------
        AuthKeyPoolExhausted
            Fewer than ``n_bits`` bits left (nothing is taken then).
        """
        n_bits = int(n_bits)
        if n_bits < 0:
            raise ValueError("n_bits must be non-negative")
        if n_bits > self.available_bits:
            raise AuthKeyPoolExhausted(
                f"authentication key pool exhausted: {n_bits} bits needed, "
                f"{self.available_bits} left")
        parts, need = [], n_bits
        while need:
            head = self._chunks[0]
            part = head[self._offset:self._offset + need]
            parts.append(part)
            need -= part.size
            self._offset += part.size
            if self._offset == head.size:
                self._chunks.popleft()
                self._offset = 0
        self.taken_bits += n_bits
        return np.concatenate(parts) if parts else np.zeros(0, np.uint8)

    def replenish_from_store(self, store, key_ids: Sequence[str]) -> int:
        """Consume the given blocks of a :class:`~mozi.host.keystore.KeyStore` into the pool.

        The peer calls this with the IDs returned by :meth:`reserve_from_store` on its side,
        so both pools grow by the same bits.

        Returns
        -------
        int
            Bits added.
        """
        blocks = store.consume_many(list(key_ids), purpose="authentication")
        for bits in blocks:
            self.replenish(bits)
        return int(sum(b.size for b in blocks))

    def reserve_from_store(self, store, link: str, n_bits: int) -> list[str]:
        """Consume the oldest blocks of ``link`` holding at least ``n_bits`` bits into the pool.

        Returns
        -------
        key_ids : list of str
            To be sent (over the authenticated channel) to the peer, who calls
            :meth:`replenish_from_store` with them.
        """
        blocks = store.reserve(link, n_bits, purpose="authentication")
        for _, bits in blocks:
            self.replenish(bits)
        return [kid for kid, _ in blocks]


class MemoryTransport:
    """In-process frame transport: what one end sends lands in the other's ``inbox``.

    ``inbox`` is a :class:`collections.deque` of frames (``bytes``); tests may inspect,
    drop, duplicate or modify its entries to play the man in the middle.
    """

    def __init__(self):
        self.inbox: deque[bytes] = deque()
        self.peer: MemoryTransport | None = None

    def send(self, frame: bytes) -> None:
        """Deliver ``frame`` to the peer's inbox."""
        if self.peer is None:
            raise MoziError("transport is not connected")
        self.peer.inbox.append(bytes(frame))

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
    def pair() -> tuple[MemoryTransport, MemoryTransport]:
        """Two connected transports."""
        a, b = MemoryTransport(), MemoryTransport()
        a.peer, b.peer = b, a
        return a, b


class AuthenticatedChannel:
    """One end of an authenticated classical channel (see the module documentation).

    Parameters
    ----------
    pool : AuthKeyPool
        This end's copy of the shared authentication key pool. The channel takes the hash
        key (:data:`HASH_KEY_BITS` bits) from it at once, then ``2 * tag_bits`` bits whenever
        it needs a pad.
    role : {"alice", "bob"}
        Which end this is; the two ends must have different roles.
    transport : object with ``send(bytes)`` and ``recv() -> bytes``
        Carries the frames (e.g. :class:`MemoryTransport`, a socket wrapper, the device link).
    tag_bits : int
        Tag length ``t`` (multiple of 8, 32 … 128, default 64): forgery probability per
        attempt ``<= (blocks + 1) / 2**t``.

    Attributes
    ----------
    consumed_bits : int
        Key bits used for authentication so far, exactly: the hash key plus ``tag_bits`` for
        every message sent and every message accepted.
    reserved_bits : int
        Pads taken from the pool for a direction but not used yet.
    sent_bits, received_bits : dict of str to int
        Frame bits (header, payload and tag: what crosses the wire) per message kind.
    payload_bits : dict of str to int
        Payload bits sent per message kind.
    sent_messages, received_messages : int
    """

    def __init__(self, pool: AuthKeyPool, role: str, transport, *, tag_bits: int = 64):
        if role not in DIRECTIONS:
            raise ValueError(f"role must be 'alice' or 'bob', not {role!r}")
        _check_tag_bits(tag_bits)
        self.pool = pool
        self.role = role
        self.transport = transport
        self.tag_bits = int(tag_bits)
        self._out_dir = DIRECTIONS[role]
        self._in_dir = 1 - self._out_dir
        self._hasher = PolyHash(bits_to_int(pool.take(HASH_KEY_BITS)))
        self._pads: tuple[deque[int], deque[int]] = (deque(), deque())
        self._next_out = 0
        self._next_in = 0
        self.consumed_bits = HASH_KEY_BITS
        self.sent_bits: dict[str, int] = {}
        self.received_bits: dict[str, int] = {}
        self.payload_bits: dict[str, int] = {}
        self.sent_messages = 0
        self.received_messages = 0

    @property
    def reserved_bits(self) -> int:
        """Pad bits taken from the pool but not yet used."""
        return self.tag_bits * (len(self._pads[0]) + len(self._pads[1]))

    def _pad(self, direction: int) -> int:
        if not self._pads[direction]:
            t = self.tag_bits
            bits = self.pool.take(2 * t)
            self._pads[0].append(bits_to_int(bits[:t]))
            self._pads[1].append(bits_to_int(bits[t:]))
        return self._pads[direction][0]

    def send(self, kind: str, payload: bytes) -> bytes:
        """Tag and send one message.

        Parameters
        ----------
        kind : str
            Message type (1 … 255 UTF-8 bytes), authenticated with the payload.
        payload : bytes
            At most ``2**32 - 1`` bytes.

        Returns
        -------
        frame : bytes
            The frame handed to the transport.

        Raises
        ------
        AuthKeyPoolExhausted
            No key left for the tag (nothing is sent).
        """
        kind_b = kind.encode("utf-8")
        payload = bytes(payload)
        if not 1 <= len(kind_b) <= 255:
            raise ValueError("kind must be 1 to 255 UTF-8 bytes")
        if len(payload) >= 1 << 32:
            raise ValueError("payload too long for one frame")
        body = (_HEAD.pack(_MAGIC, _VERSION, self._out_dir, self._next_out, len(kind_b))
                + kind_b + _PLEN.pack(len(payload)) + payload)
        pad = self._pad(self._out_dir)
        frame = body + one_time_tag(self._hasher, body, pad, self.tag_bits)
        self.transport.send(frame)
        self._pads[self._out_dir].popleft()
        self._next_out += 1
        self.consumed_bits += self.tag_bits
        self.sent_messages += 1
        self.sent_bits[kind] = self.sent_bits.get(kind, 0) + 8 * len(frame)
        self.payload_bits[kind] = self.payload_bits.get(kind, 0) + 8 * len(payload)
        return frame

    def receive(self) -> tuple[str, bytes]:
        """Receive, verify and return the next message from the peer.

        Returns
        -------
        kind : str
        payload : bytes

        Raises
        ------
        AuthenticationError
            Malformed, tampered, replayed, reordered or misdirected frame (the channel stays
            usable: the genuine next message is still accepted).
        ChannelEmpty
            No frame waiting (from :class:`MemoryTransport`).
        """
        return self.verify_frame(self.transport.recv())

    def verify_frame(self, frame: bytes) -> tuple[str, bytes]:
        """Verify one frame received by other means (see :meth:`receive`)."""
        frame = bytes(frame)
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
        if seq < self._next_in:
            raise AuthenticationError(f"replayed message: sequence number {seq}, "
                                      f"expected {self._next_in}")
        if seq > self._next_in:
            raise AuthenticationError(f"out-of-order message: sequence number {seq}, "
                                      f"expected {self._next_in}")
        body = frame[:end]
        expect = one_time_tag(self._hasher, body, self._pad(self._in_dir), self.tag_bits)
        if not _equal(expect, frame[end:]):
            raise AuthenticationError(f"message {seq} failed authentication (tampered?)")
        try:
            kind = frame[_HEAD.size:pos].decode("utf-8")
        except UnicodeDecodeError:  # authenticated, so the peer sent it: still malformed
            raise AuthenticationError("malformed message kind") from None
        self._pads[self._in_dir].popleft()
        self._next_in += 1
        self.consumed_bits += self.tag_bits
        self.received_messages += 1
        self.received_bits[kind] = self.received_bits.get(kind, 0) + 8 * len(frame)
        return kind, frame[end - plen:end]


def _equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)


def make_channel_pair(pool_a: AuthKeyPool, pool_b: AuthKeyPool, *, tag_bits: int = 64
                      ) -> tuple[AuthenticatedChannel, AuthenticatedChannel]:
    """Alice's and Bob's ends of an in-process authenticated channel.

    Parameters
    ----------
    pool_a, pool_b : AuthKeyPool
        Alice's and Bob's copies of the shared pool (identical contents).
    tag_bits : int
        Tag length, see :class:`AuthenticatedChannel`.

    Returns
    -------
    alice, bob : AuthenticatedChannel
        Connected through a :class:`MemoryTransport` pair (``bob.transport.inbox`` holds
        what Alice sent and Bob has not received yet).
    """
    ta, tb = MemoryTransport.pair()
    return (AuthenticatedChannel(pool_a, "alice", ta, tag_bits=tag_bits),
            AuthenticatedChannel(pool_b, "bob", tb, tag_bits=tag_bits))
