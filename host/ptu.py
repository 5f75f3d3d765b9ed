"""PicoQuant PTU T2 time-tag files → the project's :class:`~mozi.sim.tagfile.TagData`.

A ground station that records its four detectors with a PicoQuant time tagger (PicoHarp,
HydraHarp, TimeHarp 260, MultiHarp / PicoHarp 330) in T2 mode writes PTU files: a header of
"unified tags" followed by 32-bit TTTR records. The header is parsed and the raw records are
read with the `ptufile <https://pypi.org/project/ptufile/>`_ package; the T2 records are
decoded here (numpy, following PicoQuant's reference ``Read_PTU.py``), because ptufile
2026.2.6 keeps only the low 7 bits of the overflow count of HydraHarp-style T2 overflow records
and so loses time after any gap longer than 128 overflow periods (~4.3 ms), which happens
whenever the count rate drops (before and after a pass, behind a cloud). This module also
checks the file, maps the tagger's input channels to the detector names H/V/D/A and converts
the times to picoseconds.

Only photon records are kept. Overflow records are folded into the times; marker records, the
sync input of HydraHarp-style T2 records and inputs missing from the channel map are dropped
and counted in ``TagData.metadata``.

Examples
--------
>>> tags = read_ptu("pass.ptu", channels="0:H,1:V,2:D,3:A")    # doctest: +SKIP
>>> tags.timestamps_ps[:3], tags.channels[:3]                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np
import ptufile
from mozi.sim.errors import FileFormatError
from mozi.sim.model import CHANNELS
from mozi.sim.tagfile import TagData

__all__ = ["DEFAULT_CHANNEL_MAP", "PTU_MAGIC", "is_ptu", "parse_channel_map", "read_ptu"]

PTU_MAGIC = b"PQTTTR\0\0"
"""First eight bytes of every PTU file."""

DEFAULT_CHANNEL_MAP = "0:H,1:V,2:D,3:A"
"""Channel map used when the user gives none: inputs 0–3 are H, V, D, A."""

# T2 record types (``TTResultFormat_TTTRRecType``) whose 32-bit record is
# special(1) | channel(6) | time(25). special=1: channel 63 = overflow, 0 = sync, 1..15 = marker.
# Overflow period and whether the overflow record carries a count (version 2) or stands for one
# period (HydraHarp V1).
_HYDRAHARP_STYLE_T2 = {
    0x00010204: ("HydraHarpT2", 33_552_000, False),
    0x01010204: ("HydraHarp2T2", 1 << 25, True),
    0x00010205: ("TimeHarp260NT2", 1 << 25, True),
    0x00010206: ("TimeHarp260PT2", 1 << 25, True),
    0x00010207: ("GenericT2", 1 << 25, True),
}
# PicoHarp 300 T2: channel(4) | time(28); channel 15 is special: overflow when the low 4 time
# bits are 0, else a marker.
_PICOHARP_T2 = {0x00010203: ("PicoHarpT2", 210_698_240, False)}
_T2_TYPES = {**_HYDRAHARP_STYLE_T2, **_PICOHARP_T2}


def parse_channel_map(spec: str | Mapping[int, str] | None) -> dict[int, str]:
    """Parse a channel map such as ``"0:H,1:V,2:D,3:A"``.

    Parameters
    ----------
    spec : str, mapping or None
        ``INPUT:NAME`` pairs separated by commas, where ``INPUT`` is the tagger's input channel
        number as stored in the file (0-based) and ``NAME`` one of ``H``, ``V``, ``D``, ``A``
        (case-insensitive); or an already built ``{input: name}`` mapping; or ``None`` for
        :data:`DEFAULT_CHANNEL_MAP`.

    Returns
    -------
    dict of int to str
        Input channel → detector name (upper case).

    Raises
    ------
    FileFormatError
        The map is malformed, names an unknown detector, repeats an input or a detector.
    """
    if spec is None:
        spec = DEFAULT_CHANNEL_MAP
    if isinstance(spec, str):
        pairs = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, name = item.partition(":")
            try:
                if not sep:
                    raise ValueError
                pairs.append((int(key.strip()), name.strip()))
            except ValueError:
                raise FileFormatError(
                    f"bad channel map entry {item!r}: expected INPUT:NAME, e.g. 0:H"
                ) from None
    else:
        pairs = list(spec.items())
    result: dict[int, str] = {}
    for key, name in pairs:
        name = str(name).upper()
        if name not in CHANNELS:
            raise FileFormatError(
                f"bad channel map: detector {name!r} is not one of {', '.join(CHANNELS)}"
            )
        if int(key) < 0:
            raise FileFormatError(f"bad channel map: input {key} is negative")
        if int(key) in result:
            raise FileFormatError(f"bad channel map: input {key} is mapped twice")
        if name in result.values():
            raise FileFormatError(f"bad channel map: detector {name} is mapped twice")
        result[int(key)] = name
    if not result:
        raise FileFormatError("bad channel map: it maps no input")
    return result


def is_ptu(path: str | os.PathLike[str]) -> bool:
    """Return whether the file at ``path`` starts with the PTU magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(PTU_MAGIC)) == PTU_MAGIC
    except OSError:
        return False


