"""Key store: finite-key-secure QKD keys in SQLite, each block handed out at most once.

A final key from one QKD session is cut into *blocks* of :data:`DEFAULT_BLOCK_BITS` bits (the
last block keeps the remainder, so no key bit is dropped). Every block has a UUID key ID and
metadata: the link it belongs to (e.g. ``"sat-moscow"``), the satellite pass, the security
parameters ε_sec and ε_cor of the session that produced it, the creation time, its size in
bits and its state (``available`` or ``consumed``). Both parties of a link call
:meth:`KeyStore.add_key` with the *same* key IDs (Alice draws them with :func:`new_key_ids`
and sends them over the authenticated channel), so identical keys live under identical IDs
at both ends.

Guarantees
----------
* Every write is one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), so a key is
  either stored whole or not at all, and a block is consumed whole or not at all.
* A block is handed out at most once, also with several :class:`KeyStore` objects or
  processes on the same file: consumption is an ``UPDATE … WHERE state = 'available'`` under
  SQLite's write lock, and the key material is erased from the row in the same transaction.
* The database runs in WAL mode with ``synchronous = FULL`` (a committed consumption survives
  a power cut), and ``busy_timeout`` lets concurrent writers wait instead of failing.

Bits are ``numpy.uint8`` arrays of 0/1 in the API and packed MSB-first (``numpy.packbits``)
in the database.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import json
import os
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mozi.host.errors import KeyStoreError

__all__ = [
    "DEFAULT_BLOCK_BITS",
    "DEFAULT_STORE_ENV",
    "KeyRecord",
    "KeyStore",
    "block_sizes",
    "default_store_path",
    "new_key_ids",
]

#: Default block size in bits: big enough that an image needs only a handful of key IDs,
#: small enough that an AES-256 key (256 bits, one whole block) wastes little.
DEFAULT_BLOCK_BITS = 8192

#: Environment variable naming the default key store file of the CLI.
DEFAULT_STORE_ENV = "MOZI_KEYSTORE"

_SCHEMA_VERSION = 1
_STATES = ("available", "consumed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id      TEXT    NOT NULL UNIQUE,
    link        TEXT    NOT NULL,
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
CREATE INDEX IF NOT EXISTS keys_link_state ON keys (link, state, seq);
"""


def default_store_path() -> Path:
    """The key store the CLI uses without ``--store``: ``$MOZI_KEYSTORE`` or ``./mozi-keys.db``."""
    return Path(os.environ.get(DEFAULT_STORE_ENV) or "mozi-keys.db")


