"""Mozi time-tag files (``.tags``): a small, documented, little-endian binary format.

Layout (version 1; full description in ``docs/tagfile.md``)::

    offset  size  field
    0       8     magic  b"MOZITAGS"
    8       2     format version, uint16 (1)
    10      2     channel count C, uint16 (1..255)
    12      4     header size H in bytes, uint32 (multiple of 8; records start here)
    16      8     resolution in ps, uint64 (>= 1)
    24      8     record count N, uint64
    32      4     metadata size M in bytes, uint32
    36      4     CRC-32 of the N records' bytes, uint32
    40      ...   C channel names, each: uint8 length + UTF-8 bytes
    ...     M     metadata, UTF-8 JSON object
    ...     ...   zero padding up to H - 4
    H - 4   4     CRC-32 of header bytes [0, H - 4), uint32
    H       9·N   records: int64 timestamp (in resolution units), uint8 channel index

Records are in non-decreasing timestamp order and channel indices are below C. All integers are
little-endian; CRC-32 is ``zlib.crc32``.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mozi.sim.errors import FileFormatError, MoziError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "RECORD_DTYPE",
    "OutputError",
    "TagData",
    "TagFileError",
    "atomic_write",
    "read_tags",
    "write_tags",
]

MAGIC = b"MOZITAGS"
FORMAT_VERSION = 1
#: One record on disk: timestamp (resolution units) and channel index, packed (9 bytes).
RECORD_DTYPE = np.dtype([("t", "<i8"), ("ch", "u1")])
_FIXED = struct.Struct("<8sHHIQQII")   # the first 40 bytes
#: Largest resolution a file may declare: one second (a tagger's bin is far finer).
_MAX_RESOLUTION_PS = 10**12


class TagFileError(FileFormatError):
    """A time-tag file is corrupt, truncated, not a tag file or of an unsupported version."""


class OutputError(MoziError):
    """An output file could not be written."""


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview], *,
                 mode: int = 0o666) -> None:
    """Write ``chunks`` to ``path`` through a temporary file renamed into place.

    Either the complete file appears at ``path`` or nothing changes there. The file gets
    ``mode`` minus the umask.

    Raises
    ------
    OutputError
        The directory does not exist or is not writable, the disk is full, …
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        created = True
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
        created = False
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if created:
            try:
                os.unlink(tmp)
            except OSError:
                pass


@dataclass(eq=False)
class TagData:
    """The content of a tag file.

    Attributes
    ----------
    timestamps_ps : int64 array
        Time of each record in picoseconds (stored value × resolution), non-decreasing.
    channels : uint8 array
        Channel index of each record (into ``channel_names``).
    resolution_ps : int
        Resolution of the stored timestamps.
    channel_names : tuple of str
    metadata : dict
    """

    timestamps_ps: np.ndarray
    channels: np.ndarray
    resolution_ps: int = 1
    channel_names: tuple[str, ...] = ("H", "V", "D", "A")
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.timestamps_ps.size)


def _header(resolution_ps: int, names: tuple[str, ...], meta: bytes, count: int,
            rec_crc: int) -> bytes:
    body = bytearray()
    for name in names:
        b = name.encode("utf-8")
        body += bytes([len(b)]) + b
    body += meta
    size = _FIXED.size + len(body) + 4
    size += (-size) % 8
    head = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, len(names), size, resolution_ps,
                                 count, len(meta), rec_crc))
    head += body
    head += bytes(size - 4 - len(head))
    head += struct.pack("<I", zlib.crc32(head))
    return bytes(head)


