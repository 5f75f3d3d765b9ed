"""Time-tag file format: round trips, documented layout, and every kind of damage."""

import json
import struct
import zlib

import numpy as np
import pytest
from mozi.sim.errors import FileFormatError, MoziError
from mozi.sim.tagfile import (
    MAGIC,
    RECORD_DTYPE,
    OutputError,
    TagFileError,
    read_tags,
    write_tags,
)


def sample(n=1000, seed=3):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 3 * 10 ** 14, n)).astype(np.int64)
    ch = rng.integers(0, 4, n).astype(np.uint8)
    return ts, ch


def test_round_trip(tmp_path):
    ts, ch = sample()
    meta = {"pass": "micius2017", "n": 3, "nested": {"x": [1, 2.5, None]}}
    path = tmp_path / "bob.tags"
    write_tags(path, ts, ch, metadata=meta)
    d = read_tags(path)
    assert d.timestamps_ps.dtype == np.int64 and d.channels.dtype == np.uint8
    np.testing.assert_array_equal(d.timestamps_ps, ts)
    np.testing.assert_array_equal(d.channels, ch)
    assert d.resolution_ps == 1
    assert d.channel_names == ("H", "V", "D", "A")
    assert d.metadata == meta
    assert len(d) == ts.size


def test_resolution_and_names(tmp_path):
    ts = np.array([0, 3, 4, 7, 8, 1 << 50], np.int64)
    ch = np.array([0, 1, 2, 3, 4, 0], np.uint8)
    path = tmp_path / "r.tags"
    write_tags(path, ts, ch, resolution_ps=4, channel_names=("H", "V", "D", "A", "SYNC"))
    d = read_tags(path)
    # floored to the resolution
    np.testing.assert_array_equal(d.timestamps_ps, [0, 0, 4, 4, 8, 1 << 50])
    assert d.resolution_ps == 4
    assert d.channel_names == ("H", "V", "D", "A", "SYNC")


def test_empty_file(tmp_path):
    path = tmp_path / "e.tags"
    write_tags(path, np.empty(0, np.int64), np.empty(0, np.uint8))
    d = read_tags(path)
    assert len(d) == 0 and d.metadata == {}