class _Collect(logging.Handler):
    """Logging handler that keeps the messages ptufile logs while a file is read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _ptufile_log() -> Iterator[_Collect]:
    # ptufile reports some defects (short record block, bad tag) through logging rather than
    # exceptions; collect them so they become one FileFormatError instead of stray stderr lines.
    log = logging.getLogger("ptufile")
    handler = _Collect()
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _one_line(exc: object) -> str:
    # ptufile messages read "<problem> @ '<file>' tagid=…, value=…": keep the problem only,
    # the rest echoes (possibly binary) file content
    text = " ".join(str(exc).split(" @ ")[0].split())
    return "".join(c if c.isprintable() else "?" for c in text)[:200] or type(exc).__name__


#: Resolutions a PTU file may declare: 1 fs (a thousandth of the finest tagger bin) to 1 s.
_RESOLUTION_RANGE_S = (1e-15, 1.0)


def _resolution_ps(seconds: float, name: str) -> Fraction:
    lo, hi = _RESOLUTION_RANGE_S
    if not np.isfinite(seconds) or not lo <= seconds <= hi:
        raise FileFormatError(f"{name}: MeasDesc_GlobalResolution {seconds!r} s is outside "
                              f"[{lo:g}, {hi:g}] s")
    return Fraction(seconds * 1e12).limit_denominator(1000)


def _decode_t2(raw: np.ndarray, rectype: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode T2 records: (time in ticks, photon input or -1, sync flag, marker flag)."""
    _, wrap, counted = _T2_TYPES[rectype]
    raw = raw.astype(np.int64)
    if rectype in _HYDRAHARP_STYLE_T2:
        special = (raw >> 31) & 1 == 1
        field_ = (raw >> 25) & 0x3F
        tick = raw & 0x1FFFFFF
        overflow = special & (field_ == 0x3F)
        sync = special & (field_ == 0)
        marker = special & (field_ >= 1) & (field_ <= 15)
        if counted:     # the count of periods; 0 is an old-style single overflow
            periods = np.where(overflow, np.where(tick == 0, 1, tick), 0)
        else:
            periods = overflow.astype(np.int64)
        chan = np.where(special, -1, field_)
    else:
        field_ = raw >> 28
        tick = raw & 0xFFFFFFF
        special = field_ == 0xF
        overflow = special & (tick & 0xF == 0)
        marker = special & ~overflow
        sync = np.zeros(raw.shape, dtype=bool)
        periods = overflow.astype(np.int64)
        chan = np.where(special, -1, field_)
    # the file's last tick, in exact integers: the int64 arithmetic below must not wrap
    if int(periods.sum(dtype=np.int64)) * wrap + wrap > 2**63 - 1:
        raise FileFormatError("time tags overflow 64-bit ticks (too many overflow periods)")
    times = np.cumsum(periods) * wrap + np.where(overflow, 0, tick)
    return times, chan.astype(np.int16), sync, marker