def write_tags(
    path: str | os.PathLike,
    timestamps_ps,
    channels,
    *,
    resolution_ps: int = 1,
    channel_names: tuple[str, ...] = ("H", "V", "D", "A"),
    metadata: dict | None = None,
) -> None:
    """Write a tag file atomically (temporary file renamed into place).

    Parameters
    ----------
    path : path-like
    timestamps_ps : integer array
        Record times in ps, non-decreasing; stored as ``timestamps_ps // resolution_ps``.
    channels : integer array
        Channel index of each record, ``< len(channel_names)``.
    resolution_ps : int
        Resolution of the stored timestamps (``>= 1``).
    channel_names : sequence of str
        1–255 names of at most 255 UTF-8 bytes each.
    metadata : dict, optional
        JSON-serialisable description (pass, seeds, timing, …).

    Raises
    ------
    ValueError
        Bad arguments (unsorted timestamps, channel out of range, …).
    OutputError
        The file cannot be written.
    """
    ts = np.asarray(timestamps_ps)
    ch = np.asarray(channels)
    names = tuple(str(n) for n in channel_names)
    if ts.ndim != 1 or ch.shape != ts.shape:
        raise ValueError("timestamps_ps and channels must be 1-D arrays of equal length")
    if ts.size and (ts.dtype.kind not in "iu" or ch.dtype.kind not in "iu"):
        raise ValueError("timestamps_ps and channels must be integer arrays")
    if not 1 <= len(names) <= 255 or any(len(n.encode("utf-8")) > 255 for n in names):
        raise ValueError("need 1 to 255 channel names of at most 255 bytes")
    if not 1 <= int(resolution_ps) <= _MAX_RESOLUTION_PS:
        raise ValueError(f"resolution_ps must be an integer in [1, {_MAX_RESOLUTION_PS}]")
    if ch.size and (ch.min() < 0 or ch.max() >= len(names)):
        raise ValueError("channel index out of range of channel_names")
    rec = np.empty(ts.size, RECORD_DTYPE)
    rec["t"] = ts.astype(np.int64) // int(resolution_ps)
    rec["ch"] = ch
    if rec.size > 1 and np.any(rec["t"][1:] < rec["t"][:-1]):
        raise ValueError("timestamps must be in non-decreasing order")
    meta = json.dumps(metadata or {}, sort_keys=True, allow_nan=False).encode("utf-8")
    data = memoryview(rec.tobytes())
    head = _header(int(resolution_ps), names, meta, rec.size, zlib.crc32(data))
    # which detector clicked is Bob's raw key: the file is readable by its owner only
    atomic_write(path, (head, data), mode=0o600)


def read_tags(path: str | os.PathLike) -> TagData:
    """Read a tag file written by :func:`write_tags`.

    Raises
    ------
    TagFileError
        Not a tag file, unsupported version, truncated, checksum mismatch or inconsistent
        content; the message names the file and the problem in one line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TagFileError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def bad(msg: str) -> TagFileError:
        return TagFileError(f"{path}: {msg}")

    if len(raw) < _FIXED.size:
        if not MAGIC.startswith(raw[:8]) or len(raw) == 0:
            raise bad("not a Mozi tag file (bad magic)")
        raise bad("truncated header")
    magic, version, n_ch, hsize, res, count, msize, rec_crc = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise bad("not a Mozi tag file (bad magic)")
    if version != FORMAT_VERSION:
        raise bad(f"unsupported tag file version {version} (this reader knows {FORMAT_VERSION})")
    if hsize < _FIXED.size + 4 or hsize % 8:
        raise bad("corrupt header (bad header size)")
    if len(raw) < hsize:
        raise bad("truncated header")
    (head_crc,) = struct.unpack_from("<I", raw, hsize - 4)
    if zlib.crc32(raw[:hsize - 4]) != head_crc:
        raise bad("corrupt header (checksum mismatch)")
    if not 1 <= n_ch <= 255 or not 1 <= res <= _MAX_RESOLUTION_PS:
        raise bad("corrupt header (channel count or resolution)")
    pos = _FIXED.size
    names = []
    try:
        for _ in range(n_ch):
            n = raw[pos]
            names.append(raw[pos + 1:pos + 1 + n].decode("utf-8"))
            pos += 1 + n
        if pos + msize > hsize - 4:
            raise bad("corrupt header (metadata overruns header)")
        metadata = json.loads(raw[pos:pos + msize].decode("utf-8"))
    except (IndexError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad("corrupt header (channel names or metadata)") from None
    if not isinstance(metadata, dict):
        raise bad("corrupt header (metadata is not a JSON object)")
    expected = hsize + count * RECORD_DTYPE.itemsize
    if len(raw) < expected:
        have = (len(raw) - hsize) // RECORD_DTYPE.itemsize
        raise bad(f"truncated: {have} of {count} records present")
    if len(raw) > expected:
        raise bad(f"{len(raw) - expected} unexpected bytes after the last record")
    body = memoryview(raw)[hsize:]
    if zlib.crc32(body) != rec_crc:
        raise bad("corrupt records (checksum mismatch)")
    rec = np.frombuffer(body, RECORD_DTYPE, count=count)
    t = rec["t"].astype(np.int64)
    ch = rec["ch"].astype(np.uint8)
    if ch.size and int(ch.max()) >= n_ch:
        raise bad("corrupt records (channel index out of range)")
    if t.size > 1 and np.any(t[1:] < t[:-1]):
        raise bad("corrupt records (timestamps not in order)")
    if t.size and max(abs(int(t.min())), abs(int(t.max()))) > (2 ** 63 - 1) // res:
        raise bad("timestamps overflow int64 picoseconds")
    return TagData(t * np.int64(res), ch, int(res), tuple(names), metadata)