def test_layout_is_as_documented(tmp_path):
    ts, ch = sample(10)
    path = tmp_path / "l.tags"
    write_tags(path, ts, ch, resolution_ps=2, metadata={"a": 1})
    raw = path.read_bytes()
    magic, version, n_ch, hsize, res, count, msize, rec_crc = \
        struct.unpack_from("<8sHHIQQII", raw)
    assert (magic, version, n_ch, res, count) == (MAGIC, 1, 4, 2, 10)
    assert hsize % 8 == 0 and len(raw) == hsize + 9 * count
    assert raw[40:42] == b"\x01H"
    assert json.loads(raw[48:48 + msize]) == {"a": 1}
    assert struct.unpack_from("<I", raw, hsize - 4)[0] == zlib.crc32(raw[:hsize - 4])
    assert rec_crc == zlib.crc32(raw[hsize:])
    rec = np.frombuffer(raw, RECORD_DTYPE, offset=hsize)
    np.testing.assert_array_equal(rec["t"], ts // 2)
    np.testing.assert_array_equal(rec["ch"], ch)
    # little-endian int64 then uint8
    assert raw[hsize:hsize + 8] == int(ts[0] // 2).to_bytes(8, "little")


def _written(tmp_path, n=100):
    ts, ch = sample(n)
    path = tmp_path / "x.tags"
    write_tags(path, ts, ch, metadata={"k": "v"})
    return path, bytearray(path.read_bytes())


def _reheader(raw: bytearray) -> bytearray:
    hsize = struct.unpack_from("<I", raw, 12)[0]
    struct.pack_into("<I", raw, hsize - 4, zlib.crc32(bytes(raw[:hsize - 4])))
    return raw


@pytest.mark.parametrize("damage,message", [
    (lambda raw: raw[:-5], "truncated: 99 of 100 records"),
    (lambda raw: raw[:30], "truncated header"),
    (lambda raw: raw[:60], "truncated header"),
    (lambda raw: bytearray(b"PTU" + raw[3:]), "bad magic"),
    (lambda raw: bytearray(b""), "bad magic"),
    (lambda raw: _reheader(raw[:8] + struct.pack("<H", 2) + raw[10:]),
     "unsupported tag file version 2"),
    (lambda raw: raw[:8] + struct.pack("<H", 7) + raw[10:], "unsupported tag file version 7"),
    (lambda raw: raw[:45] + bytearray([raw[45] ^ 0x20]) + raw[46:], "header (checksum"),
    (lambda raw: raw[:-3] + bytearray([raw[-3] ^ 1]) + raw[-2:], "records (checksum"),
    (lambda raw: raw + b"\0\0", "2 unexpected bytes"),
])
def test_damaged_files_raise_one_line_errors(tmp_path, damage, message):
    path, raw = _written(tmp_path)
    path.write_bytes(bytes(damage(raw)))
    with pytest.raises(TagFileError) as info:
        read_tags(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    assert isinstance(info.value, FileFormatError) and isinstance(info.value, MoziError)


def test_consistent_but_invalid_content_is_rejected(tmp_path):
    # records with a good checksum but out-of-order times / bad channel: still corrupt
    path, raw = _written(tmp_path, 3)
    hsize = struct.unpack_from("<I", raw, 12)[0]
    rec = np.frombuffer(bytes(raw[hsize:]), RECORD_DTYPE).copy()
    for field, value, message in (("t", rec["t"][::-1].copy(), "not in order"),
                                  ("ch", np.array([0, 9, 1], np.uint8), "channel index")):
        bad = rec.copy()
        bad[field] = value
        body = bad.tobytes()
        head = raw[:hsize]
        struct.pack_into("<I", head, 36, zlib.crc32(body))
        path.write_bytes(bytes(_reheader(head)) + body)
        with pytest.raises(TagFileError, match=message):
            read_tags(path)


def test_missing_file(tmp_path):
    with pytest.raises(TagFileError, match="cannot read"):
        read_tags(tmp_path / "nope.tags")


@pytest.mark.parametrize("ts,ch,kwargs", [
    ([3, 2], [0, 0], {}),
    ([1, 2], [0, 4], {}),
    ([1, 2], [0], {}),
    ([1, 2], [0, 1], {"resolution_ps": 0}),
    ([1, 2], [0, 1], {"channel_names": ()}),
    ([1.5, 2.0], [0, 1], {}),
])
def test_writer_rejects_bad_input_and_leaves_old_file(tmp_path, ts, ch, kwargs):
    path = tmp_path / "keep.tags"
    write_tags(path, np.array([5], np.int64), np.array([1], np.uint8))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_tags(path, np.array(ts), np.array(ch), **kwargs)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tags"]


def test_unwritable_destination(tmp_path):
    with pytest.raises(OutputError) as info:
        write_tags(tmp_path / "no" / "dir" / "x.tags", np.array([1]), np.array([0]))
    assert isinstance(info.value, MoziError)
    assert list(tmp_path.iterdir()) == []


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(ValueError):
        write_tags(tmp_path / "m.tags", np.array([1]), np.array([0]),
                   metadata={"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resolution", [2**63, 2**64 - 1, 10**12 + 1])
def test_huge_resolution_is_a_corrupt_header(tmp_path, resolution):
    """Defect 6 of the security issue: a resolution of 2**63 or more (with all timestamps 0,
    so the overflow check passed) crashed ``read_tags`` with ``OverflowError`` in
    ``np.int64(res)``. Resolutions above 10^12 ps are now a corrupt header."""
    path, raw = _written(tmp_path, 3)
    hsize = struct.unpack_from("<I", raw, 12)[0]
    body = np.zeros(3, RECORD_DTYPE).tobytes()                 # every timestamp 0
    head = raw[:hsize]
    struct.pack_into("<Q", head, 16, resolution)
    struct.pack_into("<I", head, 36, zlib.crc32(body))
    path.write_bytes(bytes(_reheader(head)) + body)
    with pytest.raises(TagFileError, match="channel count or resolution"):
        read_tags(path)
    with pytest.raises(ValueError, match="resolution_ps"):
        write_tags(tmp_path / "w.tags", np.zeros(1, np.int64), np.zeros(1, np.uint8),
                   resolution_ps=resolution)


def test_deeply_nested_metadata_is_a_corrupt_header(tmp_path):
    """Defect 6: metadata JSON nested 50,000 deep crashed the reader with ``RecursionError``
    (and ``mozi session`` showed a traceback). It is now a corrupt header."""
    from mozi.sim.tagfile import _header

    meta = ("[" * 50_000 + "]" * 50_000).encode()
    (tmp_path / "n.tags").write_bytes(_header(1, ("H", "V", "D", "A"), meta, 0,
                                              zlib.crc32(b"")))
    with pytest.raises(TagFileError, match="channel names or metadata"):
        read_tags(tmp_path / "n.tags")


def test_tag_files_are_private(tmp_path):
    """Which detector clicked is Bob's raw key: tag files are written 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_tags(tmp_path / "t.tags", *sample(10))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.tags").stat().st_mode) == 0o600
