"""Where a session's random choices come from: the OS CSPRNG, or an explicit insecure replay.

Every random choice the host makes is drawn from a :class:`SessionRandomness`, by *label*
(``"decoder"``, ``"verify"``, ``"pa"``, ``"key-ids"``, …), as a stream of bytes:

* **secure** (the default, ``SessionRandomness()``): each stream is a ChaCha20 keystream
  under a fresh 256-bit key from :func:`secrets.token_bytes` (the operating system's CSPRNG).
  Nothing is derived from a value that is ever published; the keys exist only in memory.
* **insecure reproducible** (``SessionRandomness(insecure_seed=N)``): each stream's key is
  ``SHA-256("mozi insecure reproducible" | N | label)``. The same seed gives the same choices,
  so a simulation or a test can be replayed bit for bit — and anybody who knows ``N`` can
  predict Bob's squashed multi-click bits and the hashing seeds, so the keys of such a run are
  not secret. Sessions and keys of this mode carry ``"insecure_reproducible": true`` and
  :func:`warn_insecure` prints one warning line on stderr.

Both modes give the device backends the same interface: :meth:`SessionRandomness.stream_key`
hands out a 32-byte key that a :class:`ByteStream` (or the receiver's random-word source)
expands, so the ``model`` and ``rtl`` backends see the same words given the same key.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import uuid

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["ByteStream", "SessionRandomness", "warn_insecure"]

_DOMAIN = b"mozi insecure reproducible"
_KEY_BYTES = 32


class ByteStream:
    """A ChaCha20 keystream: a deterministic function of its 32-byte key.

    The ``k``-th byte depends only on the key and ``k``, never on how the stream is read.

    Parameters
    ----------
    key : bytes
        32 bytes; secret when the stream's output must be.
    """

    def __init__(self, key: bytes):
        key = bytes(key)
        if len(key) != _KEY_BYTES:
            raise ValueError(f"a stream key has {_KEY_BYTES} bytes, not {len(key)}")
        # nonce: 32-bit block counter 0 and a fixed 96-bit nonce (one stream per key)
        self._enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        if n < 0:
            raise ValueError(f"cannot read {n} bytes")
        return self._enc.update(bytes(n))

    def bits(self, n: int) -> np.ndarray:
        """The next ``⌈n/8⌉`` bytes as ``n`` bits (``numpy.uint8`` 0/1, MSB first)."""
        raw = np.frombuffer(self.read((n + 7) // 8), np.uint8)
        return np.unpackbits(raw)[:n].copy()

    def integer(self, bits: int) -> int:
        """A uniform integer in ``[0, 2**bits)``."""
        raw = self.read((bits + 7) // 8)
        return int.from_bytes(raw, "big") >> (-bits % 8)


class SessionRandomness:
    """The random choices of one session (see the module documentation).

    Parameters
    ----------
    insecure_seed : int, optional
        Replay mode: every stream derives from this non-negative integer. Leave it out for a
        real session.
    """

    def __init__(self, insecure_seed: int | None = None):
        if insecure_seed is not None and (isinstance(insecure_seed, bool)
                                          or not isinstance(insecure_seed, int)
                                          or insecure_seed < 0):
            raise ValueError(f"insecure_seed must be a non-negative integer, "
                             f"not {insecure_seed!r}")
        self._seed = insecure_seed
        self._streams: dict[str, ByteStream] = {}

    @property
    def insecure_reproducible(self) -> bool:
        """True when the choices derive from a seed (not secret)."""
        return self._seed is not None

    @property
    def insecure_seed(self) -> int | None:
        """The replay seed, or None for a secure session."""
        return self._seed

    def stream_key(self, label: str) -> bytes:
        """A 32-byte key for the stream named ``label``.

        Secure mode: fresh CSPRNG bytes on every call. Replay mode: the same bytes for the
        same seed and label.
        """
        if self._seed is None:
            return secrets.token_bytes(_KEY_BYTES)
        seed = self._seed.to_bytes((self._seed.bit_length() + 8) // 8, "big")
        return hashlib.sha256(_DOMAIN + len(seed).to_bytes(2, "big") + seed
                              + label.encode("utf-8")).digest()

    def stream(self, label: str) -> ByteStream:
        """The session's stream ``label`` (one per label; later calls continue it)."""
        if label not in self._streams:
            self._streams[label] = ByteStream(self.stream_key(label))
        return self._streams[label]

    def bits(self, label: str, n: int) -> np.ndarray:
        """``n`` random bits from stream ``label``."""
        return self.stream(label).bits(n)

    def integer(self, label: str, bits: int = 63) -> int:
        """A random integer in ``[0, 2**bits)`` from stream ``label``."""
        return self.stream(label).integer(bits)

    def uuids(self, label: str, count: int) -> list[str]:
        """``count`` random (version 4) UUIDs from stream ``label``."""
        raw = self.stream(label).read(16 * count)
        return [str(uuid.UUID(bytes=raw[16 * i:16 * i + 16], version=4)) for i in range(count)]


def warn_insecure(what: str, seed: int) -> None:
    """One warning line on stderr: ``what`` is reproducible from ``seed`` and not secret."""
    print(f"mozi: warning: {what} runs in insecure reproducible mode (seed {seed}): its "
          f"secret choices are predictable from the seed; its keys are marked "
          f"insecure_reproducible and must not protect real data", file=sys.stderr)
