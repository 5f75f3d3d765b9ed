"""Fuzzing every parser that a user or a peer can feed: seeded random and mutated inputs.

Each *target* takes bytes (or a command line) the way a user or a peer hands them to Mozi and
must answer with a typed :class:`~mozi.sim.errors.MoziError` whose message is one short line
(or, for the command line, one error line and a non-zero exit status) — anything else is a
*crash*. Inputs are valid seeds
mutated by bit flips, byte and integer overwrites, insertions, deletions, splices and
truncations, structure-aware rewrites of header fields, and plain random bytes. Mutants of
checksummed formats get their checksums recomputed (tag-file CRC-32s, link-frame CRC-16s,
authenticated-channel tags) so that they reach the field checks behind them.

``python -m tests.fuzz_parsers [--count N] [--seed S] [TARGET …]`` runs ``N`` inputs per
target (``make fuzz``: 10^5) and prints the crash count of each; the test suite runs 2,000 per
target (:mod:`tests.test_fuzz`). A crash prints its target, index and seed: the same
``--seed`` replays it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import math
import shutil
import struct
import sys
import tempfile
import time
import traceback
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mozi.firmware import protocol as proto
from mozi.host.cli.commands.session import load_alice, load_tags
from mozi.host.crypto.auth import AuthenticatedChannel, AuthKeyPool, MemoryTransport, one_time_tag
from mozi.host.crypto.imagecrypt import decrypt_file, encrypt_file
from mozi.host.devices.model import ModelTransport
from mozi.host.keys import relay
from mozi.host.keys.keystore import KeyStore
from mozi.host.nodes import wire
from mozi.host.postprocessing import session, sifting
from mozi.sim import tagfile
from mozi.sim.errors import MoziError
from mozi.sim.source import AliceSource

from tests.host.keys import share_key
from tests.host.test_ptu import (
    HYDRAHARP2_T2,
    HYDRAHARP2_T3,
    PICOHARP_T2,
    _header,
    _picoharp_records,
    _tag,
    hydraharp2_records,
)

DEFAULT_COUNT = 2000
DEFAULT_SEED = 20261201
#: Longest error message accepted (one line: the file name and the problem).
MAX_MESSAGE = 400

_ROOT = Path(tempfile.mkdtemp(prefix="mozi-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def _folder(name: str) -> Path:
    """A fresh folder for one target's files (all removed when the process exits)."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_ROOT))

_INTS = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 2**31 - 1,
         2**31, 2**32 - 1, 2**32, 2**48, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-12, 4e-12, 5e-16, 1e-300, 5e-324, 1e300, 1e308,
           math.inf, -math.inf, math.nan, 0.5, 2.0]


# -- generic mutations ---------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq):
    """One element of a list (``rng.choice`` would turn big Python ints into floats)."""
    return seq[int(rng.integers(0, len(seq)))]


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One to four random edits of ``data``."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 9))
        n = len(b)
        pos = int(rng.integers(0, n)) if n else 0
        if op == 0 and n:                                   # flip a bit
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and n:                                 # a random byte
            b[pos] = int(rng.integers(0, 256))
        elif op == 2 and n:                                 # an interesting integer
            width = int(_pick(rng, [1, 2, 4, 8]))
            value = int(_pick(rng, _INTS)) % (1 << (8 * width))
            order = "little" if rng.random() < 0.5 else "big"
            b[pos:pos + width] = value.to_bytes(width, order)
        elif op == 3:                                       # insert random bytes
            b[pos:pos] = rng.bytes(int(rng.integers(1, 17)))
        elif op == 4 and n:                                 # delete a range
            del b[pos:pos + int(rng.integers(1, 33))]
        elif op == 5 and n:                                 # duplicate a range
            k = int(rng.integers(1, 33))
            b[pos:pos] = b[pos:pos + k]
        elif op == 6:                                       # truncate
            del b[pos:]
        elif op == 7:                                       # append
            b += rng.bytes(int(rng.integers(1, 65)))
        elif op == 8 and n > 1:                             # splice a range elsewhere
            k = int(rng.integers(1, 33))
            chunk = b[pos:pos + k]
            q = int(rng.integers(0, n))
            b[q:q + len(chunk)] = chunk
    return bytes(b)


