"""Key store: finite-key-secure QKD keys in SQLite, each block used by one sender, once.

One store belongs to one *party* (a node: ``"satellite"``, ``"moscow"``, …), named when the
store is created. A final key from one QKD session is cut into *blocks*; every block has a UUID
key ID, a *sender* — the one party of the link that may use it to protect a message, ever — and
metadata: the link it belongs to (e.g. ``"sat-moscow"``, whose other party is the store's
*peer* on that link), the satellite pass, the security parameters ε_sec and ε_cor of the
session that produced it, the creation time, its size in bits and its state (``available`` or
``consumed``). Both parties of a link store the same key under the same IDs with the same
senders: the key's *layout* (:func:`key_layout`, a rule both ends apply with the same inputs)
gives the first part of the key to one party and the rest to the other.

Using key
---------
* A sender takes its own blocks with :meth:`KeyStore.reserve` (oldest first) and names their
  IDs in its message; the receiver consumes exactly those blocks with
  :meth:`KeyStore.consume_many`, which checks that they belong to that sender. Two parties can
  therefore never pick the same block, whatever they do at the same time: no two-time pad.
* Every write is one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), so a key is either
  stored whole or not at all, and a block is consumed whole or not at all; a block is handed
  out at most once, also with several :class:`KeyStore` objects or processes on one file
  (consumption is an ``UPDATE … WHERE state = 'available'`` under SQLite's write lock).

Keys at rest
------------
* A new store file is created with mode ``0600`` (a missing folder with ``0700``); SQLite gives
  its ``-wal`` and ``-shm`` files the same mode, and an existing store opened with looser
  permissions is tightened to ``0600``.
* Consumed key material is erased: the row's bits are set to NULL with ``secure_delete`` on
  (SQLite overwrites the freed bytes with zeros), and the write-ahead log is checkpointed and
  truncated after every transaction that erased key (and when a store is opened, in case a
  process was killed in between), so no copy survives in the journal.
* WAL mode with ``synchronous = FULL``: a committed consumption survives a power cut.

Authentication keys
-------------------
The same file holds each link's lasting authentication key (:class:`StoredAuthKeyPool`, see
:mod:`mozi.host.crypto.auth`): every pad is used in a transaction that commits before the frame it
tags is sent or accepted, and a session's replenishment commits with its key.

Bits are ``numpy.uint8`` arrays of 0/1 in the API and packed MSB-first (``numpy.packbits``)
in the database.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import sqlite3
import stat
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mozi.host.crypto.auth import (
    DEFAULT_AUTH_KEY_BITS,
    DEFAULT_TAG_BITS,
    HASH_KEY_BITS,
    AuthKeyPool,
    auth_key_bits,
    check_tag_bits,
    split_auth_key,
)
from mozi.host.errors import KeyStoreError

__all__ = [
    "DEFAULT_BLOCK_BITS",
    "KeyRequestRefused",
    "DEFAULT_STORE_ENV",
    "KeyRecord",
    "KeyStore",
    "StoredAuthKeyPool",
    "block_sizes",
    "check_name",
    "default_store_path",
    "init_link",
    "key_layout",
    "new_key_ids",
]

#: Default block size in bits: big enough that an image needs only a handful of key IDs,
#: small enough that an AES-256 key (256 bits, one whole block) wastes little.
DEFAULT_BLOCK_BITS = 8192

#: Environment variable naming the default key store file of the CLI.
DEFAULT_STORE_ENV = "MOZI_KEYSTORE"

_SCHEMA_VERSION = 2
_STATES = ("available", "consumed")
_SCHEMA = """
CREATE TABLE store (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    party       TEXT    NOT NULL,
    created     TEXT    NOT NULL
);
CREATE TABLE links (
    link        TEXT    PRIMARY KEY,
    peer        TEXT    NOT NULL,
    created     TEXT    NOT NULL
);
CREATE TABLE keys (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id      TEXT    NOT NULL UNIQUE,
    link        TEXT    NOT NULL REFERENCES links (link),
    sender      TEXT    NOT NULL,
    n_bits      INTEGER NOT NULL CHECK (n_bits > 0),
    bits        BLOB,
    pass_id     TEXT,
    eps_sec     REAL,
    eps_cor     REAL,
    created     TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('available', 'consumed')),
    consumed_at TEXT,
    purpose     TEXT,
    meta        TEXT    NOT NULL
);
CREATE INDEX keys_link_sender_state ON keys (link, sender, state, seq);
CREATE TABLE auth_keys (
    link        TEXT    PRIMARY KEY REFERENCES links (link),
    role        INTEGER NOT NULL CHECK (role IN (0, 1)),
    tag_bits    INTEGER NOT NULL,
    hash_key    BLOB    NOT NULL,
    next_seq0   INTEGER NOT NULL,
    next_seq1   INTEGER NOT NULL,
    pads0       BLOB    NOT NULL,
    pads0_bits  INTEGER NOT NULL,
    pads1       BLOB    NOT NULL,
    pads1_bits  INTEGER NOT NULL,
    target0     INTEGER NOT NULL,
    target1     INTEGER NOT NULL,
    used_bits   INTEGER NOT NULL,
    added_bits  INTEGER NOT NULL,
    failures    INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    created     TEXT    NOT NULL
)
"""

# Sessions and staged keys (added to schema version 2 stores when they are opened).
_SESSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id  TEXT    PRIMARY KEY,
    link        TEXT    NOT NULL,
    pass_id     TEXT,
    state       TEXT    NOT NULL CHECK (state IN ('started', 'staged', 'committed',
                                                  'aborted')),
    reason      TEXT,
    created     TEXT    NOT NULL,
    updated     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_link_pass ON sessions (link, pass_id);
CREATE TABLE IF NOT EXISTS staged (
    session_id  TEXT    PRIMARY KEY REFERENCES sessions (session_id),
    peer        TEXT    NOT NULL,
    refill0     BLOB    NOT NULL,
    refill0_bits INTEGER NOT NULL,
    refill1     BLOB    NOT NULL,
    refill1_bits INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS staged_keys (
    session_id  TEXT    NOT NULL REFERENCES staged (session_id),
    pos         INTEGER NOT NULL,
    key_id      TEXT    NOT NULL UNIQUE,
    link        TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    n_bits      INTEGER NOT NULL,
    bits        BLOB    NOT NULL,
    pass_id     TEXT,
    eps_sec     REAL,
    eps_cor     REAL,
    created     TEXT    NOT NULL,
    meta        TEXT    NOT NULL,
    PRIMARY KEY (session_id, pos)
);
CREATE TABLE IF NOT EXISTS relay_outbox (
    relay_id    TEXT    NOT NULL,
    station     TEXT    NOT NULL,
    link        TEXT    NOT NULL,
    message     BLOB    NOT NULL,
    created     TEXT    NOT NULL,
    PRIMARY KEY (relay_id, station)
);
CREATE TABLE IF NOT EXISTS kms_blocks (
    block_id    TEXT    PRIMARY KEY,
    link        TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    n_bytes     INTEGER NOT NULL,
    bits        BLOB    NOT NULL,
    cursor      INTEGER NOT NULL,
    moved       TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS kms_keys (
    key_id      TEXT    PRIMARY KEY,
    block_id    TEXT    NOT NULL REFERENCES kms_blocks (block_id),
    offset      INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    master      TEXT    NOT NULL,
    slave       TEXT    NOT NULL,
    side        TEXT    NOT NULL CHECK (side IN ('enc', 'dec')),
    at          TEXT    NOT NULL
)
"""
_SESSION_STATES = ("started", "staged", "committed", "aborted")
# Key IDs address bytes of a block with 16 bits (:mod:`mozi.host.kms.keyid`).
_KMS_MAX_BLOCK_BYTES = 0xFFFF

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(kind: str, value) -> str:
    """A party or link name, checked: 1–64 of ``A–Z a–z 0–9 . _ -``, not starting with
    ``.``, ``_`` or ``-``.

    Raises
    ------
    KeyStoreError
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise KeyStoreError(f"invalid {kind} name {value!r} (1 to 64 letters, digits, '.', '_' "
                            f"or '-', starting with a letter or digit)")
    return value


def default_store_path() -> Path:
    """The key store the CLI uses without ``--store``: ``$MOZI_KEYSTORE`` or ``./mozi-keys.db``."""
    return Path(os.environ.get(DEFAULT_STORE_ENV) or "mozi-keys.db")


def block_sizes(n_bits: int, block_bits: int | None = None) -> list[int]:
    """Sizes of the blocks an ``n_bits`` key (or key part) is cut into.

    Parameters
    ----------
    n_bits : int
        Key length, ``>= 1``.
    block_bits : int, optional
        Block size (default :data:`DEFAULT_BLOCK_BITS`); the last block holds the remainder.

    Returns
    -------
    sizes : list of int
        ``[block_bits] * (n_bits // block_bits)`` plus the remainder if it is non-zero.
    """
    block = DEFAULT_BLOCK_BITS if block_bits is None else int(block_bits)
    if block < 1:
        raise ValueError(f"block_bits must be a positive integer, not {block_bits!r}")
    if n_bits < 1:
        raise ValueError(f"a key must have at least one bit, not {n_bits!r}")
    full, rest = divmod(int(n_bits), block)
    return [block] * full + ([rest] if rest else [])


def key_layout(n_bits: int, senders: Sequence[str], *, first_share: float = 0.5,
               block_bits: int | None = None) -> list[tuple[str, int]]:
    """Who may send with which part of a new key: the rule both ends of a link apply.

    The first ``round(n_bits · first_share)`` bits belong to ``senders[0]``, the rest to
    ``senders[1]``; each part is cut into blocks (:func:`block_sizes`).

    Parameters
    ----------
    n_bits : int
        Key length, ``>= 1``.
    senders : pair of str
        The two parties of the link (in the order both ends agree on).
    first_share : float
        Fraction of the key for ``senders[0]``, in ``[0, 1]``.
    block_bits : int, optional

    Returns
    -------
    list of (sender, n_bits)
        One entry per block, in key order.
    """
    first_sender, second_sender = senders
    if first_sender == second_sender:
        raise ValueError("the two senders of a key must be different parties")
    share = float(first_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"first_share must lie in [0, 1], not {first_share!r}")
    if int(n_bits) < 1:
        raise ValueError(f"a key must have at least one bit, not {n_bits!r}")
    first = int(round(int(n_bits) * share))
    out = []
    for sender, size in ((first_sender, first), (second_sender, int(n_bits) - first)):
        if size:
            out += [(sender, s) for s in block_sizes(size, block_bits)]
    return out


def new_key_ids(count: int) -> list[str]:
    """``count`` fresh random UUIDs (version 4, from the OS CSPRNG), one per block.

    The party that stores a key first draws these and sends them to its peer, who passes the
    same list to :meth:`KeyStore.add_key`.
    """
    return [str(uuid.uuid4()) for _ in range(int(count))]


def _canonical_id(key_id) -> str:
    try:
        return str(uuid.UUID(str(key_id)))
    except (ValueError, TypeError, AttributeError):
        raise KeyStoreError(f"invalid key ID {key_id!r} (expected a UUID)") from None


def _as_bits(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError("key bits must be a 1-D array")
    if a.size and (a.dtype.kind not in "biu" or a.min() < 0 or a.max() > 1):
        raise ValueError("key bits must hold only 0 and 1")
    return a.astype(np.uint8, copy=False)


def check_value(bits) -> str:
    """A key's check value: the first 4 bytes of SHA-256 over its bits (packed MSB-first, as
    stored), in hex. Equal check values tell that two copies of a key agree without showing
    its bits; but the value is a function of the key, so it is kept with the key's owner: a
    holder of a one-time-pad ciphertext could use it to confirm a guessed plaintext."""
    return hashlib.sha256(np.packbits(np.asarray(bits, np.uint8)).tobytes()).hexdigest()[:8]


def _unpack(blob: bytes, n_bits: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(blob, np.uint8))[:n_bits].copy()


def _json_default(value):
    """numpy scalars and arrays in metadata become plain JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