def read_ptu(path: str | os.PathLike[str],
             channels: str | Mapping[int, str] | None = None) -> TagData:
    """Read a PicoQuant PTU T2 file into a :class:`~mozi.sim.tagfile.TagData`.

    Parameters
    ----------
    path : path-like
        The ``.ptu`` file.
    channels : str, mapping or None
        Which tagger input is which detector, see :func:`parse_channel_map`; default
        :data:`DEFAULT_CHANNEL_MAP`.

    Returns
    -------
    TagData
        ``timestamps_ps`` (int64, non-decreasing, picoseconds from the start of the
        measurement), ``channels`` (uint8 detector index into ``channel_names`` = H, V, D, A),
        ``resolution_ps`` (the tagger resolution, rounded up to a whole picosecond) and
        ``metadata`` (source file, record type, counts of kept and dropped records, the
        channel map and a few header tags).

    Raises
    ------
    FileFormatError
        The file cannot be read, is not a PTU file, is truncated or corrupt, holds T3 rather
        than T2 records, or holds no photon on a mapped input.
    """
    cmap = parse_channel_map(channels)
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not is_ptu(path):
        raise FileFormatError(f"{name}: not a PicoQuant PTU file (bad magic bytes)")

    with _ptufile_log() as log:
        try:
            ptu = ptufile.PtuFile(path)
        except Exception as exc:  # ptufile raises several types on corrupt headers
            detail = f": {_one_line(exc)}" if isinstance(exc, ptufile.PqFileError) else ""
            raise FileFormatError(f"{name}: corrupt or truncated PTU header{detail}") from None
        with ptu:
            tags = ptu.tags
            if log.messages:
                raise FileFormatError(
                    f"{name}: corrupt or truncated PTU header: {_one_line(log.messages[0])}")
            try:
                rectype = int(tags["TTResultFormat_TTTRRecType"])
                mode = int(tags.get("Measurement_Mode", -1))
                bits = int(tags.get("TTResultFormat_BitsPerRecord", 32))
                announced = int(tags.get("TTResult_NumberOfRecords", 0))
                resolution = _resolution_ps(float(tags["MeasDesc_GlobalResolution"]), name)
            except (KeyError, TypeError, ValueError) as exc:
                raise FileFormatError(f"{name}: PTU header lacks a usable tag {exc}") from None
            if rectype not in _T2_TYPES or mode not in (-1, 2):
                raise FileFormatError(
                    f"{name}: record type 0x{rectype:08x} is not a supported T2 format "
                    f"(T3 files carry no absolute photon times)"
                )
            if bits not in (0, 32):
                raise FileFormatError(f"{name}: {bits}-bit records are not T2 records")
            payload = size - ptu.record_offset
            if announced > 0 and payload // 4 < announced:
                raise FileFormatError(
                    f"{name}: truncated PTU file (header announces {announced} records, "
                    f"file holds {payload // 4})"
                )
            if announced <= 0 and payload % 4:
                raise FileFormatError(
                    f"{name}: truncated PTU file (record block of {payload} bytes is not a "
                    f"whole number of 4-byte records)"
                )
            try:
                raw = np.asarray(ptu.read_records(), dtype=np.uint32)
            except Exception as exc:
                raise FileFormatError(
                    f"{name}: cannot decode PTU records: {_one_line(exc)}") from None
            if log.messages:
                raise FileFormatError(f"{name}: corrupt PTU records: {_one_line(log.messages[0])}")
            header = {
                key: tags[key]
                for key in ("File_GUID", "CreatorSW_Name", "HW_Type", "TTResult_SyncRate",
                            "File_CreatingTime")
                if key in tags
            }

    times, chan, sync, marker = _decode_t2(raw, rectype)
    photon = chan >= 0
    n_markers = int(np.count_nonzero(marker))

    lut = np.full(int(max(cmap) + 1), -1, dtype=np.int16)
    for inp, det in cmap.items():
        lut[inp] = CHANNELS.index(det)
    mapped = np.full(chan.shape, -1, dtype=np.int16)
    in_lut = photon & (chan < lut.size)
    mapped[in_lut] = lut[chan[in_lut]]
    keep = mapped >= 0
    unmapped = photon & ~keep
    dropped_inputs = {
        int(c): int(n) for c, n in zip(*np.unique(chan[unmapped], return_counts=True),
                                        strict=True)
    }
    if not keep.any():
        raise FileFormatError(
            f"{name}: no photon on the mapped inputs {sorted(cmap)} "
            f"(photons per unmapped input: {dropped_inputs or 'none'})"
        )

    ticks = times[keep]
    if ticks.size and int(ticks.max()) > (2**63 - 1) // resolution.numerator:
        raise FileFormatError(f"{name}: time tags overflow 64-bit picoseconds")
    ps = ticks.astype(np.int64) * resolution.numerator
    if resolution.denominator != 1:
        ps //= resolution.denominator
    det = mapped[keep].astype(np.uint8)
    if ps.size > 1 and np.any(np.diff(ps) < 0):
        order = np.argsort(ps, kind="stable")
        ps, det = ps[order], det[order]

    metadata = {
        "source": "ptu",
        "file": str(path),
        "record_type": _T2_TYPES[rectype][0],
        "resolution_s": float(resolution) * 1e-12,
        "channel_map": {str(k): v for k, v in sorted(cmap.items())},
        "records": int(raw.size),
        "photons": int(ps.size),
        "sync_records": int(np.count_nonzero(sync)),
        "marker_records": n_markers,
        "dropped_photons_per_input": {str(k): v for k, v in dropped_inputs.items()},
        "header": {k: str(v) for k, v in header.items()},
    }
    res_ps = max(1, -(-resolution.numerator // resolution.denominator))
    return TagData(
        timestamps_ps=ps,
        channels=det,
        resolution_ps=res_ps,
        channel_names=tuple(CHANNELS),
        metadata=metadata,
    )