def _random_json(rng: np.random.Generator, depth: int = 0):
    kind = int(rng.integers(0, 9 if depth < 4 else 6))
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return int(_pick(rng, _INTS)) * int(_pick(rng, [1, -1]))
    if kind == 3:
        return float(_pick(rng, _FLOATS))
    if kind == 4:
        return rng.bytes(int(rng.integers(0, 8))).decode("latin-1")
    if kind == 5:
        return 10**int(rng.integers(20, 400))
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if kind == 7:
        return {str(k): _random_json(rng, depth + 1) for k in range(int(rng.integers(0, 4)))}
    return "[" * 100_000 + "]" * 100_000                # deep nesting, as raw text


def _json_text(value) -> str:
    if isinstance(value, str) and value.startswith("[" * 100):
        return value
    return json.dumps(value, allow_nan=True)


def _replace_random_node(rng: np.random.Generator, doc):
    """A copy of a JSON document with one random node replaced by a random value."""
    doc = json.loads(json.dumps(doc))
    if not isinstance(doc, dict | list) or rng.random() < 0.1:
        return _random_json(rng)
    parent, key = None, None
    node = doc
    while isinstance(node, dict | list) and node and rng.random() < 0.7:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, keys[int(rng.integers(0, len(keys)))]
        node = node[key]
    if parent is None:
        return _random_json(rng)
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = _random_json(rng)
    return doc


# -- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    """A parser under fuzz: ``make(rng)`` builds one input, ``run(input)`` feeds it."""

    name: str
    make: Callable[[np.random.Generator], object]
    run: Callable[[object], None]


def _tag_seeds() -> list[bytes]:
    seeds = []
    with tempfile.TemporaryDirectory(dir=_ROOT) as d:
        p = Path(d) / "t.tags"
        rng = np.random.default_rng(1)
        for n, res, names, meta in ((20, 1, ("H", "V", "D", "A"), {"pass": "x"}),
                                    (0, 4, ("H", "V", "D", "A"), {}),
                                    (5, 1000, ("H", "V", "D", "A", "SYNC"), {"a": [1, 2]}),
                                    (3, 1, ("Q",), {"deep": {"er": None}})):
            ts = np.sort(rng.integers(0, 10**9, n)) * res
            tagfile.write_tags(p, ts, rng.integers(0, len(names), n), resolution_ps=res,
                               channel_names=names, metadata=meta)
            seeds.append(p.read_bytes())
    return seeds


def _fix_tag_crcs(raw: bytes) -> bytes:
    """Recompute both CRCs of a (mutated) tag file where its header size allows."""
    b = bytearray(raw)
    if len(b) < 40:
        return bytes(b)
    (hsize,) = struct.unpack_from("<I", b, 12)
    if 44 <= hsize <= len(b):
        struct.pack_into("<I", b, 36, zlib.crc32(b[hsize:]))
        struct.pack_into("<I", b, hsize - 4, zlib.crc32(b[:hsize - 4]))
    return bytes(b)


def _structured_tag_file(rng: np.random.Generator, seeds: list[bytes]) -> bytes:
    """A tag file built field by field with hostile values and valid CRCs."""
    names = [rng.bytes(int(rng.integers(0, 4))).decode("latin-1")
             for _ in range(int(rng.integers(1, 6)))]
    meta = _json_text(_random_json(rng)).encode("utf-8", "surrogatepass") \
        if rng.random() < 0.8 else rng.bytes(int(rng.integers(0, 40)))
    n = int(rng.integers(0, 6))
    rec = np.zeros(n, tagfile.RECORD_DTYPE)
    rec["t"] = rng.choice(np.array([0, 1, -1, 2**62, -2**63, 2**63 - 1], np.int64), n)
    rec["t"] = np.sort(rec["t"]) if rng.random() < 0.7 else rec["t"]
    rec["ch"] = rng.integers(0, 8, n)
    body = rec.tobytes()
    res = int(_pick(rng, _INTS + [10**12, 10**12 + 1]))
    count = n if rng.random() < 0.8 else int(_pick(rng, _INTS))
    head = tagfile._header(1, tuple(names), meta, count, zlib.crc32(body))
    h = bytearray(head)
    struct.pack_into("<Q", h, 16, res)
    if rng.random() < 0.2:
        struct.pack_into("<H", h, 10, int(_pick(rng, [0, 1, 255, 256, 0xFFFF])))
    if rng.random() < 0.2:
        struct.pack_into("<I", h, 32, int(_pick(rng, _INTS)) % 2**32)
    return _fix_tag_crcs(bytes(h) + body)