class KeyRequestRefused(KeyStoreError):
    """A KME's request for keys the store cannot answer: too little key, a key ID that is
    unknown, handed out already or not issued for this pair of SAEs (``status``: the HTTP
    status a KME answers with). Any other :class:`KeyStoreError` is the store failing."""

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class KeyRecord:
    """One key block and its metadata.

    Attributes
    ----------
    key_id : str
        UUID of the block (canonical lower-case form).
    link : str
        The link the key belongs to (both ends use the same name).
    sender : str
        The party that may use the block to send (the other one only receives with it).
    n_bits : int
        Block size in bits.
    state : str
        ``"available"`` or ``"consumed"``.
    created : str
        ISO 8601 UTC time the block was stored.
    pass_id, eps_sec, eps_cor : str, float or None
        Satellite pass and security parameters of the session that produced the key.
    consumed_at, purpose : str or None
        When and for what the block was consumed.
    meta : dict
        Any other metadata given to :meth:`KeyStore.add_key`.
    bits : uint8 array or None
        The key bits: set by :meth:`KeyStore.get` while the block is available, ``None`` in
        listings and after consumption (consumed key material is erased).
    check_value : str or None
        :func:`check_value` of the bits while the block is available.
    """

    key_id: str
    link: str
    sender: str
    n_bits: int
    state: str
    created: str
    pass_id: str | None = None
    eps_sec: float | None = None
    eps_cor: float | None = None
    consumed_at: str | None = None
    purpose: str | None = None
    meta: dict = field(default_factory=dict)
    bits: np.ndarray | None = field(default=None, repr=False, compare=False)
    check_value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metadata (never the key bits)."""
        return {"key_id": self.key_id, "link": self.link, "sender": self.sender,
                "n_bits": self.n_bits, "state": self.state, "created": self.created,
                "pass_id": self.pass_id, "eps_sec": self.eps_sec, "eps_cor": self.eps_cor,
                "consumed_at": self.consumed_at, "purpose": self.purpose, "meta": self.meta,
                "check_value": self.check_value}


_COLUMNS = ("key_id, link, sender, n_bits, state, created, pass_id, eps_sec, eps_cor, "
            "consumed_at, purpose, meta, bits")


def _record(row, *, with_bits: bool) -> KeyRecord:
    (key_id, link, sender, n_bits, state, created, pass_id, eps_sec, eps_cor, consumed_at,
     purpose, meta, blob) = row
    bits = _unpack(blob, n_bits) if with_bits and blob is not None else None
    kcv = hashlib.sha256(blob).hexdigest()[:8] if blob is not None else None
    return KeyRecord(key_id=key_id, link=link, sender=sender, n_bits=n_bits, state=state,
                     created=created, pass_id=pass_id, eps_sec=eps_sec, eps_cor=eps_cor,
                     consumed_at=consumed_at, purpose=purpose, meta=json.loads(meta),
                     bits=bits, check_value=kcv)


@dataclass(frozen=True)
class _NewKey:
    """A key checked and cut into rows, ready for :meth:`KeyStore._insert`."""

    link: str
    peer: str
    ids: list[str]
    rows: list[tuple]


def _private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 (missing folders 0700); False if it exists."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    try:
        for folder in reversed(missing):
            os.mkdir(folder, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise KeyStoreError(f"cannot create key store {path}: {exc.strerror or exc}") from None
    os.close(fd)
    return True


def _tighten(path: Path) -> None:
    """Remove group and other permissions from a store file and its journal files."""
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(OSError):
            mode = os.stat(name).st_mode
            if mode & 0o077:
                os.chmod(name, stat.S_IMODE(mode) & 0o700)


class KeyStore:
    """An SQLite key store (see the module documentation for the guarantees).

    Parameters
    ----------
    path : str or Path
        Database file. Several objects and processes may open the same file.
    party : str, optional
        The party the store belongs to. Needed to create a store; when opening one it must
        match the name stored.
    create : bool
        Create the file (and its schema) if it does not exist; with ``False`` a missing file
        is a :class:`~mozi.host.errors.KeyStoreError`.

    Raises
    ------
    KeyStoreError
        The file is missing (``create=False``) or cannot be created, no party is named for a
        new store, the store belongs to another party, or the file is not a key store of
        this version.

    Examples
    --------
    >>> store = KeyStore("moscow.db", party="moscow")                      # doctest: +SKIP
    >>> layout = key_layout(key.size, ("satellite", "moscow"))            # doctest: +SKIP
    >>> ids = store.add_key("sat-moscow", key, peer="satellite", layout=layout,
    ...                     key_ids=ids_from_the_satellite)               # doctest: +SKIP
    >>> blocks = store.reserve("sat-moscow", 1000)       # moscow's own blocks # doctest: +SKIP
    """

    def __init__(self, path, *, party: str | None = None, create: bool = True):
        self.path = Path(path)
        if party is not None:
            check_name("party", party)
        try:
            exists = self.path.is_file()
        except OSError as exc:                 # a name too long, a loop of links, …
            raise KeyStoreError(f"cannot open key store {str(self.path)[:200]}: "
                                f"{exc.strerror or exc}") from None
        if not exists:
            if not create:
                raise KeyStoreError(f"no key store at {self.path}")
            if party is None:
                raise KeyStoreError(f"no key store at {self.path} (creating one needs the "
                                    f"name of its party)")
            created = _private_file(self.path)
        else:
            created = False
            _tighten(self.path)
        try:
            self._open(party)
        except BaseException:
            if created:                   # leave no empty store behind
                for name in (str(self.path), f"{self.path}-wal", f"{self.path}-shm"):
                    with contextlib.suppress(OSError):
                        os.unlink(name)
            raise

    def _open(self, party: str | None) -> None:
        try:
            # one thread at a time, not necessarily the one that opened it (run_session runs
            # each party's half in its own thread)
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot open key store {self.path}: {exc}") from None
        try:
            # read before writing anything: a foreign or old file must stay as it is
            self._db.execute("PRAGMA busy_timeout = 30000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
            fresh = version == 0 and not tables
            if fresh or version == _SCHEMA_VERSION:
                self._configure(fresh, party)
        except (sqlite3.DatabaseError, KeyStoreError) as exc:
            self._db.close()
            raise KeyStoreError(f"{self.path} is not a usable key store: {exc}") from None
        if not fresh and version != _SCHEMA_VERSION:
            self._db.close()
            if version == 1:
                raise KeyStoreError(
                    f"{self.path} is a key store of Mozi 0.1 (schema version 1): its blocks "
                    f"have no sender, so they cannot be used without risking a two-time pad; "
                    f"it is left unchanged")
            raise KeyStoreError(f"{self.path} is not a Mozi key store "
                                f"(schema version {version}, expected {_SCHEMA_VERSION})")
        self.party: str = self._db.execute("SELECT party FROM store").fetchone()[0]
        if party is not None and party != self.party:
            self._db.close()
            raise KeyStoreError(f"key store {self.path} belongs to {self.party!r}, "
                                f"not {party!r}")
        self._checkpoint()      # a process killed after erasing key left it in the log

    # -- plumbing --------------------------------------------------------------------------

    def _configure(self, fresh: bool, party: str | None) -> None:
        """WAL, full sync and secure delete on this connection; a new store's schema."""
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA secure_delete = ON")
        if str(mode).lower() != "wal":
            raise KeyStoreError(f"cannot use WAL mode ({mode})")
        if fresh:
            if party is None:
                raise KeyStoreError("an empty store needs the name of its party")
            self._init_schema(party)
        if self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name = 'kms_keys'").fetchone() is None:
            with self._write():
                for statement in _SESSION_SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)

    def _init_schema(self, party: str) -> None:
        with self._write():
            if self._db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT INTO store (id, party, created) VALUES (1, ?, ?)",
                                 (party, _now()))
                self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _write(self, *, erases: bool = False):
        """A write transaction; ``erases=True`` checkpoints the log after the commit."""
        return _Transaction(self._db, self.path, self._checkpoint if erases else None)

    def _checkpoint(self) -> None:
        """Copy the log into the database file and truncate it (best effort)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, sql: str, args=()) -> builtins.list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self.path}: {exc}") from None

    # -- links -----------------------------------------------------------------------------

    def links(self) -> dict[str, str]:
        """Every link the store knows, with this party's peer on it."""
        return dict(self._read("SELECT link, peer FROM links ORDER BY link"))

    def peer(self, link: str) -> str | None:
        """This party's peer on ``link``, or None for a link the store does not know."""
        row = self._read("SELECT peer FROM links WHERE link = ?", (link,))
        return row[0][0] if row else None

    def _ensure_link(self, link: str, peer: str) -> None:
        """Inside a transaction: record ``link`` with ``peer``, or check the recorded one."""
        row = self._db.execute("SELECT peer FROM links WHERE link = ?", (link,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO links (link, peer, created) VALUES (?, ?, ?)",
                             (link, peer, _now()))
        elif row[0] != peer:
            raise KeyStoreError(f"link {link!r} of {self.party!r} is shared with {row[0]!r}, "
                                f"not {peer!r}")

    # -- writing ---------------------------------------------------------------------------

    def _prepare(self, link: str, key_bits, *, peer: str, layout, key_ids, meta) -> _NewKey:
        """Check a new key and cut it into rows (no database access)."""
        check_name("link", link)
        check_name("party", peer)
        if peer == self.party:
            raise KeyStoreError(f"{self.party!r} cannot share a link with itself")
        bits = _as_bits(key_bits)
        layout = [(str(s), int(n)) for s, n in layout]
        if not layout or any(n < 1 for _, n in layout):
            raise ValueError("a key layout needs at least one block, each of at least 1 bit")
        if sum(n for _, n in layout) != bits.size:
            raise ValueError(f"the layout covers {sum(n for _, n in layout)} bits, the key "
                             f"has {bits.size}")
        for sender, _ in layout:
            if sender not in (self.party, peer):
                raise KeyStoreError(f"block sender {sender!r} is neither {self.party!r} nor "
                                    f"the peer {peer!r}")
        if key_ids is None:
            ids = new_key_ids(len(layout))
        else:
            ids = [_canonical_id(k) for k in key_ids]
            if len(ids) != len(layout):
                raise KeyStoreError(f"{len(ids)} key IDs given for a key of {len(layout)} "
                                    f"block(s)")
            if len(set(ids)) != len(ids):
                raise KeyStoreError("the same key ID is given twice")
        extra = dict(meta or {})
        pass_id = extra.pop("pass_id", extra.pop("pass", None))
        eps = {}
        for name in ("eps_sec", "eps_cor"):
            value = extra.pop(name, None)
            if value is not None:
                value = float(value)
                if not 0.0 < value < 1.0:
                    raise ValueError(f"{name} must lie in (0, 1), not {value!r}")
            eps[name] = value
        try:
            meta_json = json.dumps(extra, sort_keys=True, default=_json_default,
                                   allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
        created = _now()
        rows, start = [], 0
        for kid, (sender, size) in zip(ids, layout, strict=True):
            blob = np.packbits(bits[start:start + size]).tobytes()
            rows.append((kid, link, sender, size, blob,
                         None if pass_id is None else str(pass_id), eps["eps_sec"],
                         eps["eps_cor"], created, "available", meta_json))
            start += size
        return _NewKey(link, peer, ids, rows)

    def _insert(self, new: _NewKey) -> None:
        """Inside a transaction: store a prepared key (refusing IDs already present)."""
        self._ensure_link(new.link, new.peer)
        clash = self._db.execute(
            f"SELECT key_id FROM keys WHERE key_id IN ({','.join('?' * len(new.ids))})",
            new.ids).fetchone()
        if clash:
            raise KeyStoreError(f"key ID {clash[0]} is already in {self.path}")
        self._db.executemany(
            "INSERT INTO keys (key_id, link, sender, n_bits, bits, pass_id, eps_sec, eps_cor, "
            "created, state, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", new.rows)

    def add_key(self, link: str, key_bits, *, peer: str, layout: Sequence[tuple[str, int]],
                key_ids: Sequence[str] | None = None, meta: dict | None = None
                ) -> builtins.list[str]:
        """Store a final key, cut into blocks by ``layout``, in one transaction.

        Parameters
        ----------
        link : str
            Link name, e.g. ``"sat-moscow"``; both ends use the same name.
        key_bits : uint8 bit array
            The key, ``>= 1`` bit.
        peer : str
            The other party of the link (recorded with the first key of a link, checked
            afterwards).
        layout : sequence of (sender, n_bits)
            The blocks in key order (:func:`key_layout`); each sender is this store's party
            or ``peer``. The peer stores the same key with the same layout.
        key_ids : sequence of str, optional
            One UUID per block (:func:`new_key_ids` draws them). The peer stores the same key
            with the same list. Default: fresh random UUIDs.
        meta : dict, optional
            Metadata. ``pass_id`` (or ``pass``), ``eps_sec`` and ``eps_cor`` are stored in
            their own columns; everything else must be JSON-serialisable and is kept as is.

        Returns
        -------
        key_ids : list of str
            The IDs of the blocks, in key order.

        Raises
        ------
        KeyStoreError
            An ID is not a UUID, appears twice or is already in the store; the number of IDs
            does not match the layout; a sender or the peer is not a party of the link.
            Nothing is stored then.
        ValueError
            ``key_bits`` is not a non-empty bit array, the layout does not cover it, or bad
            ε values.
        """
        new = self._prepare(link, key_bits, peer=peer, layout=layout, key_ids=key_ids,
                            meta=meta)
        with self._write():
            self._insert(new)
        return new.ids

    def _take(self, ids: Sequence[str], *, sender: str | None, purpose: str | None
              ) -> builtins.list[tuple[str, str, np.ndarray]]:
        """Inside a transaction: consume blocks by ID → (key_id, link, bits) in ID order.

        ``sender`` None takes the blocks whoever may send with them (discarding).
        """
        when = _now()
        out = []
        for kid in ids:
            row = self._db.execute("SELECT link, sender, n_bits, bits, state FROM keys "
                                   "WHERE key_id = ?", (kid,)).fetchone()
            if row is None:
                raise KeyStoreError(f"unknown key ID {kid} in {self.path}")
            link, owner, n_bits, blob, state = row
            if state != "available" or blob is None:
                raise KeyStoreError(f"key {kid} already used")
            if sender is not None and owner != sender:
                raise KeyStoreError(f"key {kid} is for messages from {owner!r}, not from "
                                    f"{sender!r}")
            cur = self._db.execute(
                "UPDATE keys SET state = 'consumed', bits = NULL, consumed_at = ?, "
                "purpose = ? WHERE key_id = ? AND state = 'available'", (when, purpose, kid))
            if cur.rowcount != 1:  # cannot happen under the write lock; never hand out twice
                raise KeyStoreError(f"key {kid} already used")
            out.append((kid, link, _unpack(blob, n_bits)))
        return out

    def _check_received(self, key_ids: Sequence[str], sender: str) -> builtins.list[str]:
        ids = [_canonical_id(k) for k in key_ids]
        if not ids:
            raise KeyStoreError("no key IDs given")
        if len(set(ids)) != len(ids):
            raise KeyStoreError("the same key ID is given twice")
        check_name("party", sender)
        if sender == self.party:
            raise KeyStoreError(f"{self.party!r} received a message naming its own key "
                                f"blocks (reflected?); a party only receives with its peer's")
        return ids

    def consume_many(self, key_ids: Sequence[str], *, sender: str,
                     purpose: str | None = None) -> builtins.list[np.ndarray]:
        """The receiver's side: consume the blocks a message from ``sender`` names.

        All or nothing, in one transaction; every block must be available and belong to
        ``sender``, which must be the peer (a party never receives with its own blocks).

        Parameters
        ----------
        key_ids : sequence of str
        sender : str
            The party the message comes from.
        purpose : str, optional
            Recorded with the blocks (e.g. ``"decrypt image.png"``).

        Returns
        -------
        bits : list of uint8 bit arrays, in the order of ``key_ids``.

        Raises
        ------
        KeyStoreError
            Unknown ID, ``"key … already used"``, a block of another sender, or
            ``sender`` is this store's own party; nothing is consumed then.
        """
        ids = self._check_received(key_ids, sender)
        with self._write(erases=True):
            return [bits for _, _, bits in self._take(ids, sender=sender, purpose=purpose)]

    def consume(self, key_id: str, *, sender: str, purpose: str | None = None) -> np.ndarray:
        """:meth:`consume_many` of one block."""
        return self.consume_many([key_id], sender=sender, purpose=purpose)[0]

    def discard(self, key_ids: Sequence[str], *, reason: str) -> None:
        """Erase blocks whoever their sender (e.g. a key the peer could not store)."""
        ids = [_canonical_id(k) for k in key_ids]
        with self._write(erases=True):
            self._take(ids, sender=None, purpose=f"discarded: {reason}")

    def derive_key(self, key_ids: Sequence[str], *, sender: str, n_bits: int,
                   derive: Callable[[np.ndarray], np.ndarray], link: str, peer: str,
                   layout: Sequence[tuple[str, int]], new_ids: Sequence[str],
                   meta: dict | None = None, purpose: str | None = None) -> builtins.list[str]:
        """Consume received blocks and store a key computed from them, in one transaction.

        The trusted relay's station side: the blocks ``key_ids`` (from ``sender``, at least
        ``n_bits`` bits together) are consumed, ``derive`` maps their first ``n_bits`` bits to
        the new key, which is stored on ``link`` (with ``peer``, ``layout``, ``new_ids``,
        ``meta`` as in :meth:`add_key`). Any failure — a block unknown, used or of another
        sender, too few bits, an ID clash — changes nothing.

        Returns
        -------
        key_ids : list of str
            ``new_ids``.
        """
        ids = self._check_received(key_ids, sender)
        with self._write(erases=True):
            taken = self._take(ids, sender=sender, purpose=purpose)
            links = {link_ for _, link_, _ in taken}
            if len(links) != 1:
                raise KeyStoreError(f"the blocks belong to {len(links)} links, not one")
            bits = np.concatenate([b for _, _, b in taken])
            if bits.size < n_bits:
                raise KeyStoreError(f"the blocks hold {bits.size} bits, {n_bits} announced")
            new = self._prepare(link, derive(bits[:n_bits]), peer=peer, layout=layout,
                                key_ids=new_ids, meta=meta)
            self._insert(new)
        return new.ids

    def reserve(self, link: str, n_bits: int, *,
                purpose: str | None = None) -> builtins.list[tuple[str, np.ndarray]]:
        """The sender's side: consume this party's oldest blocks of a link for ``n_bits`` bits.

        Only blocks whose sender is this store's party are taken. Whole blocks are handed
        out; bits of the last block beyond ``n_bits`` are the caller's to use or waste (a
        consumed block is never handed out again).

        Parameters
        ----------
        link : str
        n_bits : int
            Bits wanted, ``>= 1``.
        purpose : str, optional
            Recorded with each block.

        Returns
        -------
        blocks : list of (key_id, bits)
            Oldest first; ``sum(len(bits)) >= n_bits``.

        Raises
        ------
        KeyStoreError
            Fewer than ``n_bits`` bits this party may send with on the link (then nothing is
            consumed).
        """
        return self.reserve_many({link: n_bits}, purpose=purpose)[link]

    def reserve_many(self, requests: Mapping[str, int], *, purpose: str | None = None,
                     outbox: Callable | None = None
                     ) -> dict[str, builtins.list[tuple[str, np.ndarray]]]:
        """:meth:`reserve` on several links in one transaction (all or nothing).

        Parameters
        ----------
        requests : mapping of link to n_bits
        purpose : str, optional
        outbox : callable, optional
            ``outbox(reserved) -> (relay_id, [(station, link, message), …])``, called inside
            the transaction: its messages enter the relay outbox (:meth:`outbox_put`) in the
            same commit as the reserve, so a crash cannot consume the key and lose what was
            to be sent with it.

        Returns
        -------
        dict of link to list of (key_id, bits)

        Raises
        ------
        KeyStoreError
            One link has too little key; then nothing is consumed on any link.
        """
        wanted = {str(link): int(n) for link, n in requests.items()}
        for link, n in wanted.items():
            if n < 1:
                raise ValueError(f"n_bits must be positive, not {n!r} (link {link!r})")
        out: dict[str, builtins.list[tuple[str, np.ndarray]]] = {}
        with self._write(erases=True):
            for link, n_bits in wanted.items():
                chosen, total = [], 0
                rows = self._db.execute(
                    "SELECT key_id, n_bits FROM keys WHERE link = ? AND sender = ? "
                    "AND state = 'available' ORDER BY seq", (link, self.party)).fetchall()
                for kid, size in rows:
                    chosen.append(kid)
                    total += size
                    if total >= n_bits:
                        break
                if total < n_bits:
                    others = self._db.execute(
                        "SELECT COALESCE(SUM(n_bits), 0) FROM keys WHERE link = ? "
                        "AND sender != ? AND state = 'available'",
                        (link, self.party)).fetchone()[0]
                    held = f"; {others} more are the peer's to send with" if others else ""
                    raise KeyStoreError(f"not enough key on link {link!r} for {self.party!r} "
                                        f"to send with: {n_bits} bits needed, {total} "
                                        f"available{held}")
                taken = self._take(chosen, sender=self.party, purpose=purpose)
                out[link] = [(kid, bits) for kid, _, bits in taken]
            if outbox is not None:
                self._outbox_insert(*outbox(out))
        return out

    # -- reading ---------------------------------------------------------------------------

    def get(self, key_id: str) -> KeyRecord:
        """A block's record, with its bits while it is available; consumes nothing.

        Raises
        ------
        KeyStoreError
            Unknown key ID.
        """
        kid = _canonical_id(key_id)
        rows = self._read(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (kid,))
        if not rows:
            raise KeyStoreError(f"unknown key ID {kid} in {self.path}")
        return _record(rows[0], with_bits=True)

    def list(self, link: str | None = None, *, state: str | None = None,
             sender: str | None = None) -> builtins.list[KeyRecord]:
        """Records of the stored blocks (without key bits), oldest first.

        Parameters
        ----------
        link : str, optional
            Only this link.
        state : {"available", "consumed"}, optional
            Only blocks in this state.
        sender : str, optional
            Only blocks this party may send with.
        """
        if state is not None and state not in _STATES:
            raise ValueError(f"state must be one of {_STATES}, not {state!r}")
        where, args = [], []
        for column, value in (("link", link), ("state", state), ("sender", sender)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {_COLUMNS} FROM keys"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_record(r, with_bits=False) for r in self._read(sql + " ORDER BY seq", args)]

    def available_bits(self, link: str, *, sender: str | None = None) -> int:
        """Total bits of the available blocks of a link (of one sender if given)."""
        sql = "SELECT COALESCE(SUM(n_bits), 0) FROM keys WHERE link = ? AND state = 'available'"
        args: tuple = (link,)
        if sender is not None:
            sql += " AND sender = ?"
            args += (sender,)
        return int(self._read(sql, args)[0][0])

    def sendable_bits(self, link: str) -> int:
        """Bits of the available blocks of a link that this party may send with."""
        return self.available_bits(link, sender=self.party)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per link (sorted by name): ``peer``, ``available_blocks``, ``available_bits``,
        ``consumed_blocks``, ``consumed_bits``, and of the available bits ``send_bits`` (this
        party's to send with) and ``receive_bits`` (the peer's)."""
        out: dict[str, dict[str, Any]] = {}
        for link, peer in self.links().items():
            out[link] = {"peer": peer, "available_blocks": 0, "available_bits": 0,
                         "consumed_blocks": 0, "consumed_bits": 0, "send_bits": 0,
                         "receive_bits": 0}
        for link, state, sender, count, bits in self._read(
                "SELECT link, state, sender, COUNT(*), SUM(n_bits) FROM keys "
                "GROUP BY link, state, sender"):
            entry = out[link]
            entry[f"{state}_blocks"] += int(count)
            entry[f"{state}_bits"] += int(bits)
            if state == "available":
                entry["send_bits" if sender == self.party else "receive_bits"] += int(bits)
        return out

    # -- authentication keys -----------------------------------------------------------------

    def init_auth_key(self, link: str, *, peer: str, role: int, key_bits,
                      tag_bits: int) -> None:
        """Install a link's pre-shared authentication key (:mod:`mozi.host.crypto.auth`).

        Parameters
        ----------
        link, peer : str
        role : {0, 1}
            The direction this party sends in (the peer gets the other one, and the same
            ``key_bits``).
        key_bits : uint8 bit array
            The pre-shared key (:func:`mozi.host.crypto.auth.split_auth_key` cuts it).
        tag_bits : int

        Raises
        ------
        KeyStoreError
            The link has an authentication key already, or belongs to another peer.
        """
        check_name("link", link)
        check_name("party", peer)
        if peer == self.party:
            raise KeyStoreError(f"{self.party!r} cannot share a link with itself")
        if role not in (0, 1):
            raise ValueError(f"role must be 0 or 1, not {role!r}")
        t = check_tag_bits(tag_bits)
        h, p0, p1 = split_auth_key(key_bits)
        with self._write():
            self._ensure_link(link, peer)
            if self._db.execute("SELECT 1 FROM auth_keys WHERE link = ?", (link,)).fetchone():
                raise KeyStoreError(f"link {link!r} has an authentication key already")
            self._db.execute(
                "INSERT INTO auth_keys (link, role, tag_bits, hash_key, next_seq0, next_seq1, "
                "pads0, pads0_bits, pads1, pads1_bits, target0, target1, used_bits, "
                "added_bits, failures, version, created) "
                "VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?, 0, ?, 0, 0, ?)",
                (link, role, t, h.to_bytes(16, "big"), np.packbits(p0).tobytes(), p0.size,
                 np.packbits(p1).tobytes(), p1.size, p0.size, p1.size,
                 int(np.asarray(key_bits).size), _now()))

    def _remove_auth_key(self, link: str, *, forget_link: bool) -> None:
        """Undo :meth:`init_auth_key` (and the link record it made, if ``forget_link``)."""
        with self._write(erases=True):
            self._db.execute("DELETE FROM auth_keys WHERE link = ?", (link,))
            if forget_link:
                self._db.execute("DELETE FROM links WHERE link = ? AND NOT EXISTS "
                                 "(SELECT 1 FROM keys WHERE keys.link = links.link)", (link,))

    def has_auth_key(self, link: str) -> bool:
        """Whether ``link`` has an authentication key in this store."""
        return bool(self._read("SELECT 1 FROM auth_keys WHERE link = ?", (link,)))

    def auth_key(self, link: str) -> StoredAuthKeyPool:
        """This party's end of ``link``'s authentication key, persisted in this store.

        Raises
        ------
        KeyStoreError
            The link has no authentication key here.
        """
        rows = self._read("SELECT role, tag_bits, hash_key, next_seq0, next_seq1, pads0, "
                          "pads0_bits, pads1, pads1_bits, target0, target1, version "
                          "FROM auth_keys WHERE link = ?", (link,))
        if not rows:
            raise KeyStoreError(f"key store {self.path} has no authentication key for link "
                                f"{link!r}; create a matching pair with `mozi link init`")
        (role, t, h, n0, n1, b0, k0, b1, k1, g0, g1, version) = rows[0]
        return StoredAuthKeyPool(self, link, version, hash_key=int.from_bytes(h, "big"),
                                 pads=(_unpack(b0, k0), _unpack(b1, k1)), role=role,
                                 tag_bits=t, next_seq=(n0, n1), target_bits=(g0, g1))

    def auth_status(self) -> dict[str, dict[str, Any]]:
        """Per link with an authentication key: ``peer``, ``role``, ``tag_bits``, the next
        sequence number and unused pad bits of each direction (``next_seq``, ``pad_bits``,
        lists of two), the refill ``target_bits``, and the lifetime ``used_bits``,
        ``added_bits`` and ``failures``."""
        out = {}
        for (link, peer, role, t, n0, n1, k0, k1, g0, g1, used, added,
             failures) in self._read(
                "SELECT a.link, l.peer, role, tag_bits, next_seq0, next_seq1, pads0_bits, "
                "pads1_bits, target0, target1, used_bits, added_bits, failures "
                "FROM auth_keys a JOIN links l ON a.link = l.link ORDER BY a.link"):
            out[link] = {"peer": peer, "role": role, "tag_bits": t, "next_seq": [n0, n1],
                         "pad_bits": [k0, k1], "target_bits": [g0, g1], "used_bits": used,
                         "added_bits": added, "failures": failures}
        return out

    def commit_session(self, link: str, *, peer: str, pool: StoredAuthKeyPool,
                       refill: tuple[np.ndarray, np.ndarray], key_bits=None,
                       layout: Sequence[tuple[str, int]] = (),
                       key_ids: Sequence[str] | None = None,
                       meta: dict | None = None,
                       session_id: str | None = None) -> builtins.list[str]:
        """Store a session's key and replenish the link's authentication key, atomically.

        Parameters
        ----------
        link, peer : str
        pool : StoredAuthKeyPool
            This store's pool of ``link`` (the one the session authenticated with).
        refill : pair of uint8 bit arrays
            Fresh key bits appended to the pad streams of direction 0 and 1.
        key_bits, layout, key_ids, meta
            The key to store, as in :meth:`add_key`; ``key_bits`` None (or empty) when the
            whole key went into the refill.
        session_id : str, optional
            The session, recorded ``committed`` in the same transaction.

        Returns
        -------
        key_ids : list of str
            Empty when no key was stored.
        """
        if pool.store is not self or pool.link != link:
            raise ValueError("the pool must be this store's pool of the link")
        new = None
        if key_bits is not None and np.asarray(key_bits).size:
            new = self._prepare(link, key_bits, peer=peer, layout=layout, key_ids=key_ids,
                                meta=meta)
        refill = tuple(np.asarray(b, np.uint8) for b in refill)
        with self._write():
            if new is not None:
                self._insert(new)
            pool._refill_in_transaction(refill)
            if session_id is not None:
                self._set_session(_canonical_id(session_id), "committed", link=link)
        pool._apply_refill(refill)
        return [] if new is None else new.ids

    # -- sessions --------------------------------------------------------------------------
    #
    # A session of two nodes ends in two steps so that a crash of either never leaves a key
    # at one end only: the receiving end *stages* the key (stored, not usable), the sending
    # end then *commits* it (usable), and the staged copy is committed when the sender says
    # it committed — at the session's end, or at the start of the next session on the link
    # if the message never arrived (:meth:`resolve_staged`).

    def _set_session(self, session_id: str, state: str, *, link: str | None = None,
                     reason: str | None = None) -> None:
        """Inside a transaction: move a session to ``state`` (recording it if unknown)."""
        now = _now()
        cur = self._db.execute("UPDATE sessions SET state = ?, reason = ?, updated = ? "
                               "WHERE session_id = ?", (state, reason, now, session_id))
        if cur.rowcount == 0:
            if link is None:
                raise KeyStoreError(f"unknown session {session_id}")
            self._db.execute("INSERT INTO sessions (session_id, link, pass_id, state, reason, "
                             "created, updated) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                             (session_id, link, state, reason, now, now))

    def begin_session(self, session_id: str, link: str, *, pass_id: str | None = None,
                      once_per_pass: bool = False) -> None:
        """Record that a session of ``link`` starts (state ``started``).

        Parameters
        ----------
        session_id : str
            The session's UUID (both ends use the same).
        pass_id : str, optional
            The satellite pass whose detections the session distils.
        once_per_pass : bool
            Refuse a pass that an earlier session of the link used, whatever its outcome: a
            pass's detections are post-processed once, because a second run would disclose
            more about the same raw key than its own accounting counts.

        Raises
        ------
        KeyStoreError
            The session ID exists, or the pass was used (``once_per_pass``).

        A session of the link still ``started`` here was cut by a crash (a link runs one
        session at a time): it is marked ``aborted``.
        """
        sid = _canonical_id(session_id)
        check_name("link", link)
        with self._write():
            if self._db.execute("SELECT 1 FROM sessions WHERE session_id = ?",
                                (sid,)).fetchone():
                raise KeyStoreError(f"session {sid} exists already in {self.path}")
            if once_per_pass and pass_id is not None:
                row = self._db.execute("SELECT session_id, state FROM sessions WHERE link = ? "
                                       "AND pass_id = ?", (link, str(pass_id))).fetchone()
                if row is not None:
                    raise KeyStoreError(f"pass {pass_id!r} was post-processed already on link "
                                        f"{link!r} (session {row[0]}, {row[1]}); a pass's "
                                        f"detections are never used twice")
            now = _now()
            # sessions of a link run one at a time: one still "started" was cut by a crash
            self._db.execute("UPDATE sessions SET state = 'aborted', reason = ?, updated = ? "
                             "WHERE link = ? AND state = 'started'",
                             ("interrupted: the node stopped during the session", now, link))
            self._db.execute("INSERT INTO sessions (session_id, link, pass_id, state, reason, "
                             "created, updated) VALUES (?, ?, ?, 'started', NULL, ?, ?)",
                             (sid, link, None if pass_id is None else str(pass_id), now, now))

    def abort_session(self, session_id: str, *, reason: str) -> None:
        """Mark a started session ``aborted`` (a staged or committed one is left as it is)."""
        sid = _canonical_id(session_id)
        with self._write():
            self._db.execute("UPDATE sessions SET state = 'aborted', reason = ?, updated = ? "
                             "WHERE session_id = ? AND state = 'started'",
                             (str(reason)[:500], _now(), sid))

    def session_state(self, session_id: str) -> str | None:
        """``started``, ``staged``, ``committed``, ``aborted``, or None for an unknown ID."""
        rows = self._read("SELECT state FROM sessions WHERE session_id = ?",
                          (_canonical_id(session_id),))
        return rows[0][0] if rows else None

    def sessions(self, link: str | None = None) -> builtins.list[dict[str, Any]]:
        """Every recorded session (of ``link``), oldest first."""
        sql = "SELECT session_id, link, pass_id, state, reason, created, updated FROM sessions"
        rows = self._read(sql + (" WHERE link = ?" if link else "") + " ORDER BY created",
                          (link,) if link else ())
        names = ("session_id", "link", "pass_id", "state", "reason", "created", "updated")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def staged_sessions(self, link: str) -> builtins.list[str]:
        """IDs of the sessions of ``link`` whose key waits here for the peer's commit."""
        return [r[0] for r in self._read("SELECT session_id FROM sessions WHERE link = ? AND "
                                         "state = 'staged' ORDER BY created", (link,))]

    def stage_session(self, link: str, *, peer: str, session_id: str,
                      refill: tuple[np.ndarray, np.ndarray], key_bits=None,
                      layout: Sequence[tuple[str, int]] = (),
                      key_ids: Sequence[str] | None = None,
                      meta: dict | None = None) -> builtins.list[str]:
        """Store a session's key and refill *staged*: kept, not usable, not in the pool.

        Arguments as in :meth:`commit_session`; the session must be ``started``.
        :meth:`resolve_staged` later commits or drops it.
        """
        sid = _canonical_id(session_id)
        new = None
        if key_bits is not None and np.asarray(key_bits).size:
            new = self._prepare(link, key_bits, peer=peer, layout=layout, key_ids=key_ids,
                                meta=meta)
        refill = tuple(_as_bits(b) if np.asarray(b).size else np.zeros(0, np.uint8)
                       for b in refill)
        with self._write():
            row = self._db.execute("SELECT link, state FROM sessions WHERE session_id = ?",
                                   (sid,)).fetchone()
            if row is None or row[0] != link or row[1] != "started":
                raise KeyStoreError(f"session {sid} of link {link!r} is not running here")
            if new is not None:
                marks = ",".join("?" * len(new.ids))
                clash = self._db.execute(
                    f"SELECT key_id FROM keys WHERE key_id IN ({marks}) UNION "
                    f"SELECT key_id FROM staged_keys WHERE key_id IN ({marks})",
                    new.ids + new.ids).fetchone()
                if clash:
                    raise KeyStoreError(f"key ID {clash[0]} is already in {self.path}")
            self._db.execute(
                "INSERT INTO staged (session_id, peer, refill0, refill0_bits, refill1, "
                "refill1_bits) VALUES (?, ?, ?, ?, ?, ?)",
                (sid, peer, np.packbits(refill[0]).tobytes(), int(refill[0].size),
                 np.packbits(refill[1]).tobytes(), int(refill[1].size)))
            if new is not None:
                self._db.executemany(
                    "INSERT INTO staged_keys (session_id, pos, key_id, link, sender, n_bits, "
                    "bits, pass_id, eps_sec, eps_cor, created, meta) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(sid, pos, *r[:9], r[10]) for pos, r in enumerate(new.rows)])
            self._set_session(sid, "staged")
        return [] if new is None else new.ids

    # -- key delivery (ETSI GS QKD 014) -----------------------------------------------------
    #
    # A KME hands out keys carved from whole blocks of a link: a block is moved from ``keys``
    # (consumed there, purpose "etsi-014") into ``kms_blocks`` when first needed; its first
    # ``reserve`` bytes stay secret to the two KMEs (they authenticate key IDs, see
    # :mod:`mozi.host.kms.keyid`), the rest is handed out in byte ranges that are zeroed as
    # they go. ``kms_keys`` records every key handed out here, so none goes out twice.

    def kms_capacity(self, link: str, *, size: int, reserve: int) -> tuple[int, int]:
        """(keys of ``size`` bytes this party could hand out on ``link``, largest key size in
        bytes) from the blocks it may send with."""
        per_key, largest = 0, 0
        rows = self._read("SELECT n_bytes - cursor FROM kms_blocks WHERE link = ? AND "
                          "sender = ?", (link, self.party))
        rows += self._read("SELECT n_bits / 8 - ? FROM keys WHERE link = ? AND sender = ? "
                           "AND state = 'available'", (reserve, link, self.party))
        for (free,) in rows:
            free = min(int(free), _KMS_MAX_BLOCK_BYTES - reserve)
            per_key += max(free, 0) // size
            largest = max(largest, free)
        return per_key, largest

    def _kms_move(self, key_id: str, reserve: int) -> tuple[str, bytes, int, int]:
        """Inside a transaction: move a block from ``keys`` to ``kms_blocks``."""
        ((kid, link, bits),) = self._take([key_id], sender=None, purpose="etsi-014")
        sender = self._db.execute("SELECT sender FROM keys WHERE key_id = ?",
                                  (kid,)).fetchone()[0]
        n = min(bits.size // 8, _KMS_MAX_BLOCK_BYTES)
        blob = np.packbits(bits[:8 * n]).tobytes()
        self._db.execute("INSERT INTO kms_blocks (block_id, link, sender, n_bytes, bits, "
                         "cursor, moved) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (kid, link, sender, n, blob, reserve, _now()))
        return kid, blob, reserve, n

    def kms_issue(self, link: str, *, size: int, number: int, reserve: int, master: str,
                  slave: str, make_id: Callable[[str, bytes, int, int], str]
                  ) -> builtins.list[tuple[str, bytes]]:
        """``number`` keys of ``size`` bytes for ``master`` to use with ``slave``, from the
        blocks this party may send with on ``link``; all or nothing, in one transaction.

        ``make_id(block_id, reserved_bytes, offset, size)`` names each key.

        Raises
        ------
        KeyRequestRefused
            Not enough key of this party's on the link.
        """
        out = []
        with self._write(erases=True):
            for _ in range(int(number)):
                row = self._db.execute(
                    "SELECT block_id, bits, cursor, n_bytes FROM kms_blocks WHERE link = ? AND "
                    "sender = ? AND n_bytes - cursor >= ? ORDER BY moved, block_id LIMIT 1",
                    (link, self.party, size)).fetchone()
                if row is None:
                    fits = [kid for kid, n_bits in self._db.execute(
                        "SELECT key_id, n_bits FROM keys WHERE link = ? AND sender = ? AND "
                        "state = 'available' ORDER BY seq", (link, self.party))
                        if min(n_bits // 8, _KMS_MAX_BLOCK_BYTES) - reserve >= size]
                    if not fits:
                        raise KeyRequestRefused(
                            f"not enough key on link {link!r}: {number} keys of {8 * size} "
                            f"bits asked, fewer stored", status=400)
                    row = self._kms_move(fits[0], reserve)
                block_id, blob, cursor, _ = row
                blob = bytearray(blob)
                key = bytes(blob[cursor:cursor + size])
                blob[cursor:cursor + size] = bytes(size)
                key_id = make_id(block_id, bytes(blob[:reserve]), cursor, size)
                self._db.execute("UPDATE kms_blocks SET bits = ?, cursor = ? WHERE block_id = ?",
                                 (bytes(blob), cursor + size, block_id))
                self._db.execute("INSERT INTO kms_keys (key_id, block_id, offset, size, master, "
                                 "slave, side, at) VALUES (?, ?, ?, ?, ?, ?, 'enc', ?)",
                                 (key_id, block_id, cursor, size, master, slave, _now()))
                out.append((key_id, key))
        return out

    def kms_fetch(self, link: str, requests: Sequence[tuple[str, str, int, int]], *,
                  peer: str, reserve: int, master: str, slave: str,
                  check_id: Callable[[str, str, bytes], bool]
                  ) -> builtins.list[tuple[str, bytes]]:
        """The keys ``master`` got from the peer KME (``peer``'s blocks on ``link``) for
        ``slave``, each once; all or nothing, in one transaction.

        ``requests``: (key_id, block ID prefix, offset, size) per key;
        ``check_id(key_id, block_id, reserved_bytes)`` says whether the peer KME issued
        ``key_id`` from that block for this master and slave.

        Raises
        ------
        KeyRequestRefused
            No block of the peer's matches, the key ID was not issued for this pair, or the
            key was handed out here already.
        """
        out = []
        with self._write(erases=True):
            for key_id, prefix, offset, size in requests:
                if self._db.execute("SELECT 1 FROM kms_keys WHERE key_id = ?",
                                    (key_id,)).fetchone():
                    raise KeyRequestRefused(f"key {key_id} was handed out already", status=400)
                found = [r for r in self._db.execute(
                    "SELECT block_id, bits, n_bytes FROM kms_blocks WHERE link = ? AND "
                    "sender = ? AND substr(block_id, 1, 13) = ?", (link, peer, prefix))]
                for (kid,) in self._db.execute(
                        "SELECT key_id FROM keys WHERE link = ? AND sender = ? AND state = "
                        "'available' AND substr(key_id, 1, 13) = ?", (link, peer, prefix)
                        ).fetchall():
                    kid, blob, _, n = self._kms_move(kid, reserve)
                    found.append((kid, blob, n))
                if not found:
                    raise KeyRequestRefused(f"unknown key_ID {key_id}", status=400)
                match = [r for r in found if check_id(key_id, r[0], bytes(r[1][:reserve]))]
                if not match:
                    raise KeyRequestRefused(f"key_ID {key_id} was not issued for master "
                                       f"{master!r} and slave {slave!r}", status=401)
                block_id, blob, n = match[0]
                blob = bytearray(blob)
                if offset < reserve or offset + size > n or self._db.execute(
                        "SELECT 1 FROM kms_keys WHERE block_id = ? AND offset < ? AND "
                        "offset + size > ?", (block_id, offset + size, offset)).fetchone():
                    raise KeyRequestRefused(f"key {key_id} overlaps key handed out already",
                                            status=400)
                key = bytes(blob[offset:offset + size])
                blob[offset:offset + size] = bytes(size)
                self._db.execute("UPDATE kms_blocks SET bits = ? WHERE block_id = ?",
                                 (bytes(blob), block_id))
                self._db.execute("INSERT INTO kms_keys (key_id, block_id, offset, size, master, "
                                 "slave, side, at) VALUES (?, ?, ?, ?, ?, ?, 'dec', ?)",
                                 (key_id, block_id, offset, size, master, slave, _now()))
                out.append((key_id, key))
        return out

    def kms_handed_out(self) -> builtins.list[tuple[str, str, str, str, int]]:
        """Every key this KME handed out: (key_id, side, master, slave, size in bytes)."""
        return self._read("SELECT key_id, side, master, slave, size FROM kms_keys "
                          "ORDER BY at, key_id")

    # -- the relay's outbox ----------------------------------------------------------------

    def outbox_put(self, relay_id: str, messages: Sequence[tuple[str, str, bytes]]) -> None:
        """Keep a relay announcement for each station until it confirms it (``messages``:
        station, link, announcement bytes), so a relay interrupted by a crash is finished
        by sending them again."""
        with self._write():
            self._outbox_insert(relay_id, messages)

    def _outbox_insert(self, relay_id: str, messages) -> None:
        now = _now()
        self._db.executemany(
            "INSERT INTO relay_outbox (relay_id, station, link, message, created) "
            "VALUES (?, ?, ?, ?, ?)",
            [(relay_id, st, link, bytes(msg), now) for st, link, msg in messages])

    def outbox(self) -> builtins.list[tuple[str, str, str, bytes]]:
        """Unconfirmed relay announcements: (relay_id, station, link, message), oldest first."""
        return [(r[0], r[1], r[2], bytes(r[3])) for r in self._read(
            "SELECT relay_id, station, link, message FROM relay_outbox ORDER BY created, "
            "relay_id, station")]

    def outbox_done(self, relay_id: str, station: str) -> None:
        """The station confirmed the announcement: forget it."""
        with self._write():
            self._db.execute("DELETE FROM relay_outbox WHERE relay_id = ? AND station = ?",
                             (relay_id, station))

    def resolve_staged(self, session_id: str, *, committed: bool,
                       pool: StoredAuthKeyPool) -> builtins.list[str]:
        """Commit (the peer committed) or drop (it never did) a staged session, atomically.

        Committing makes the key usable and appends the refill to ``pool`` (this store's pool
        of the session's link); dropping erases both.

        Returns
        -------
        key_ids : list of str
            The blocks committed (empty when dropped).
        """
        sid = _canonical_id(session_id)
        with self._write(erases=True):
            row = self._db.execute(
                "SELECT s.link, g.peer, g.refill0, g.refill0_bits, g.refill1, g.refill1_bits "
                "FROM sessions s JOIN staged g ON g.session_id = s.session_id "
                "WHERE s.session_id = ? AND s.state = 'staged'", (sid,)).fetchone()
            if row is None:
                raise KeyStoreError(f"session {sid} has nothing staged in {self.path}")
            link, peer, b0, n0, b1, n1 = row
            if pool.store is not self or pool.link != link:
                raise ValueError("the pool must be this store's pool of the session's link")
            ids = [r[0] for r in self._db.execute(
                "SELECT key_id FROM staged_keys WHERE session_id = ? ORDER BY pos", (sid,))]
            refill = (_unpack(b0, n0), _unpack(b1, n1))
            if committed:
                if ids:
                    self._ensure_link(link, peer)
                    self._db.execute(
                        "INSERT INTO keys (key_id, link, sender, n_bits, bits, pass_id, "
                        "eps_sec, eps_cor, created, state, meta) SELECT key_id, link, sender, "
                        "n_bits, bits, pass_id, eps_sec, eps_cor, created, 'available', meta "
                        "FROM staged_keys WHERE session_id = ? ORDER BY pos", (sid,))
                pool._refill_in_transaction(refill)
            self._db.execute("DELETE FROM staged_keys WHERE session_id = ?", (sid,))
            self._db.execute("DELETE FROM staged WHERE session_id = ?", (sid,))
            self._set_session(sid, "committed" if committed else "aborted",
                              reason=None if committed else "the peer never committed it")
        if committed:
            pool._apply_refill(refill)
        return ids if committed else []


def init_link(link: str, first: KeyStore, second: KeyStore, *,
              key_bits: int = DEFAULT_AUTH_KEY_BITS, tag_bits: int = DEFAULT_TAG_BITS) -> int:
    """Give two parties' stores a matching fresh pre-shared authentication key for ``link``.

    The key is drawn from the OS CSPRNG and installed in both stores (``first`` sends in
    direction 0, ``second`` in direction 1); if the second installation fails the first is
    removed again, so the two stores never hold half a pair.

    Parameters
    ----------
    link : str
    first, second : KeyStore
        The two parties' stores (different parties).
    key_bits : int
        Size of the pre-shared key: the 128-bit hash key plus the pads of both directions.
    tag_bits : int
        Tag length of the link, at least :data:`~mozi.host.crypto.auth.MIN_TAG_BITS`.

    Returns
    -------
    int
        Pads per direction.

    Raises
    ------
    KeyStoreError
        A store has an authentication key for the link already, or the link leads elsewhere.
    """
    t = check_tag_bits(tag_bits)
    if first.party == second.party:
        raise KeyStoreError(f"both stores belong to {first.party!r}")
    if int(key_bits) < auth_key_bits(1, t):
        raise ValueError(f"an authentication key needs at least {auth_key_bits(1, t)} bits "
                         f"for tag_bits={t}, not {key_bits}")
    for store in (first, second):
        if store.has_auth_key(link):
            raise KeyStoreError(f"{store.path} has an authentication key for link {link!r} "
                                f"already")
    psk = np.unpackbits(np.frombuffer(secrets.token_bytes((int(key_bits) + 7) // 8),
                                      np.uint8))[:int(key_bits)]
    new_link = first.peer(link) is None
    first.init_auth_key(link, peer=second.party, role=0, key_bits=psk, tag_bits=t)
    try:
        second.init_auth_key(link, peer=first.party, role=1, key_bits=psk, tag_bits=t)
    except BaseException:
        first._remove_auth_key(link, forget_link=new_link)
        raise
    return (int(key_bits) - HASH_KEY_BITS) // 2 // t


class StoredAuthKeyPool(AuthKeyPool):
    """A link's authentication key kept in a :class:`KeyStore` (see :mod:`mozi.host.crypto.auth`).

    Every change — a pad used or burned, a replenishment, a rejected frame — is written in
    one transaction that commits before the change takes effect, and is refused if another
    object changed the link's key in the meantime (optimistic locking on a version number),
    so two channels can never use one pad, not even from two processes.
    """

    def __init__(self, store: KeyStore, link: str, version: int, **pool):
        super().__init__(**pool)
        self.store = store
        self.link = link
        self._version = version

    def _bump(self, sets: str, args: tuple, used: int = 0, added: int = 0) -> None:
        """Inside a transaction: update the row if nobody else did since we read it."""
        cur = self.store._db.execute(
            f"UPDATE auth_keys SET {sets}, used_bits = used_bits + ?, "
            f"added_bits = added_bits + ?, version = version + 1 "
            f"WHERE link = ? AND version = ?", (*args, used, added, self.link, self._version))
        if cur.rowcount != 1:
            raise KeyStoreError(f"the authentication key of link {self.link!r} was used by "
                                f"another process at the same time; retry the session")

    def _save(self, direction: int, next_seq: int, pads: np.ndarray) -> None:
        used = self.available_bits(direction) - pads.size
        with self.store._write(erases=True):
            self._bump(f"next_seq{direction} = ?, pads{direction} = ?, "
                       f"pads{direction}_bits = ?",
                       (next_seq, np.packbits(pads).tobytes(), int(pads.size)), used=used)
        self._version += 1

    def _persist_refill(self, refill) -> None:
        with self.store._write():
            self._refill_in_transaction(refill)

    def _refill_in_transaction(self, refill) -> None:
        self._bump("pads0 = ?, pads0_bits = ?, pads1 = ?, pads1_bits = ?",
                   tuple(v for d in (0, 1) for v in (
                       np.packbits(np.concatenate([self._pads[d], refill[d]])).tobytes(),
                       int(self._pads[d].size + refill[d].size))),
                   added=int(refill[0].size + refill[1].size))

    def _apply_refill(self, refill) -> None:
        super()._apply_refill(refill)
        self._version += 1

    def drop_refill(self, sizes: tuple[int, int]) -> None:
        """Undo a replenishment the peer never made: drop the last ``sizes[d]`` pad bits of
        each stream (bits nobody has used), persisted."""
        if any(int(n) < 0 or int(n) > p.size for n, p in zip(sizes, self._pads, strict=True)):
            raise ValueError("cannot drop more pad bits than the pool holds")
        keep = [self._pads[d][:self._pads[d].size - int(sizes[d])] for d in (0, 1)]
        with self.store._write(erases=True):
            self._bump("pads0 = ?, pads0_bits = ?, pads1 = ?, pads1_bits = ?",
                       (np.packbits(keep[0]).tobytes(), int(keep[0].size),
                        np.packbits(keep[1]).tobytes(), int(keep[1].size)),
                       added=-(int(sizes[0]) + int(sizes[1])))
        self._version += 1
        self._pads = keep

    def record_failure(self) -> None:
        """Count one rejected frame in the store (``auth_status()["failures"]``)."""
        with self.store._write():
            self._bump("failures = failures + 1", ())
        self._version += 1


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception), then ``after()``."""

    def __init__(self, db: sqlite3.Connection, path: Path, after: Callable[[], None] | None):
        self._db = db
        self._path = path
        self._after = after

    def __enter__(self):
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self._path} is busy or unwritable: {exc}") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise KeyStoreError(f"key store {self._path}: commit failed: {err}") from None
            if self._after is not None:
                self._after()
            return False
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise KeyStoreError(f"key store {self._path}: {exc}") from None
        return False

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (disk full, I/O error): then there is
        # no transaction left, and the original error is the one to report.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
