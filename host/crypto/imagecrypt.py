"""File (image) encryption with QKD keys: one-time pad + one-time MAC, or AES-256-GCM.

Two modes, as in the Micius China–Russia experiment:

``otp``
    The file is XORed with key bits (a one-time pad, information-theoretically secret) and
    authenticated with a one-time Wegman–Carter MAC: a 128-bit polynomial hash over
    GF(2^128) (:class:`mozi.host.crypto.auth.PolyHash`) of header and ciphertext, XORed with 128
    fresh key bits. Key consumed: ``8·size + 256`` bits (hash key, tag pad, then the pad for
    the data), taken from the oldest available blocks of the link *that the sender may send
    with*; the unused tail of the last block is wasted. Refused
    (:class:`~mozi.host.errors.KeyStoreError`) when the sender has too little key on the
    link. Forgery probability ``<= (size/16 + 2) / 2**128``.
``aes-gcm``
    AES-256-GCM (package ``cryptography``) under a 256-bit QKD key (one whole block of the
    sender's on the link), random 96-bit nonce, header as associated data: for files larger
    than the key budget. Computationally secure only.
``auto``
    ``otp`` when the sender has enough key on the link for it, otherwise ``aes-gcm``.

Direction. Every key block has one sender (:mod:`mozi.host.keys.keystore`): :func:`encrypt_file`
uses only the blocks of the store's own party and writes that party's name into the header;
:func:`decrypt_file` accepts only blocks of the named sender, which must be the peer. So two
stations encrypting at the same time take different blocks, and a file sent back to its
sender cannot be decrypted by it.

Ciphertext format (all integers big-endian)::

    magic      8 bytes  b"MOZICRYP"
    version    u8       2
    mode       u8       1 = otp, 2 = aes-gcm
    n_ids      u16      number of key IDs
    length     u64      plaintext length in bytes
    link_len   u8       then link_len bytes: the link name (UTF-8)
    sender_len u8       then sender_len bytes: the sender's party name (UTF-8)
    key IDs    16 bytes each (UUID)
    otp:       ciphertext (length bytes) | tag (16 bytes)
    aes-gcm:   nonce (12 bytes) | ciphertext (length bytes) | GCM tag (16 bytes)

The header is authenticated in both modes. :func:`decrypt_file` looks the key IDs up in the
receiver's store, authenticates *before* anything else, writes the plaintext to a temporary
file, consumes the keys (all-or-nothing) and only then renames the file into place. A
tampered file, an unknown or already-used key ID, or a truncated file give one typed error
(:class:`~mozi.host.errors.AuthenticationError`, ``KeyStoreError``,
:class:`~mozi.sim.errors.FileFormatError`) and no output file; a failed authentication
consumes no key.
"""

from __future__ import annotations

import os
import secrets
import struct
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from mozi.host.crypto.auth import HASH_KEY_BITS, PolyHash, bits_to_int, one_time_tag
from mozi.host.errors import AuthenticationError, FileFormatError, KeyStoreError
from mozi.sim.errors import MoziError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MODES",
    "CryptResult",
    "FileAccessError",
    "decrypt_file",
    "decrypt_file_kms",
    "encrypt_file",
    "encrypt_file_kms",
    "otp_key_bits",
    "read_header",
]

MAGIC = b"MOZICRYP"
FORMAT_VERSION = 2
MODES = {"otp": 1, "aes-gcm": 2}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_FIXED = struct.Struct(">8sBBHQB")
_TAG_BYTES = 16
_NONCE_BYTES = 12
_AES_KEY_BITS = 256
_MAC_KEY_BITS = HASH_KEY_BITS + 8 * _TAG_BYTES


class FileAccessError(MoziError):
    """An input file cannot be read or an output file cannot be written."""


@dataclass(frozen=True)
class CryptResult:
    """What :func:`encrypt_file` / :func:`decrypt_file` did.

    Attributes
    ----------
    mode : str
        ``"otp"`` or ``"aes-gcm"``.
    link : str
    sender : str
        The party that encrypted the file (whose key blocks were used).
    key_ids : tuple of str
        Key blocks used (consumed).
    plaintext_bytes, ciphertext_bytes : int
    key_bits_used : int
        Key bits that entered the cipher and MAC.
    key_bits_consumed : int
        Bits of the consumed blocks (``>= key_bits_used``; the rest is wasted).
    """

    mode: str
    link: str
    sender: str
    key_ids: tuple[str, ...]
    plaintext_bytes: int
    ciphertext_bytes: int
    key_bits_used: int
    key_bits_consumed: int

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["key_ids"] = list(self.key_ids)
        return d