def _file_target(name: str, make, load) -> Target:
    folder = _folder(name)
    path = folder / "input"

    def run(data):
        path.write_bytes(data)
        load(path)

    return Target(name, make, run)


def tag_file_target() -> Target:
    seeds = _tag_seeds()

    def make(rng):
        r = rng.random()
        if r < 0.45:
            return _fix_tag_crcs(mutate(rng, seeds[int(rng.integers(0, len(seeds)))]))
        if r < 0.55:
            return mutate(rng, seeds[int(rng.integers(0, len(seeds)))])
        if r < 0.9:
            return _structured_tag_file(rng, seeds)
        return tagfile.MAGIC[:int(rng.integers(0, 9))] + rng.bytes(int(rng.integers(0, 80)))

    return _file_target("tagfile", make, lambda p: load_tags(p, "auto"))


def _ptu_file(rng: np.random.Generator) -> bytes:
    rectype = int(_pick(rng, [HYDRAHARP2_T2, PICOHARP_T2, HYDRAHARP2_T3, 0x00010204,
                              0x00010207, int(rng.integers(0, 2**31))]))
    res = float(_pick(rng, _FLOATS)) if rng.random() < 0.4 else 1e-12
    n = int(rng.integers(0, 40))
    if rng.random() < 0.5:
        ticks = np.sort(rng.integers(0, 50 * (1 << 25), n))
        if rectype == PICOHARP_T2:
            records = _picoharp_records(ticks, rng.integers(0, 4, n))
        else:
            records = hydraharp2_records(ticks, rng.integers(0, 6, n))
    else:          # raw words: overflow records with large counts, markers, sync, garbage
        special = np.array([0xFE000000 | 0x1FFFFFF, 0xFE000000 | 1, 0x80000000, 0xF0000000,
                            0x82000005], np.uint32)
        records = np.where(rng.random(n) < 0.5, rng.choice(special, n),
                           rng.integers(0, 2**32, n, dtype=np.uint64)).astype("<u4")
    announced = len(records) if rng.random() < 0.8 else int(_pick(rng, _INTS)) % 2**63
    head = _header(rectype, res, announced)
    if rng.random() < 0.2:                          # an extra hostile tag before Header_End
        end = head.rindex(b"Header_End")
        head = head[:end] + _tag("TTResultFormat_BitsPerRecord", int(_pick(rng, _INTS)) %
                                 2**63) + head[end:]
    return head + records.tobytes()


def ptu_target() -> Target:
    def make(rng):
        data = _ptu_file(rng)
        return mutate(rng, data) if rng.random() < 0.4 else data

    return _file_target("ptu", make, lambda p: load_tags(p, "auto"))


def _alice_doc() -> dict:
    src = AliceSource(12345)
    return {"format": "mozi-alice", "version": 1, "source": src.to_dict(),
            "metadata": {"pass": "micius2017", "first_slot": 100, "n_slots": 10**9,
                         "slot_period_ps": 10_000.0, "seed": 12345}}


def alice_target() -> Target:
    doc = _alice_doc()

    def make(rng):
        r = rng.random()
        if r < 0.6:
            return _json_text(_replace_random_node(rng, doc)).encode("utf-8", "surrogatepass")
        if r < 0.9:
            return mutate(rng, json.dumps(doc).encode())
        return rng.bytes(int(rng.integers(0, 60)))

    def load(path):
        alice = load_alice(path)
        # what the session does with it first: the period and a few of Alice's choices
        float(alice.metadata.get("slot_period_ps") or alice.source.config.slot_period_ps)
        alice.source.choices(np.arange(4, dtype=np.int64))

    return _file_target("alice", make, load)