def block_sizes(n_bits: int, block_bits: int | None = None) -> list[int]:
    """Sizes of the blocks :meth:`KeyStore.add_key` cuts an ``n_bits`` key into.

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


def new_key_ids(n_bits: int, block_bits: int | None = None) -> list[str]:
    """Fresh random UUIDs, one per block of an ``n_bits`` key (see :func:`block_sizes`).

    The party that stores a key first draws these and sends them to its peer, who passes the
    same list to :meth:`KeyStore.add_key`.
    """
    return [str(uuid.uuid4()) for _ in block_sizes(n_bits, block_bits)]


def _canonical_id(key_id) -> str:
    try:
        return str(uuid.UUID(str(key_id)))
    except (ValueError, TypeError, AttributeError):
        raise KeyStoreError(f"invalid key ID {key_id!r} (expected a UUID)") from None


def _as_bits(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError("key bits must be a 1-D array")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError("key bits must hold only 0 and 1")
    return a.astype(np.uint8, copy=False)


def _json_default(value):
    """numpy scalars and arrays in metadata become plain JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class KeyRecord:
    """One key block and its metadata.

    Attributes
    ----------
    key_id : str
        UUID of the block (canonical lower-case form).
    link : str
        The link the key belongs to (both ends use the same name).
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
    """

    key_id: str
    link: str
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metadata (never the key bits)."""
        return {"key_id": self.key_id, "link": self.link, "n_bits": self.n_bits,
                "state": self.state, "created": self.created, "pass_id": self.pass_id,
                "eps_sec": self.eps_sec, "eps_cor": self.eps_cor,
                "consumed_at": self.consumed_at, "purpose": self.purpose, "meta": self.meta}


_COLUMNS = ("key_id, link, n_bits, state, created, pass_id, eps_sec, eps_cor, consumed_at, "
            "purpose, meta, bits")


def _record(row, *, with_bits: bool) -> KeyRecord:
    (key_id, link, n_bits, state, created, pass_id, eps_sec, eps_cor, consumed_at, purpose,
     meta, blob) = row
    bits = None
    if with_bits and blob is not None:
        bits = np.unpackbits(np.frombuffer(blob, np.uint8))[:n_bits].copy()
    return KeyRecord(key_id=key_id, link=link, n_bits=n_bits, state=state, created=created,
                     pass_id=pass_id, eps_sec=eps_sec, eps_cor=eps_cor,
                     consumed_at=consumed_at, purpose=purpose, meta=json.loads(meta),
                     bits=bits)


class KeyStore:
    """An SQLite key store (see the module documentation for the guarantees).

    Parameters
    ----------
    path : str or Path
        Database file. Several objects and processes may open the same file.
    create : bool
        Create the file (and its schema) if it does not exist; with ``False`` a missing file
        is a :class:`~mozi.host.errors.KeyStoreError`.

    Raises
    ------
    KeyStoreError
        The file is missing (``create=False``), cannot be created, or is not a key store.

    Examples
    --------
    >>> store = KeyStore("alice.db")                                    # doctest: +SKIP
    >>> ids = store.add_key("sat-moscow", key, meta={"pass_id": "2017-12-01"})  # doctest: +SKIP
    >>> bits = store.consume(ids[0])                                    # doctest: +SKIP
    """

    def __init__(self, path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise KeyStoreError(f"no key store at {self.path}")
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot open key store {self.path}: {exc}") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 30000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous = FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                self._init_schema()
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except (sqlite3.DatabaseError, KeyStoreError) as exc:
            self._db.close()
            raise KeyStoreError(f"{self.path} is not a usable key store: {exc}") from None
        if version != _SCHEMA_VERSION:
            self._db.close()
            raise KeyStoreError(f"{self.path} is not a Mozi key store "
                                f"(schema version {version}, expected {_SCHEMA_VERSION})")
        if str(mode).lower() != "wal":
            self._db.close()
            raise KeyStoreError(f"key store {self.path} cannot use WAL mode ({mode})")

    # -- plumbing --------------------------------------------------------------------------

    def _init_schema(self) -> None:
        with self._write():
            if self._db.execute("PRAGMA user_version").fetchone()[0] == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _write(self):
        return _Transaction(self._db, self.path)

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def add_key(
        self,
        link: str,
        key_bits,
        *,
        key_ids: Sequence[str] | None = None,
        key_id: str | None = None,
        block_bits: int | None = None,
        meta: dict | None = None,
    ) -> builtins.list[str]:
        """Store a final key, cut into blocks, in one transaction.

        Parameters
        ----------
        link : str
            Link name, e.g. ``"sat-moscow"``; both ends use the same name.
        key_bits : uint8 bit array
            The key, ``>= 1`` bit.
        key_ids : sequence of str, optional
            One UUID per block (:func:`new_key_ids` draws them). The peer stores the same key
            with the same list. Default: fresh random UUIDs.
        key_id : str, optional
            Shorthand for ``key_ids=[key_id]`` when the key is a single block.
        block_bits : int, optional
            Block size, default :data:`DEFAULT_BLOCK_BITS`; the last block keeps the
            remainder (see :func:`block_sizes`).
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
            An ID is not a UUID, appears twice, is already in the store, or the number of IDs
            does not match the number of blocks. Nothing is stored then.
        ValueError
            ``key_bits`` is not a non-empty bit array, or bad ``block_bits`` / ε values.
        """
        bits = _as_bits(key_bits)
        if not isinstance(link, str) or not link:
            raise ValueError(f"link must be a non-empty string, not {link!r}")
        sizes = block_sizes(bits.size, block_bits)
        if key_id is not None:
            if key_ids is not None:
                raise ValueError("give key_ids or key_id, not both")
            key_ids = [key_id]
        if key_ids is None:
            ids = [str(uuid.uuid4()) for _ in sizes]
        else:
            ids = [_canonical_id(k) for k in key_ids]
            if len(ids) != len(sizes):
                raise KeyStoreError(f"{len(ids)} key IDs given for a key of {len(sizes)} "
                                    f"block(s) of at most {max(sizes)} bits")
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
            meta_json = json.dumps(extra, sort_keys=True, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
        created = _now()
        rows = []
        start = 0
        for kid, size in zip(ids, sizes, strict=True):
            blob = np.packbits(bits[start:start + size]).tobytes()
            rows.append((kid, link, size, blob, None if pass_id is None else str(pass_id),
                         eps["eps_sec"], eps["eps_cor"], created, "available", meta_json))
            start += size
        with self._write():
            clash = self._db.execute(
                f"SELECT key_id FROM keys WHERE key_id IN ({','.join('?' * len(ids))})",
                ids).fetchone()
            if clash:
                raise KeyStoreError(f"key ID {clash[0]} is already in {self.path}")
            self._db.executemany(
                "INSERT INTO keys (key_id, link, n_bits, bits, pass_id, eps_sec, eps_cor, "
                "created, state, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return ids

    def consume(self, key_id: str, *, purpose: str | None = None) -> np.ndarray:
        """Hand out one block and mark it consumed, in one transaction.

        Parameters
        ----------
        key_id : str
        purpose : str, optional
            Recorded with the block (e.g. ``"otp image.png"``).

        Returns
        -------
        bits : uint8 bit array
            The block's key bits (erased from the store in the same transaction).

        Raises
        ------
        KeyStoreError
            Unknown ID, or ``"key … already used"`` when the block was consumed before.
        """
        return self.consume_many([key_id], purpose=purpose)[0]

    def consume_many(self, key_ids: Sequence[str], *,
                     purpose: str | None = None) -> builtins.list[np.ndarray]:
        """Consume several blocks all-or-nothing (see :meth:`consume`).

        Returns
        -------
        bits : list of uint8 bit arrays, in the order of ``key_ids``.
        """
        ids = [_canonical_id(k) for k in key_ids]
        if len(set(ids)) != len(ids):
            raise KeyStoreError("the same key ID is given twice")
        out = []
        with self._write():
            when = _now()
            for kid in ids:
                row = self._db.execute(
                    "SELECT n_bits, bits, state FROM keys WHERE key_id = ?", (kid,)).fetchone()
                if row is None:
                    raise KeyStoreError(f"unknown key ID {kid} in {self.path}")
                n_bits, blob, state = row
                if state != "available" or blob is None:
                    raise KeyStoreError(f"key {kid} already used")
                cur = self._db.execute(
                    "UPDATE keys SET state = 'consumed', bits = NULL, consumed_at = ?, "
                    "purpose = ? WHERE key_id = ? AND state = 'available'",
                    (when, purpose, kid))
                if cur.rowcount != 1:  # cannot happen under the write lock; never hand out twice
                    raise KeyStoreError(f"key {kid} already used")
                out.append(np.unpackbits(np.frombuffer(blob, np.uint8))[:n_bits].copy())
        return out

    def reserve(self, link: str, n_bits: int, *,
                purpose: str | None = None) -> builtins.list[tuple[str, np.ndarray]]:
        """Consume the oldest available blocks of a link until they hold ``n_bits`` bits.

        Whole blocks are handed out; bits of the last block beyond ``n_bits`` are the
        caller's to use or waste (a consumed block is never handed out again).

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
            Fewer than ``n_bits`` available bits on the link (then nothing is consumed).
        """
        return self.reserve_many({link: n_bits}, purpose=purpose)[link]

    def reserve_many(self, requests: Mapping[str, int], *, purpose: str | None = None
                     ) -> dict[str, builtins.list[tuple[str, np.ndarray]]]:
        """:meth:`reserve` on several links in one transaction (all or nothing).

        Parameters
        ----------
        requests : mapping of link to n_bits
        purpose : str, optional

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
        with self._write():
            when = _now()
            for link, n_bits in wanted.items():
                chosen, total = [], 0
                rows = self._db.execute(
                    "SELECT key_id, n_bits FROM keys WHERE link = ? AND state = 'available' "
                    "ORDER BY seq", (link,)).fetchall()
                for kid, size in rows:
                    chosen.append(kid)
                    total += size
                    if total >= n_bits:
                        break
                if total < n_bits:
                    raise KeyStoreError(f"not enough key on link {link!r}: {n_bits} bits "
                                        f"needed, {total} available")
                blocks = []
                for kid in chosen:
                    size, blob = self._db.execute(
                        "SELECT n_bits, bits FROM keys WHERE key_id = ?", (kid,)).fetchone()
                    cur = self._db.execute(
                        "UPDATE keys SET state = 'consumed', bits = NULL, consumed_at = ?, "
                        "purpose = ? WHERE key_id = ? AND state = 'available'",
                        (when, purpose, kid))
                    if cur.rowcount != 1 or blob is None:
                        raise KeyStoreError(f"key {kid} already used")
                    blocks.append((kid, np.unpackbits(np.frombuffer(blob, np.uint8))[:size]
                                   .copy()))
                out[link] = blocks
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
        row = self._read(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (kid,)).fetchone()
        if row is None:
            raise KeyStoreError(f"unknown key ID {kid} in {self.path}")
        return _record(row, with_bits=True)

    def list(self, link: str | None = None, *, state: str | None = None
             ) -> builtins.list[KeyRecord]:
        """Records of the stored blocks (without key bits), oldest first.

        Parameters
        ----------
        link : str, optional
            Only this link.
        state : {"available", "consumed"}, optional
            Only blocks in this state.
        """
        if state is not None and state not in _STATES:
            raise ValueError(f"state must be one of {_STATES}, not {state!r}")
        where, args = [], []
        if link is not None:
            where.append("link = ?")
            args.append(link)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {_COLUMNS} FROM keys"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_record(r, with_bits=False) for r in self._read(sql + " ORDER BY seq", args)]

    def available_bits(self, link: str) -> int:
        """Total bits of the available blocks of a link."""
        row = self._read("SELECT COALESCE(SUM(n_bits), 0) FROM keys "
                         "WHERE link = ? AND state = 'available'", (link,)).fetchone()
        return int(row[0])

    def status(self) -> dict[str, dict[str, int]]:
        """Per link: ``available_blocks``, ``available_bits``, ``consumed_blocks``,
        ``consumed_bits`` (links sorted by name)."""
        out: dict[str, dict[str, int]] = {}
        for link, state, count, bits in self._read(
                "SELECT link, state, COUNT(*), SUM(n_bits) FROM keys "
                "GROUP BY link, state ORDER BY link"):
            entry = out.setdefault(link, {"available_blocks": 0, "available_bits": 0,
                                          "consumed_blocks": 0, "consumed_bits": 0})
            entry[f"{state}_blocks"] = int(count)
            entry[f"{state}_bits"] = int(bits)
        return out

    def _read(self, sql: str, args=()):
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {self.path}: {exc}") from None


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception)."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self._db = db
        self._path = path

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