def otp_key_bits(n_bytes: int) -> int:
    """Key bits the ``otp`` mode needs for an ``n_bytes`` file: ``8·n_bytes + 256``."""
    return 8 * int(n_bytes) + _MAC_KEY_BITS


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileAccessError(f"cannot read {path}: {exc.strerror or exc}") from None


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a fresh temporary file beside ``path`` (flushed and synced).

    The file is created with ``mode`` minus the umask: ``0o666`` for a ciphertext (public),
    ``0o600`` for a decrypted plaintext (the secret).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise FileAccessError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileAccessError(f"cannot write {path}: {exc.strerror or exc}") from None
    return tmp


def _commit(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileAccessError(f"cannot write {path}: {exc.strerror or exc}") from None


def _header(mode: str, link: str, sender: str, key_ids, length: int) -> bytes:
    link_b, sender_b = link.encode("utf-8"), sender.encode("utf-8")
    if len(link_b) > 255 or len(sender_b) > 255:
        raise ValueError("link or party name longer than 255 bytes")
    if len(key_ids) > 0xFFFF:
        raise KeyStoreError(f"a file can name at most 65535 key blocks, not {len(key_ids)}")
    return (_FIXED.pack(MAGIC, FORMAT_VERSION, MODES[mode], len(key_ids), length, len(link_b))
            + link_b + bytes([len(sender_b)]) + sender_b
            + b"".join(uuid.UUID(k).bytes for k in key_ids))


@dataclass(frozen=True)
class _Parsed:
    mode: str
    link: str
    sender: str
    key_ids: tuple[str, ...]
    length: int
    header: bytes
    body: bytes


def read_header(data: bytes) -> _Parsed:
    """Parse and check the ciphertext header and the body length.

    Raises
    ------
    FileFormatError
        Not a Mozi ciphertext, unknown version or mode, or truncated / extended file.
    """
    if len(data) < _FIXED.size:
        raise FileFormatError("not a Mozi ciphertext (file too short)")
    magic, version, mode, n_ids, length, link_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise FileFormatError("not a Mozi ciphertext (bad magic)")
    if version != FORMAT_VERSION:
        raise FileFormatError(f"unsupported ciphertext format version {version}")
    if mode not in _MODE_NAMES:
        raise FileFormatError(f"unknown cipher mode {mode}")
    pos = _FIXED.size + link_len
    if len(data) < pos + 1 or len(data) < pos + 1 + data[pos] + 16 * n_ids:
        raise FileFormatError("truncated ciphertext header")
    sender_len = data[pos]
    end = pos + 1 + sender_len + 16 * n_ids
    try:
        link = data[_FIXED.size:pos].decode("utf-8")
        sender = data[pos + 1:pos + 1 + sender_len].decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError("corrupt ciphertext header (link or sender name)") from None
    ids = tuple(str(uuid.UUID(bytes=data[i:i + 16]))
                for i in range(pos + 1 + sender_len, end, 16))
    if not ids:
        raise FileFormatError("corrupt ciphertext header (no key IDs)")
    name = _MODE_NAMES[mode]
    extra = _TAG_BYTES + (_NONCE_BYTES if name == "aes-gcm" else 0)
    body = data[end:]
    if len(body) != length + extra:
        raise FileFormatError(f"ciphertext body has {len(body)} bytes, header says "
                              f"{length + extra} (truncated or corrupt file)")
    return _Parsed(name, link, sender, ids, length, data[:end], body)


def encrypt_file(in_path, out_path, store, *, link: str, mode: str = "auto") -> CryptResult:
    """Encrypt a file with key from ``store`` (see the module documentation).

    Parameters
    ----------
    in_path, out_path : str or Path
        Plaintext to read, ciphertext to write (atomically: temporary file, then rename).
    store : KeyStore
        The sender's key store; the key blocks used (its own party's) are consumed.
    link : str
        Link whose key to use; the receiver holds the same blocks under the same IDs.
    mode : {"auto", "otp", "aes-gcm"}

    Returns
    -------
    CryptResult

    Raises
    ------
    KeyStoreError
        Not enough key of the sender's on the link for the mode (``otp`` with a too short key
        is refused).
    FileAccessError
        Input unreadable or output unwritable.
    """
    if mode not in ("auto", *MODES):
        raise ValueError(f"mode must be 'auto', 'otp' or 'aes-gcm', not {mode!r}")
    in_path, out_path = Path(in_path), Path(out_path)
    plain = _read(in_path)
    need = otp_key_bits(len(plain))
    have = store.sendable_bits(link)
    if mode == "auto":
        mode = "otp" if have >= need else "aes-gcm"
    purpose = f"{mode} {in_path.name}"
    if mode == "otp":
        if have < need:
            raise KeyStoreError(f"one-time pad needs {need} key bits for {in_path.name} "
                                f"({len(plain)} bytes) but {store.party!r} may send with "
                                f"{have} on link {link!r}; use --mode aes-gcm")
        blocks = store.reserve(link, need, purpose=purpose)
    else:
        need = _AES_KEY_BITS
        blocks = store.reserve(link, need, purpose=purpose)
    ids = [k for k, _ in blocks]
    bits = np.concatenate([b for _, b in blocks])
    return _write_sealed(out_path, plain, bits, mode=mode, link=link, sender=store.party,
                         key_ids=ids, need=need)


def _write_sealed(out_path: Path, plain: bytes, bits: np.ndarray, *, mode: str, link: str,
                  sender: str, key_ids, need: int) -> CryptResult:
    """Encrypt and authenticate ``plain`` under ``bits`` and write the ciphertext."""
    header = _header(mode, link, sender, key_ids, len(plain))
    if mode == "otp":
        hasher = PolyHash(bits_to_int(bits[:HASH_KEY_BITS]))
        tag_pad = bits_to_int(bits[HASH_KEY_BITS:_MAC_KEY_BITS])
        pad = np.packbits(bits[_MAC_KEY_BITS:need]).tobytes()
        cipher = (np.frombuffer(plain, np.uint8) ^ np.frombuffer(pad, np.uint8)).tobytes()
        body = cipher + one_time_tag(hasher, header + cipher, tag_pad, 8 * _TAG_BYTES)
    else:
        key = np.packbits(bits[:_AES_KEY_BITS]).tobytes()
        nonce = secrets.token_bytes(_NONCE_BYTES)
        body = nonce + AESGCM(key).encrypt(nonce, plain, header)
    data = header + body
    _commit(_write_temp(out_path, data, 0o666), out_path)
    return CryptResult(mode=mode, link=link, sender=sender, key_ids=tuple(key_ids),
                       plaintext_bytes=len(plain),
                       ciphertext_bytes=len(data), key_bits_used=need,
                       key_bits_consumed=int(bits.size))


def _unseal(in_path: Path, parsed: _Parsed, bits: np.ndarray) -> tuple[bytes, int]:
    """Authenticate and decrypt: (plaintext, key bits used)."""
    need = otp_key_bits(parsed.length) if parsed.mode == "otp" else _AES_KEY_BITS
    if bits.size < need:
        raise KeyStoreError(f"the keys hold {bits.size} bits, the file needs {need}")
    if parsed.mode == "otp":
        cipher, tag = parsed.body[:parsed.length], parsed.body[parsed.length:]
        hasher = PolyHash(bits_to_int(bits[:HASH_KEY_BITS]))
        tag_pad = bits_to_int(bits[HASH_KEY_BITS:_MAC_KEY_BITS])
        expect = one_time_tag(hasher, parsed.header + cipher, tag_pad, 8 * _TAG_BYTES)
        if not secrets.compare_digest(expect, tag):
            raise AuthenticationError(f"{in_path.name}: authentication failed (tampered "
                                      "ciphertext or wrong key); nothing written")
        pad = np.packbits(bits[_MAC_KEY_BITS:need]).tobytes()
        return (np.frombuffer(cipher, np.uint8) ^ np.frombuffer(pad, np.uint8)).tobytes(), need
    key = np.packbits(bits[:_AES_KEY_BITS]).tobytes()
    nonce, sealed = parsed.body[:_NONCE_BYTES], parsed.body[_NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, sealed, parsed.header), need
    except InvalidTag:
        raise AuthenticationError(f"{in_path.name}: authentication failed (tampered "
                                  "ciphertext or wrong key); nothing written") from None


def decrypt_file(in_path, out_path, store) -> CryptResult:
    """Authenticate and decrypt a file made by :func:`encrypt_file`.

    Parameters
    ----------
    in_path, out_path : str or Path
        Ciphertext to read; plaintext to write, only after authentication succeeded.
    store : KeyStore
        The receiver's key store, holding the key IDs named in the header (blocks of the
        sender named there, the store's peer on the link); they are consumed when the
        plaintext is written.

    Returns
    -------
    CryptResult

    Raises
    ------
    FileFormatError
        Not a Mozi ciphertext, or truncated.
    KeyStoreError
        Unknown or already-used key ID, a key of another link or of another sender, or a
        file that names the receiver itself as its sender.
    AuthenticationError
        The file was tampered with (or encrypted with other keys); no key is consumed.
    FileAccessError
        Input unreadable or output unwritable.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    parsed = read_header(_read(in_path))
    if parsed.sender == store.party:
        raise KeyStoreError(f"{in_path.name} was encrypted by {store.party!r} itself: a party "
                            f"cannot decrypt with the key blocks it sends with")
    records = [store.get(k) for k in parsed.key_ids]
    for r in records:
        if r.state != "available" or r.bits is None:
            raise KeyStoreError(f"key {r.key_id} already used")
        if r.link != parsed.link:
            raise KeyStoreError(f"key {r.key_id} belongs to link {r.link!r}, the file "
                                f"names {parsed.link!r}")
        if r.sender != parsed.sender:
            raise KeyStoreError(f"key {r.key_id} is for messages from {r.sender!r}, the file "
                                f"names {parsed.sender!r} as its sender")
    bits = np.concatenate([r.bits for r in records])
    plain, need = _unseal(in_path, parsed, bits)
    tmp = _write_temp(out_path, plain, 0o600)
    try:
        store.consume_many(list(parsed.key_ids), sender=parsed.sender,
                           purpose=f"decrypt {in_path.name}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _commit(tmp, out_path)
    return CryptResult(mode=parsed.mode, link=parsed.link, sender=parsed.sender,
                       key_ids=parsed.key_ids,
                       plaintext_bytes=len(plain), ciphertext_bytes=len(parsed.header)
                       + len(parsed.body), key_bits_used=need,
                       key_bits_consumed=int(bits.size))


# -- keys from a KME (ETSI GS QKD 014) ------------------------------------------------------
#
# The header's link is then the slave SAE (the file's recipient) and its sender the master
# SAE; the key IDs are the KME's key_IDs.

def _key_bits(keys) -> np.ndarray:
    return np.unpackbits(np.frombuffer(b"".join(k for _, k in keys), np.uint8))


def encrypt_file_kms(in_path, out_path, kme, *, slave: str, mode: str = "auto"
                     ) -> CryptResult:
    """Encrypt a file with keys from the master SAE's KME (``kme``, a
    :class:`~mozi.host.kms.client.KmeClient`) for ``slave``.

    ``otp`` takes ``⌈(8·size + 256) / key_size⌉`` keys of the KME's default size; ``aes-gcm``
    one 256-bit key; ``auto`` the one-time pad when the KME's ``stored_key_count`` covers it.
    The keys handed out are used only for this file (a failure after ``enc_keys`` wastes them,
    never reuses them).
    """
    if mode not in ("auto", *MODES):
        raise ValueError(f"mode must be 'auto', 'otp' or 'aes-gcm', not {mode!r}")
    in_path, out_path = Path(in_path), Path(out_path)
    plain = _read(in_path)
    status = kme.status(slave)
    size, per_request = int(status["key_size"]), int(status["max_key_per_request"])
    need = otp_key_bits(len(plain))
    count = -(-need // size)
    if mode == "auto":
        mode = "otp" if count <= int(status["stored_key_count"]) else "aes-gcm"
    if mode == "otp":
        if count > int(status["stored_key_count"]) or count > 0xFFFF:
            raise KeyStoreError(f"one-time pad needs {count} keys of {size} bits for "
                                f"{in_path.name} ({len(plain)} bytes) but KME "
                                f"{status['source_KME_ID']!r} stores "
                                f"{status['stored_key_count']}; use --mode aes-gcm")
        keys = []
        while len(keys) < count:
            keys += kme.enc_keys(slave, number=min(per_request, count - len(keys)), size=size)
    else:
        need = _AES_KEY_BITS
        keys = kme.enc_keys(slave, number=1, size=_AES_KEY_BITS)
    return _write_sealed(out_path, plain, _key_bits(keys), mode=mode, link=slave,
                         sender=kme.sae_id, key_ids=[k for k, _ in keys], need=need)


def decrypt_file_kms(in_path, out_path, kme) -> CryptResult:
    """Fetch a file's keys from the slave SAE's KME (``dec_keys``, for the master SAE the
    header names), authenticate, decrypt, and only then write the plaintext.

    The KME hands a key out once: a tampered file still uses its keys up.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    parsed = read_header(_read(in_path))
    if parsed.link != kme.sae_id:
        raise KeyStoreError(f"{in_path.name} is for SAE {parsed.link!r}, not {kme.sae_id!r}")
    keys = []
    ids = list(parsed.key_ids)
    per_request = int(kme.status(parsed.sender)["max_key_per_request"]) if len(ids) > 1 else 1
    for i in range(0, len(ids), per_request):
        keys += kme.dec_keys(parsed.sender, ids[i:i + per_request])
    if [k for k, _ in keys] != ids:
        raise KeyStoreError("the KME returned other keys than the file names")
    bits = _key_bits(keys)
    plain, need = _unseal(in_path, parsed, bits)
    _commit(_write_temp(out_path, plain, 0o600), out_path)
    return CryptResult(mode=parsed.mode, link=parsed.link, sender=parsed.sender,
                       key_ids=parsed.key_ids, plaintext_bytes=len(plain),
                       ciphertext_bytes=len(parsed.header) + len(parsed.body),
                       key_bits_used=need, key_bits_consumed=int(bits.size))