def ciphertext_target() -> Target:
    folder = _folder("cipher")
    mos = KeyStore(folder / "moscow.db", party="moscow")
    uru = KeyStore(folder / "urumqi.db", party="urumqi")
    share_key(mos, uru, "moscow-urumqi",
              np.random.default_rng(3).integers(0, 2, 400_000, dtype=np.uint8))
    seeds = []
    for mode, size in (("otp", 0), ("otp", 300), ("aes-gcm", 1000)):
        (folder / "p").write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
        encrypt_file(folder / "p", folder / "c", mos, link="moscow-urumqi", mode=mode)
        seeds.append((folder / "c").read_bytes())
    out = folder / "out"
    ids = [r.key_id for r in uru.list()]

    def structured(rng):
        """A well-formed header naming real key IDs, with hostile fields."""
        mode = _pick(rng, [1, 2, 3])
        link = _pick(rng, [b"moscow-urumqi", b"other", b"", b"\xff"])
        sender = _pick(rng, [b"moscow", b"urumqi", b"kazan", b""])
        named = [uuid.UUID(_pick(rng, ids)).bytes for _ in range(int(rng.integers(0, 4)))]
        length = int(rng.integers(0, 64))
        body = rng.bytes(length + 16 + (12 if mode == 2 else 0))
        declared = length if rng.random() < 0.8 else int(_pick(rng, _INTS))
        return (struct.pack(">8sBBHQB", b"MOZICRYP", 2, mode, len(named), declared, len(link))
                + link + bytes([len(sender)]) + sender + b"".join(named) + body)

    def make(rng):
        r = rng.random()
        if r < 0.6:
            return mutate(rng, seeds[int(rng.integers(0, len(seeds)))])
        if r < 0.9:
            return structured(rng)
        return b"MOZICRYP" + rng.bytes(int(rng.integers(0, 60)))

    def load(path):
        try:
            decrypt_file(path, out, uru)
        except MoziError:
            if out.exists():
                raise AssertionError("a failed decryption left an output file") from None
            raise
        out.unlink()

    return _file_target("ciphertext", make, load)


def _link_frames() -> list[bytes]:
    ts = np.array([5, 900, 10**9], np.int64)
    masks = np.array([1, 6, 15], np.uint8)
    payloads = [
        (proto.Opcode.PING, b"mozi"),
        (proto.Opcode.READ_REG, struct.pack(">H", proto.register("SA_PERIOD").address)),
        (proto.Opcode.WRITE_REG, struct.pack(">HQ", proto.register("SA_OFFSET").address, 5)),
        (proto.Opcode.RANDOM_WORDS, struct.pack(">I", 8) + proto.pack_words2(np.arange(8) % 4)),
        (proto.Opcode.TAG_EVENTS, b"\x01" + proto.encode_tag_events(ts, masks)),
        (proto.Opcode.LOAD_RECORDS, b"\x00" * 5 + b"\x10" + struct.pack(">I", 4) + b"\x12\x34"),
        (proto.Opcode.SIFT_REPORTS, proto.encode_reports(np.array([16, 17]),
                                                         np.array([0, 1], np.uint8))),
        (proto.Opcode.TOEPLITZ_START, struct.pack(">II", 8, 4)),
        (proto.Opcode.TOEPLITZ_DATA, b"\x3c\x0f\xa5"),
        (proto.Opcode.TOEPLITZ_READ, b""),
        (proto.Opcode.DETECTIONS, proto.encode_detections(ts, masks & 1, masks >> 1 & 1,
                                                          masks > 1)),
    ]
    return [proto.encode_frame(op, p) for op, p in payloads]


def _fix_link_crc(frame: bytes) -> bytes:
    b = bytearray(frame)
    if len(b) >= 8 and b[:2] == proto.SYNC:
        (length,) = struct.unpack_from(">H", b, 4)
        end = 6 + length
        if len(b) >= end + 2:
            struct.pack_into(">H", b, end, proto.crc16(bytes(b[2:end])))
    return bytes(b)


def link_frame_target() -> Target:
    """The device link protocol, both ways: the device (model backend) parsing host frames,
    and the host's frame and record decoders parsing what a device sends."""
    seeds = _link_frames()
    device = ModelTransport()

    def make(rng):
        r = rng.random()
        if r < 0.7:
            k = int(rng.integers(1, 3))
            data = b"".join(seeds[int(rng.integers(0, len(seeds)))] for _ in range(k))
            return _fix_link_crc(mutate(rng, data))
        if r < 0.85:
            op = int(rng.integers(0, 256))
            body = bytes([op, int(rng.integers(0, 256))]) + struct.pack(
                ">H", int(rng.integers(0, 64))) + rng.bytes(
                int(rng.integers(0, 64)))
            return _fix_link_crc(proto.SYNC + body + b"\x00\x00")
        return rng.bytes(int(rng.integers(0, 40)))

    def run(data):
        device.write(data)                    # the device must answer, never raise
        answer = device.read()
        for stream in (data, answer):
            # the deframer both ends run takes any bytes; the strict splitter may refuse them
            frames = [f for f in proto.Deframer().feed(stream) if isinstance(f, proto.Frame)]
            with contextlib.suppress(MoziError):
                proto.decode_frames(stream)
            for f in frames:
                for decode in (proto.decode_tag_events, proto.decode_detections,
                               proto.decode_reports):
                    with contextlib.suppress(MoziError):
                        decode(f.payload)
        raise MoziError("done")               # (every input ends here: nothing to return)

    return Target("link-frames", make, run)


