"""ETSI GS QKD 014 key IDs that the peer KME can check without asking anyone.

The two KMEs of a pair of stations share the relayed key of their link, in blocks, and nothing
else: no channel between them. A key that the master SAE's KME hands out (``enc_keys``) is a
byte range of one block of the blocks *its* station may send with, and its ``key_ID`` says
where it lies and carries a tag that only the two KMEs can compute. The slave SAE's KME
(``dec_keys``) finds the range from the ID alone, and hands it out only when the tag checks
for the master SAE named in the request and the slave SAE that asks, and only once.

A key_ID is an RFC 9562 UUID, version 8 (custom), whose 122 free bits are, most significant
first::

    block   48 bits   the first 48 bits of the block's UUID
    offset  16 bits   first byte of the key in the block
    size    12 bits   key length in bytes (1 … 4095)
    tag     46 bits   HMAC-SHA256(reserved bytes of the block, ID fields | master | slave)

The first :data:`RESERVED_BYTES` bytes of every block are the HMAC key and are never handed
out. A forged or misdirected key ID passes with probability ``2**-46`` per try; the offset and
size cannot be changed without changing the tag, and the master KME never issues overlapping
ranges, so one range is one key.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

__all__ = ["MAX_KEY_BYTES", "RESERVED_BYTES", "TAG_BITS", "check_key_id", "make_key_id",
           "parse_key_id"]

#: Bytes at the start of each block that key the tags (secret to the two KMEs).
RESERVED_BYTES = 32
#: The largest key a key ID can describe.
MAX_KEY_BYTES = (1 << 12) - 1
TAG_BITS = 46
_DOMAIN = b"mozi etsi-014 key_ID v1\0"


def _tag(reserved: bytes, block_id: str, offset: int, size: int, master: str, slave: str
         ) -> int:
    msg = (_DOMAIN + uuid.UUID(block_id).bytes + offset.to_bytes(2, "big")
           + size.to_bytes(2, "big") + master.encode() + b"\0" + slave.encode())
    digest = hmac.new(reserved, msg, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - TAG_BITS)


def _to_uuid(payload: int) -> uuid.UUID:
    """122 payload bits into a version-8 UUID."""
    hi, mid, lo = payload >> 74, (payload >> 62) & 0xFFF, payload & ((1 << 62) - 1)
    return uuid.UUID(int=(hi << 80) | (0x8 << 76) | (mid << 64) | (0b10 << 62) | lo)


def _from_uuid(u: uuid.UUID) -> int:
    v = u.int
    return ((v >> 80) << 74) | (((v >> 64) & 0xFFF) << 62) | (v & ((1 << 62) - 1))


def make_key_id(block_id: str, reserved: bytes, offset: int, size: int, *, master: str,
                slave: str) -> str:
    """The key_ID of bytes ``[offset, offset + size)`` of block ``block_id``, issued for
    ``master`` to use with ``slave``."""
    if not 0 <= offset <= 0xFFFF or not 1 <= size <= MAX_KEY_BYTES:
        raise ValueError(f"offset {offset} or size {size} out of range for a key ID")
    prefix = uuid.UUID(block_id).int >> 80
    payload = (prefix << 74) | (offset << 58) | (size << 46) \
        | _tag(reserved, block_id, offset, size, master, slave)
    return str(_to_uuid(payload))


def parse_key_id(key_id) -> tuple[str, str, int, int]:
    """(canonical key_ID, block ID prefix ``xxxxxxxx-xxxx``, offset, size).

    Raises
    ------
    ValueError
        Not a UUID, not version 8, or a size of zero.
    """
    if not isinstance(key_id, str):
        raise ValueError(f"key_ID must be a string, not {type(key_id).__name__}")
    try:
        u = uuid.UUID(key_id)
    except ValueError:
        raise ValueError(f"key_ID {key_id[:60]!r} is not a UUID") from None
    if u.version != 8 or u.variant != uuid.RFC_4122:
        raise ValueError(f"key_ID {u} was not issued by a Mozi KME")
    payload = _from_uuid(u)
    offset, size = (payload >> 58) & 0xFFFF, (payload >> 46) & 0xFFF
    if size == 0:
        raise ValueError(f"key_ID {u} names an empty key")
    h = f"{payload >> 74:012x}"
    return str(u), f"{h[:8]}-{h[8:]}", offset, size


def check_key_id(key_id: str, block_id: str, reserved: bytes, *, master: str, slave: str
                 ) -> bool:
    """True when ``key_id`` was issued from ``block_id`` for ``master`` and ``slave``."""
    canonical, prefix, offset, size = parse_key_id(key_id)
    if not block_id.startswith(prefix):
        return False
    return hmac.compare_digest(canonical, make_key_id(block_id, reserved, offset, size,
                                                      master=master, slave=slave))