class _ChannelState:
    """A receiving channel whose pool state is restored before every input."""

    def __init__(self):
        key = np.random.default_rng(5).integers(0, 2, 128 + 2 * 64 * 64, dtype=np.uint8)
        self.sender_pool = AuthKeyPool.from_key(key, role=0)
        self.receiver_pool = AuthKeyPool.from_key(key, role=1)
        t_a, t_b = MemoryTransport.pair()
        self.sender = AuthenticatedChannel(self.sender_pool, t_a)
        self.receiver = AuthenticatedChannel(self.receiver_pool, t_b, max_failures=10**9)
        self.frames = [self.sender.open()]
        for kind, payload in (("sift-report", sifting.encode_report(
                np.array([5, 9, 10**6]), np.array([0, 1, 1], np.uint8))),
                ("key-ids", bytes(16)), ("relay", b"MZRL" + bytes(40)), ("x", b"")):
            self.frames.append(self.sender.send(kind, payload))
        self._saved = (list(self.receiver_pool._pads), list(self.receiver_pool._next))

    def restore(self):
        self.receiver_pool._pads, self.receiver_pool._next = (list(self._saved[0]),
                                                              list(self._saved[1]))
        self.receiver._opened_in = False

    def retag(self, frame: bytes) -> bytes:
        """Give a mutated frame the tag its header's direction and number call for."""
        if len(frame) < 13 + 4 + 8:
            return frame
        direction, seq = frame[3], int.from_bytes(frame[4:12], "big")
        if direction != 0 or seq > 60:
            return frame
        body = frame[:-8]
        return body + one_time_tag(self.sender._hasher, body, self.sender_pool.pad(0, seq)
                                   if seq >= self.sender_pool.next_seq(0) else
                                   self._original_pad(seq), 64)

    def _original_pad(self, seq: int) -> int:
        from mozi.host.crypto.auth import bits_to_int
        return bits_to_int(self._saved[0][0][seq * 64:(seq + 1) * 64])


def auth_frame_target() -> Target:
    """Authenticated-channel frames; mutants keep a valid tag, so they reach the checks of
    sequence, kind and length behind it."""
    state = _ChannelState()

    kinds = [b"open", b"relay", b"key-ids", b"x", b"\xff\xfe", b"", b"o" * 255]

    def make(rng):
        r = rng.random()
        frame = state.frames[int(rng.integers(0, len(state.frames)))]
        if r < 0.3:                           # well-formed fields, hostile values, valid tag
            kind = _pick(rng, kinds)
            payload = rng.bytes(int(rng.integers(0, 24)))
            plen = len(payload) if rng.random() < 0.8 else int(_pick(rng, _INTS)) % 2**32
            head = struct.pack(">2sBBQB", b"MZ", _pick(rng, [2, 2, 2, 1, 3]),
                               _pick(rng, [0, 0, 1, 2]), int(rng.integers(0, 8)), len(kind))
            return state.retag(head + kind + struct.pack(">I", plen) + payload + bytes(8))
        if r < 0.6:
            return state.retag(mutate(rng, frame))
        if r < 0.9:
            return mutate(rng, frame)
        return rng.bytes(int(rng.integers(0, 40)))

    def run(frame):
        state.restore()
        if frame[13:17] != b"open" and len(frame) > 25:
            state.receiver.verify_frame(state.frames[0])       # open first, then the mutant
        state.receiver.verify_frame(frame)

    return Target("auth-frames", make, run)


def _message_seeds() -> list[tuple[str, bytes]]:
    ann = relay.RelayAnnouncement(
        satellite="satellite", stations=("moscow", "urumqi"), links=("sat-moscow", "sat-urumqi"),
        relay_link="moscow-urumqi", n_bits=20,
        input_ids=((str(uuid.uuid4()),), (str(uuid.uuid4()), str(uuid.uuid4()))),
        key_ids=(str(uuid.uuid4()), str(uuid.uuid4())),
        layout=(("moscow", 10), ("urumqi", 10)), announcement=np.ones(20, np.uint8),
        eps_sec=2e-10, eps_cor=None)
    align = np.arange(4, dtype=">i8").tobytes() + bytes([0, 1, 0, 1]) + bytes([1, 1, 0, 0])
    verify = struct.pack(">I", 59) + bytes(8) + bytes(7)
    return [("relay", ann.to_bytes()),
            ("sift-report", sifting.encode_report(np.array([3, 200, 2**40]),
                                                  np.array([1, 0, 1], np.uint8))),
            ("align-sample", align), ("verify", verify),
            ("key-ids", struct.pack(">QQ", 64, 0) + uuid.uuid4().bytes),
            ("bits", sifting._packbits(np.array([1, 0, 1], np.uint8))),
            ("hello", wire.encode_hello("satellite", "sat-moscow", "session")),
            ("pass-start", session.PassStart(
                session_id=str(uuid.uuid4()), pass_id="micius2017", slot_period_ps=10000.0,
                first_slot=12, n_slots=3000, intensities=(0.8, 0.1, 0.0),
                probabilities=(0.5, 0.25, 0.25),
                parameters={"eps_sec": 1e-10, "alice_share": 0.5}).to_bytes())]


def message_target() -> Target:
    """The payloads of the session's and the relay's messages (the peer's own bytes)."""
    seeds = _message_seeds()
    decoders = {
        "relay": relay.RelayAnnouncement.from_bytes,
        "sift-report": sifting.decode_report,
        "align-sample": session.decode_align_sample,
        "verify": lambda p: session.decode_verify(p, 10, 50),
        "key-ids": session.decode_key_ids,
        "bits": lambda p: sifting._unpackbits(p, "flags"),
        "hello": wire.parse_hello,
        "pass-start": session.PassStart.from_bytes,
    }

    def make(rng):
        kind, payload = seeds[int(rng.integers(0, len(seeds)))]
        r = rng.random()
        return kind, (mutate(rng, payload) if r < 0.9 else rng.bytes(int(rng.integers(0, 40))))

    def run(item):
        kind, payload = item
        decoders[kind](payload)

    return Target("messages", make, run)


def _argument_files(folder: Path) -> dict[str, str]:
    """Files a fuzzed command line may name."""
    (folder / "dir").mkdir(exist_ok=True)
    (folder / "junk").write_bytes(b"junk" * 10)
    (folder / "empty").write_bytes(b"")
    tagfile.write_tags(folder / "tiny.tags", np.arange(50) * 10_000, np.arange(50) % 4)
    (folder / "alice.json").write_text(json.dumps(_alice_doc()))
    if not (folder / "a.db").exists():
        a = KeyStore(folder / "a.db", party="satellite")
        b = KeyStore(folder / "b.db", party="moscow")
        from mozi.host.keys.keystore import init_link
        init_link("l", a, b)
        share_key(a, b, "l", np.ones(5000, np.uint8))
        a.close()
        b.close()
    return {k: str(folder / k) for k in ("dir", "junk", "empty", "tiny.tags", "alice.json",
                                         "a.db", "b.db", "missing")}


_NUMBERS = ["0", "-1", "1", "2", "0.5", "1e309", "-1e309", "nan", "inf", "-inf", "1e-320",
            "99999999999999999999999", "abc", "", "0x10", "3e-12", "65", "128", "1.5"]
_WORDS = ["", "l", "sat-moscow", "a b", "é", "../x", "x" * 300, "-", "--", "satellite",
          "moscow", "=", "p=", "=q"]


def argument_target() -> Target:
    """Command lines: every command with hostile values, files and flags."""
    folder = _folder("argv")
    files = _argument_files(folder)
    paths = list(files.values())
    from mozi.host.cli import main

    def pick(rng, pool):
        return pool[int(rng.integers(0, len(pool)))]

    def value(rng):
        r = rng.random()
        return pick(rng, paths) if r < 0.4 else pick(rng, _NUMBERS) if r < 0.75 else \
            pick(rng, _WORDS)

    grammar = {
        "simulate": ["--pass", "--seed", "--eve", "--eve-fraction", "--clock-offset-ps",
                     "--drift-ppm", "--json", "--no-progress"],
        "session": ["--link", "--store-alice", "--store-bob", "--format", "--channels",
                    "--eps-sec", "--eps-cor", "--qber-threshold", "--insecure-seed",
                    "--alice-share", "--device", "--json"],
        "keys": ["--store", "--link", "--state", "--json"],
        "encrypt": ["--store", "--link", "--mode", "--json"],
        "decrypt": ["--store", "--json"],
        "link": ["--bits", "--tag-bits", "--store", "--link", "--json"],
        "demo": ["--seed", "--json", "--quick", "--no-progress"],
    }
    flags = {"--json", "--no-progress", "--quick"}

    def make(rng):
        command = pick(rng, list(grammar))
        argv = [command]
        if command == "link":
            argv.append(pick(rng, ["init", "status", "other"]))
        if command in ("session", "encrypt", "decrypt") or (command == "link"
                                                           and argv[1] == "init"):
            argv += [value(rng) for _ in range(int(rng.integers(0, 4)))]
        if command == "link" and argv[1] == "init" and rng.random() < 0.5:
            argv += [f"{pick(rng, _WORDS)}={pick(rng, paths)}" for _ in range(2)]
        for _ in range(int(rng.integers(0, 6))):
            opt = pick(rng, grammar[command])
            argv += [opt] if opt in flags else [opt, value(rng)]
        if command == "simulate":             # keep a valid run short: a 10-ms slice at most
            start = float(rng.uniform(0, 300))
            argv += ["--t-start", str(start), "--t-stop",
                     str(start + float(_pick(rng, [0.01, -1.0, 0.0]))),
                     "--out", pick(rng, [files["junk"], files["dir"] + "/sim"])]
        if command == "demo":                 # a demo may only fail early here
            argv += ["--out", files["junk"]]
        return argv

    def run(argv):
        out, err = io.StringIO(), io.StringIO()
        # relative paths in a fuzzed command line (new stores, outputs) land in the folder
        with contextlib.chdir(folder), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        text = err.getvalue()
        if "Traceback" in text:
            raise AssertionError(f"traceback on stderr: {text[-300:]}")
        if code not in (0, 1, 2, 3):
            raise AssertionError(f"exit status {code!r}")
        if code in (1, 2):
            lines = [ln for ln in text.splitlines() if ln.startswith("mozi")]
            if not lines or not lines[-1].split(":")[0].startswith("mozi"):
                raise AssertionError(f"no one-line error: {text[-300:]!r}")
        raise MoziError("done")

    return Target("arguments", make, run)


TARGETS: dict[str, Callable[[], Target]] = {
    "tagfile": tag_file_target,
    "ptu": ptu_target,
    "alice": alice_target,
    "ciphertext": ciphertext_target,
    "link-frames": link_frame_target,
    "auth-frames": auth_frame_target,
    "messages": message_target,
    "arguments": argument_target,
}


@dataclass
class Crash:
    """One input that did not end in a MoziError."""

    target: str
    index: int
    seed: int
    data: object
    error: str


def fuzz(name: str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[Crash]:
    """Feed ``count`` inputs to target ``name``; return the crashes."""
    target = TARGETS[name]()
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    crashes = []
    for i in range(count):
        data = target.make(rng)
        try:
            target.run(data)
        except MoziError as exc:
            text = str(exc)
            if "\n" in text or len(text) > MAX_MESSAGE:
                crashes.append(Crash(name, i, seed, data, f"error message of {len(text)} "
                                     f"characters, not one short line: {text[:300]!r}"))
            continue
        except (Exception, RecursionError):
            crashes.append(Crash(name, i, seed, data, traceback.format_exc(limit=-3)))
            continue
        # the parser accepted the input: fine (a valid or harmless mutant)
    return crashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[],
                        metavar="TARGET", help=f"targets (default all: {', '.join(TARGETS)})")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help="inputs per target")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    total = 0
    for name in args.targets or list(TARGETS):
        t0 = time.perf_counter()
        crashes = fuzz(name, args.count, args.seed)
        total += len(crashes)
        print(f"{name:12} {args.count:>8,} inputs  {len(crashes)} crashes  "
              f"({time.perf_counter() - t0:.0f} s, seed {args.seed})", flush=True)
        for c in crashes[:3]:
            print(f"  input {c.index}: {c.data!r:.200}\n{c.error}", flush=True)
    print(f"crashes: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
