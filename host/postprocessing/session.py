"""The QKD session engine: Bob's time tags and Alice's records → one key in both key stores.

A session is two halves that share nothing but frames: :func:`alice_session` (the satellite:
Alice's records, her device, her store) and :func:`bob_session` (a station: its tags, its
device, its store), each over a frame transport — a TCP connection between two node processes
(:mod:`mozi.host.nodes`), or :class:`~mozi.host.crypto.auth.LocalTransport` between two
threads in :func:`run_session`, which runs both halves in one process and merges their views.
Every piece of information that crosses from one to the other travels as a message of the
authenticated classical channel (:mod:`mozi.host.crypto.auth`) or, for Cascade's queries and
answers, as public frames whose whole transcripts are then authenticated; each party reaches
only its own device (:mod:`mozi.host.devices.device`). Alice opens with ``pass-start`` (the
pass, its slot range, the public parameters both must agree on); Bob answers ``pass-accept``
with the sessions whose key he holds staged, and Alice settles them (``resolved``). Steps:

1. **Timing recovery** (Bob): slot period, offset and jitter from the tags
   (:func:`mozi.host.postprocessing.timing.estimate_timing`).
2. **Slot assignment and basis decoding** on Bob's device, block by block, registers
   reprogrammed per block (:func:`mozi.host.postprocessing.timing.slot_blocks`,
   :class:`~mozi.host.devices.device.ReceiverDriver`).
3. **Slot alignment**: Bob discloses ``(slot, basis, bit)`` of a short run of detections,
   Alice answers the slot shift (:func:`mozi.host.postprocessing.timing.find_slot_shift`); the
   disclosed detections are dropped.
4. **Sifting** (:func:`mozi.host.postprocessing.sifting.run_sifting`): report, match flags on
   Alice's device, intensity announcement, X-basis disclosure → decoy statistics. Abort if the
   X-basis QBER exceeds the threshold.
5. **Error correction**: Cascade on the Z key; queries and answers cross the public link and
   their whole transcripts are then authenticated (:class:`ChannelParityOracle`); ``λ_EC`` is
   the exact count of disclosed parities. Abort if the Z QBER (errors corrected) exceeds the
   threshold.
6. **Verification**: Toeplitz tag of ``⌈log2(1/ε_cor)⌉`` bits
   (:mod:`mozi.host.postprocessing.verification`); a mismatch discards the block.
7. **Finite-key length** (Lim et al. 2014, :mod:`mozi.host.postprocessing.finite_key`); abort
   if ℓ ≤ 0.
8. **Privacy amplification** (Toeplitz, FFT; Alice's seed sent to Bob) and **storage**: the
   first bits of the final key refill the link's authentication key by exactly what this
   session took from it (:meth:`~mozi.host.crypto.auth.AuthKeyPool.refill_need`); the rest is cut
   by :func:`~mozi.host.keys.keystore.key_layout` into blocks Alice may send with (the first
   ``alice_share``) and blocks Bob may send with. Alice draws the key IDs and sends them with
   the refill sizes (``key-ids``); Bob *stages* the key and its refill (kept, not usable) and
   answers ``stored``; Alice commits hers and answers ``committed``; Bob commits his. A crash
   between staging and confirming leaves Bob's key staged, settled at the link's next session
   by Alice's record (committed: Bob commits it; otherwise he drops it), so both stores end
   with identical keys under identical IDs and senders, or neither with the session's key.

The classical channel is the link's lasting authentication key in the two key stores
(``mozi link init`` makes it): both ends open it, every pad is persisted before use, and
``auth_bits_consumed`` / ``auth_bits_replenished`` report exactly what left and entered it.

Randomness. Every random choice — Bob's squashing bits for multi-click events (the device's
random words), the Cascade shuffles, the verification and privacy-amplification seeds, the key
IDs — comes from a :class:`~mozi.host.crypto.randomness.SessionRandomness`: the OS CSPRNG, unless
``SessionConfig.insecure_seed`` asks for a reproducible run, which marks the result and every
stored key ``insecure_reproducible``.

An abort stores nothing and returns a :class:`SessionResult` with ``aborted=True`` and the
reason (a QBER above the threshold, a failed verification, a rejected frame — the first
tampered, replayed, reordered or forged one, ``auth_max_failures = 1`` — or a malformed
message); the aborting half tells the other with an authenticated ``abort`` frame. Input
that cannot be processed at all (too few tags, unknown channels, no authentication key)
raises a :class:`~mozi.sim.errors.MoziError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from mozi.host.crash import crashpoint
from mozi.host.crypto.auth import (
    AuthenticatedChannel,
    AuthKeyPoolExhausted,
    ChannelEmpty,
    LocalTransport,
    PeerAbort,
)
from mozi.host.crypto.randomness import SessionRandomness
from mozi.host.devices.device import (
    Detections,
    ReceiverDriver,
    TransmitterDriver,
    open_device,
)
from mozi.host.errors import AuthenticationError, KeyStoreError, ProtocolAbort
from mozi.host.keys.keystore import KeyStore, check_value, key_layout
from mozi.host.postprocessing import timing as tm
from mozi.host.postprocessing.cascade import RemoteParityOracle, reconcile, serve_parities
from mozi.host.postprocessing.finite_key import (
    DecoyStatistics,
    FiniteKeyParams,
    binary_entropy,
    finite_key_length,
)
from mozi.host.postprocessing.ldpc import AliceLdpc, BobLdpc, LdpcFailure
from mozi.host.postprocessing.privacy import privacy_amplify
from mozi.host.postprocessing.sifting import (
    alice_answer_report,
    alice_count_x_errors,
    alice_sifted,
    bob_disclose_x_bits,
    bob_receive_flags,
    bob_receive_x_errors,
    bob_send_report,
)
from mozi.host.postprocessing.verification import verification_tag, verification_tag_bits
from mozi.sim.errors import MoziError
from mozi.sim.model import CHANNELS, alice_record
from tqdm import tqdm

__all__ = [
    "AGREED_PARAMETERS",
    "MessageTap",
    "PassStart",
    "alice_session",
    "pass_key",
    "bob_session",
    "decode_align_sample",
    "decode_key_ids",
    "decode_verify",
    "SessionConfig",
    "SessionResult",
    "run_session",
]


#: Error-correction methods a session can use (:attr:`SessionConfig.reconciliation`).
RECONCILIATION_METHODS = ("cascade", "ldpc")


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """Parameters of one QKD session.

    Attributes
    ----------
    eps_sec, eps_cor : float
        Secrecy and correctness parameters.
    qber_threshold : float
        Abort when the X- or Z-basis QBER exceeds this.
    insecure_seed : int or None
        ``None`` (the default): every random choice comes from the OS CSPRNG. An integer makes
        the session reproducible — the same seed gives the same key — and therefore insecure:
        Bob's squashing bits, the hashing seeds and the key IDs follow from the seed, and the
        result and every stored key are marked ``insecure_reproducible``. For simulation and
        tests only.
    alice_share : float
        Fraction of the stored key that Alice may send with (the rest is Bob's), in [0, 1].
    device : str
        Device backend for both parties (:func:`mozi.host.devices.device.open_device`).
    alice_device, bob_device : str or None
        A backend for one party instead of ``device`` (e.g. Bob's receiver on a board).
    window_sigmas : float
        Half-width of the acceptance window in jitter RMS units.
    max_drift : float
        Largest relative clock drift searched for.
    max_slot_shift : int
        Slot alignment candidates ``±max_slot_shift`` around ``alignment_center``.
    alignment_center : int
        Expected ``Alice's slot − Bob's slot`` (0 when both clocks count slots from the same
        epoch, as with GPS-disciplined clocks; set it when Bob's tags start elsewhere).
    alignment_sample : int
        Detections Bob discloses for the alignment (removed from the key).
    auth_max_failures : int
        Rejected classical messages after which the session aborts. The default 1 aborts it
        at the first tampered, replayed, reordered or forged frame: whoever can inject one
        can as well drop the genuine one, so tolerating it buys nothing.
    cascade_passes : int
    reconciliation : str
        Error correction: ``"cascade"`` (interactive, f ≈ 1.03, thousands of round trips) or
        ``"ldpc"`` (blind syndrome decoding, one to three round trips,
        :mod:`~mozi.host.postprocessing.ldpc`). Both ends must agree.
    key_bases : str
        ``"z"``: the Z detections are the key, the X bits are disclosed to test it.
        ``"zx"``: nothing is disclosed; both bases are error corrected and distilled, each
        tested by the other's corrected errors (:func:`_finite_keys`). Both ends must agree.
    profile_bin_s : float
        Width of the profile bins (seconds of pass time).
    block_events : int
        Tag events per SlotAssigner block (registers are reprogrammed between blocks).
    """

    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_threshold: float = 0.11
    insecure_seed: int | None = None
    alice_share: float = 0.5
    device: str = "model"
    alice_device: str | None = None
    bob_device: str | None = None
    window_sigmas: float = 3.0
    max_drift: float = 2e-4
    max_slot_shift: int = 1 << 16
    alignment_center: int = 0
    alignment_sample: int = 512
    auth_max_failures: int = 1
    cascade_passes: int = 16
    reconciliation: str = "cascade"
    key_bases: str = "z"
    profile_bin_s: float = 10.0
    block_events: int = 50_000

    def __post_init__(self) -> None:
        for name in ("eps_sec", "eps_cor"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), not {v!r}")
        if not 0.0 < self.qber_threshold <= 0.5:
            raise ValueError(f"qber_threshold must lie in (0, 0.5], not {self.qber_threshold!r}")
        if self.insecure_seed is not None and (isinstance(self.insecure_seed, bool)
                                               or not isinstance(self.insecure_seed, int)
                                               or self.insecure_seed < 0):
            raise ValueError(f"insecure_seed must be a non-negative integer, "
                             f"not {self.insecure_seed!r}")
        if not 0.0 <= self.alice_share <= 1.0:
            raise ValueError(f"alice_share must lie in [0, 1], not {self.alice_share!r}")
        if isinstance(self.auth_max_failures, bool) or self.auth_max_failures < 1:
            raise ValueError("auth_max_failures must be a positive integer")
        if not self.window_sigmas > 0:
            raise ValueError("window_sigmas must be positive")
        if not 0 < self.max_drift < 0.01:
            raise ValueError("max_drift must lie in (0, 0.01)")
        if self.max_slot_shift < 0 or self.alignment_sample < 16:
            raise ValueError("max_slot_shift must be >= 0 and alignment_sample >= 16")
        if self.reconciliation not in RECONCILIATION_METHODS:
            raise ValueError(f"reconciliation must be one of {', '.join(RECONCILIATION_METHODS)}"
                             f", not {self.reconciliation!r}")
        if self.key_bases not in ("z", "zx"):
            raise ValueError(f"key_bases must be z or zx, not {self.key_bases!r}")
        if self.profile_bin_s <= 0 or self.block_events < 1000:
            raise ValueError("profile_bin_s must be positive and block_events >= 1000")


@dataclasses.dataclass
class SessionResult:
    """Outcome of :func:`run_session` (see :meth:`to_json` for the field list on the wire).

    Attributes
    ----------
    link : str
    detections : int
        Tag records in the input.
    in_window_fraction : float or None
        Fraction of tag events inside the SlotAssigner's acceptance window.
    sifted_bits : int
        Basis-matched detections (Z and X) after the alignment sample is removed.
    sifted_z_bits : int
        Of which Z basis: the sifted key given to error correction.
    qber_z : float or None
        Z-basis QBER from the errors error correction corrected (None if EC did not run).
    qber_x : float or None
        X-basis QBER from the disclosed X bits (with both bases as key: from the errors
        corrected in the X key).
    ec_leaked_bits : int or None
        Bits disclosed by error correction (``λ_EC``; both keys' with both bases).
    ec_efficiency : float or None
        ``λ_EC / (n · h(qber_z))`` (with both bases ``λ_EC / Σ n h(q)`` over the two keys).
    verification_ok : bool or None
    auth_bits_consumed : int
        Authentication key bits that left Alice's pool in this session (pads of the frames
        sent and accepted, and pads burned); Bob's pool lost the same.
    auth_bits_replenished : int
        Bits of the final key that refilled the authentication key (both ends).
    final_key_bits : int
        Stored key length: the finite-key length minus the refill (0 on abort).
    aborted : bool
    abort_reason : str or None
    key_ids : list of str
        IDs under which both stores hold the key.
    key_senders : list of str
        For each key ID, the party that may send with the block.
    key_check_values : list of str
        For each key ID, :func:`~mozi.host.keys.keystore.check_value` of the block (compare two
        stores or two backends without showing key bits).
    finite_key : dict or None
        The :class:`~mozi.host.postprocessing.finite_key.FiniteKeyResult` of the Z key as a
        dict.
    finite_key_x : dict or None
        That of the X key when both bases give key (``key_bases="zx"``).
    profile : list of dict
        Per ``profile_bin_s`` of pass time: ``t_s``, ``sifted_kbps``, ``qber``.
    timings : dict
        Seconds spent per step, and ``total``.
    timing : dict or None
        The recovered slot clock (:class:`~mozi.host.postprocessing.timing.TimingEstimate`).
    alignment : dict or None
        The slot alignment (:class:`~mozi.host.postprocessing.timing.AlignmentResult`).
    device_counters : dict
        Receiver and transmitter counters read from the devices.
    insecure_reproducible : bool
        The session's random choices came from ``insecure_seed``: its key is not secret.
    insecure_seed : int or None
        That seed (None for a secure session).
    staged : bool
        Bob's copy of the key is staged: Alice's word that she committed it never arrived,
        so the next session of the link settles it (both ends keep it, or neither).
    """

    link: str
    detections: int = 0
    in_window_fraction: float | None = None
    sifted_bits: int = 0
    sifted_z_bits: int = 0
    qber_z: float | None = None
    qber_x: float | None = None
    ec_leaked_bits: int | None = None
    ec_efficiency: float | None = None
    verification_ok: bool | None = None
    auth_bits_consumed: int = 0
    auth_bits_replenished: int = 0
    final_key_bits: int = 0
    aborted: bool = False
    abort_reason: str | None = None
    key_ids: list[str] = dataclasses.field(default_factory=list)
    key_senders: list[str] = dataclasses.field(default_factory=list)
    key_check_values: list[str] = dataclasses.field(default_factory=list)
    finite_key: dict | None = None
    finite_key_x: dict | None = None
    profile: list[dict] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    timing: dict | None = None
    alignment: dict | None = None
    device_counters: dict[str, int] = dataclasses.field(default_factory=dict)
    insecure_reproducible: bool = False
    insecure_seed: int | None = None
    staged: bool = False

    def to_json(self) -> dict:
        """A JSON-serialisable dict of every field (numpy scalars converted)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def _recv(channel: AuthenticatedChannel, kind: str) -> bytes:
    """Next accepted message of the channel, which must be of ``kind`` (see ``expect``)."""
    return channel.expect(kind)


@contextlib.contextmanager
def _parsing(kind: str):
    """Turn a malformed (authenticated, so the peer's own) message into a protocol abort."""
    try:
        yield
    except (struct.error, ValueError, IndexError, KeyError, TypeError, OverflowError,
            RecursionError) as exc:
        raise ProtocolAbort(f"malformed {kind!r} message ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None


def decode_align_sample(payload: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bob's alignment sample: ``n`` slots (i64), then ``n`` bases, then ``n`` bits (u8)."""
    with _parsing("align-sample"):
        if len(payload) % 10 or not payload:
            raise ValueError("length is not a positive multiple of 10 bytes")
        n = len(payload) // 10
        slots = np.frombuffer(payload, ">i8", n).astype(np.int64)
        basis = np.frombuffer(payload, np.uint8, n, 8 * n)
        bits = np.frombuffer(payload, np.uint8, n, 9 * n)
        if basis.max() > 1 or bits.max() > 1 or slots.min() < 0:
            raise ValueError("a basis, bit or slot out of range")
    return slots, basis, bits


def decode_verify(payload: bytes, n_key: int, t_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Alice's verification message: seed length u32, packed seed, packed tag."""
    with _parsing("verify"):
        (ns,) = struct.unpack_from(">I", payload)
        nbytes = (ns + 7) // 8
        if ns != n_key + t_bits - 1 or len(payload) != 4 + nbytes + (t_bits + 7) // 8:
            raise ValueError("seed or tag of the wrong length")
        seed = np.unpackbits(np.frombuffer(payload, np.uint8, nbytes, 4))[:ns]
        tag = np.unpackbits(np.frombuffer(payload, np.uint8, offset=4 + nbytes))[:t_bits]
    return seed, tag


def decode_key_ids(payload: bytes) -> tuple[int, int, list[str]]:
    """Alice's last message: the two refill sizes (u64 each), then the key IDs (16 bytes)."""
    with _parsing("key-ids"):
        if len(payload) < 16 or (len(payload) - 16) % 16:
            raise ValueError("wrong length")
        r0, r1 = struct.unpack_from(">QQ", payload)
        ids = [str(uuid.UUID(bytes=payload[i:i + 16])) for i in range(16, len(payload), 16)]
    return r0, r1, ids


MessageTap = Callable[[str, bytes], list]
"""A man in the middle on the classical channel: ``tap(direction, frame) -> frames``.

``direction`` is ``"alice->bob"`` or ``"bob->alice"``; the frames returned (none, the frame,
a modified frame, several) are delivered instead of ``frame``. Tests use it to tamper with,
drop, replay and reorder messages.
"""


def _tag_events(tags) -> tuple[np.ndarray, np.ndarray, float]:
    """Tag records → (timestamp ticks, channel mask) events, same-tick records OR-merged."""
    names = tuple(tags.channel_names)
    lut = np.zeros(max(len(names), 1), np.uint8)
    for i, name in enumerate(names):
        if name not in CHANNELS:
            raise MoziError(f"tag channel {name!r} is not one of {', '.join(CHANNELS)}")
        lut[i] = 1 << CHANNELS.index(name)
    ch = np.asarray(tags.channels)
    if ch.size and int(ch.max()) >= len(names):
        raise MoziError(f"tag channel index {int(ch.max())} has no name")
    res = int(tags.resolution_ps)
    if res < 1:
        raise MoziError(f"tag resolution must be a positive number of ps, not {res}")
    ticks = np.asarray(tags.timestamps_ps, np.int64) // res
    if ticks.size > 1 and np.any(np.diff(ticks) < 0):
        raise MoziError("tag timestamps are not in time order")
    if ticks.size and ticks[0] < 0:
        raise MoziError("tag timestamps must be non-negative")
    masks = lut[ch]
    if ticks.size == 0:
        return ticks, masks, float(res)
    starts = np.flatnonzero(np.concatenate([[True], ticks[1:] != ticks[:-1]]))
    return ticks[starts], np.bitwise_or.reduceat(masks, starts).astype(np.uint8), float(res)


def _profile(bin_s: float, rate: float, slots: np.ndarray, errors: np.ndarray,
             known: np.ndarray, slot_range: tuple[int, int] | None = None) -> list[dict]:
    """Per-bin sifted rate (kbit/s) and QBER of the sifted detections (both bases).

    A bin only partly inside the processed slot range (the first and last bins of a pass or
    of a slice) is divided by the time it covers, not by the whole bin, so the rate does not
    dip at the ends; ``duration_s`` says how long each bin covers.
    """
    if slots.size == 0:
        return []
    t = slots / rate
    b0 = math.floor(float(t.min()) / bin_s)
    idx = (np.floor(t / bin_s) - b0).astype(np.int64)
    nb = int(idx.max()) + 1
    n = np.bincount(idx, minlength=nb)
    k = np.bincount(idx, weights=known, minlength=nb)
    e = np.bincount(idx, weights=errors & known, minlength=nb)
    starts = (b0 + np.arange(nb)) * bin_s
    ends = starts + bin_s
    if slot_range is not None:
        starts = np.maximum(starts, slot_range[0] / rate)
        ends = np.minimum(ends, slot_range[1] / rate)
    covered = np.maximum(ends - starts, 0.0)
    return [{"t_s": round((b0 + i) * bin_s, 3),
             "duration_s": round(float(covered[i]), 3),
             "sifted_kbps": round(float(n[i]) / covered[i] / 1e3, 4),
             "qber": round(float(e[i] / k[i]), 6) if k[i] else None} for i in range(nb)]


# -- the pass announcement -----------------------------------------------------------------

#: Session parameters both parties must hold alike (Bob refuses a session whose differ).
AGREED_PARAMETERS = ("eps_sec", "eps_cor", "qber_threshold", "alice_share", "cascade_passes",
                     "reconciliation", "key_bases")
_PASS_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PassStart:
    """Alice's first message of a session: which pass, and its public parameters.

    Everything here is public: the pass name, the slot clock, the simulated slot range, the
    decoy intensities and their probabilities, and the session parameters both ends must
    share (:data:`AGREED_PARAMETERS`). Alice's choices of basis, bit and intensity stay with
    her.
    """

    session_id: str
    pass_id: str | None
    slot_period_ps: float
    first_slot: int | None
    n_slots: int | None
    intensities: tuple[float, ...]
    probabilities: tuple[float, ...]
    parameters: dict

    def to_bytes(self) -> bytes:
        return json.dumps({"version": _PASS_VERSION, **dataclasses.asdict(self)},
                          sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, payload: bytes) -> PassStart:
        with _parsing("pass-start"):
            doc = json.loads(payload.decode("utf-8"))
            if not isinstance(doc, dict) or doc.pop("version", None) != _PASS_VERSION:
                raise ValueError(f"not a version {_PASS_VERSION} pass announcement")
            start = cls(session_id=str(uuid.UUID(str(doc["session_id"]))),
                        pass_id=None if doc["pass_id"] is None else str(doc["pass_id"]),
                        slot_period_ps=float(doc["slot_period_ps"]),
                        first_slot=None if doc["first_slot"] is None else int(doc["first_slot"]),
                        n_slots=None if doc["n_slots"] is None else int(doc["n_slots"]),
                        intensities=tuple(float(v) for v in doc["intensities"]),
                        probabilities=tuple(float(v) for v in doc["probabilities"]),
                        parameters=dict(doc["parameters"]))
            if not start.slot_period_ps > 0 or len(start.intensities) != 3 \
                    or len(start.probabilities) != 3:
                raise ValueError("bad slot period or decoy settings")
        return start

    @property
    def pass_key(self) -> str | None:
        """The detections the session distils: the pass and its slot range."""
        return pass_key(self.pass_id, self.first_slot, self.n_slots)

    def slot_range(self) -> tuple[int, int] | None:
        if self.first_slot is None or self.n_slots is None:
            return None
        return self.first_slot, self.first_slot + self.n_slots


def pass_key(pass_id: str | None, first_slot: int | None, n_slots: int | None) -> str | None:
    """Name of the detections of a pass slice: ``pass[first,end)`` (``pass`` alone when the
    range is not known); one name per set of raw data, so a node can refuse to use it twice."""
    if pass_id is None:
        return None
    if first_slot is None or n_slots is None:
        return str(pass_id)
    return f"{pass_id}[{int(first_slot)},{int(first_slot) + int(n_slots)})"


def _agreed(config: SessionConfig) -> dict:
    return {name: getattr(config, name) for name in AGREED_PARAMETERS}


def pass_start(alice, config: SessionConfig, session_id: str) -> PassStart:
    """Alice's announcement of the pass in ``alice`` (an :class:`~mozi.sim.link.AliceFile`)."""
    source = alice.source
    meta = dict(getattr(alice, "metadata", {}) or {})
    first, count = meta.get("first_slot"), meta.get("n_slots")
    return PassStart(session_id=session_id, pass_id=meta.get("pass") or None,
                     slot_period_ps=float(meta.get("slot_period_ps")
                                          or source.config.slot_period_ps),
                     first_slot=None if first is None else int(first),
                     n_slots=None if count is None else int(count),
                     intensities=tuple(float(v) for v in source.config.intensities),
                     probabilities=tuple(float(v) for v in source.config.probabilities),
                     parameters=_agreed(config))


# -- the two halves --------------------------------------------------------------------------

_ABORTS = (ProtocolAbort, AuthenticationError, AuthKeyPoolExhausted, ChannelEmpty)
_PEER = "the peer aborted the session"
_NEVER_ARRIVED = "a message of the classical channel never arrived"


class _Half:
    """What one party's half keeps while it runs: its store, channel, result and clock."""

    def __init__(self, store: KeyStore, link: str, config: SessionConfig,
                 result: SessionResult, step: Callable[[str, float], float] | None):
        self.store = store
        self.link = link
        self.config = config
        self.result = result
        self.clock = time.perf_counter
        self._step = step
        self.peer = store.peer(link)
        if self.peer is None or not store.has_auth_key(link):
            raise MoziError(f"{store.party!r} has no authentication key for link {link!r}; "
                            f"create one with `mozi link init`")
        self.pool = store.auth_key(link)
        self.session_id: str | None = None

    def step(self, name: str, t0: float) -> float:
        if self._step is not None:
            return self._step(name, t0)
        self.result.timings[name] = round(self.clock() - t0, 4)
        return self.clock()

    def channel(self, transport) -> AuthenticatedChannel:
        return AuthenticatedChannel(self.pool, transport,
                                    max_failures=self.config.auth_max_failures)

    def run(self, channel: AuthenticatedChannel, body: Callable[[], None]) -> SessionResult:
        """Run ``body``; an abort is recorded (and told to the peer), nothing is stored."""
        t_all = self.clock()
        try:
            body()
        except _ABORTS as exc:
            self.result.aborted = True
            self.result.abort_reason = _reason(exc)
            if not isinstance(exc, PeerAbort):
                channel.abort(self.result.abort_reason)
            self._forget(self.result.abort_reason)
        except BaseException as exc:
            channel.abort(f"{type(exc).__name__}: {exc}"[:300])
            self._forget(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.result.auth_bits_consumed = int(channel.consumed_bits)
            self.result.timings["total"] = round(self.clock() - t_all, 4)
        return self.result

    def _forget(self, reason: str) -> None:
        r = self.result
        if not r.key_ids or r.aborted:
            r.final_key_bits = 0
            r.key_ids, r.key_senders, r.key_check_values = [], [], []
        if self.session_id is not None:
            with contextlib.suppress(KeyStoreError):
                self.store.abort_session(self.session_id, reason=reason)


def alice_session(transport, alice, *, link: str, store: KeyStore,
                  config: SessionConfig = SessionConfig(), session_id: str | None = None,
                  once_per_pass: bool = False,
                  step: Callable[[str, float], float] | None = None) -> SessionResult:
    """Alice's half of a session (the satellite): her record, her device, her key store.

    Parameters
    ----------
    transport : object with ``send(bytes)`` and ``recv() -> bytes``
        Frames to and from Bob (:class:`~mozi.host.crypto.auth.LocalTransport`, a TCP
        connection); nothing else passes between the halves.
    alice : mozi.sim.link.AliceFile
        Her record of the pass.
    link : str
        The link; ``store`` holds its authentication key.
    store : KeyStore
    config : SessionConfig
    session_id : str, optional
        The session's UUID (drawn from the session randomness if not given).
    once_per_pass : bool
        Refuse a pass the link has used before (:meth:`KeyStore.begin_session`); nodes set it.

    Returns
    -------
    SessionResult
        Alice's view; ``aborted`` with the reason when either half gave up.
    """
    rand = SessionRandomness(config.insecure_seed)
    result = SessionResult(link=link, insecure_reproducible=rand.insecure_reproducible,
                           insecure_seed=rand.insecure_seed)
    half = _Half(store, link, config, result, step)
    ch = half.channel(transport)
    sid = session_id or rand.uuids("session", 1)[0]
    start = pass_start(alice, config, sid)

    def body():
        store.begin_session(sid, link, pass_id=start.pass_key, once_per_pass=once_per_pass)
        half.session_id = sid
        ch.open()
        ch.send("pass-start", start.to_bytes())
        with _parsing("pass-accept"):
            staged = [str(uuid.UUID(k)) for k in
                      json.loads(_recv(ch, "pass-accept").decode())["staged"]]
        if staged:
            # Bob holds keys of earlier sessions waiting for this end's commit: say which
            # committed; one that did not can never commit any more (its session is over)
            done = [store.session_state(k) == "committed" for k in staged]
            for k, ok in zip(staged, done, strict=True):
                if not ok:
                    with contextlib.suppress(KeyStoreError):
                        store.abort_session(k, reason="never committed; the peer dropped it")
            ch.send("resolved", bytes(done))
        _alice_protocol(alice, start, ch, half, rand)

    return half.run(ch, body)


def bob_session(transport, tags, *, link: str, store: KeyStore,
                config: SessionConfig = SessionConfig(), once_per_pass: bool = False,
                step: Callable[[str, float], float] | None = None) -> SessionResult:
    """Bob's half of a session (a ground station): his tags, his device, his key store.

    Parameters as in :func:`alice_session`, with ``tags`` (his time tags,
    :class:`~mozi.sim.tagfile.TagData`, or a function that finds them from Alice's
    :class:`PassStart`, raising :class:`~mozi.host.errors.ProtocolAbort` for a pass it does not
    have) for Alice's record. Everything Bob learns of the pass comes in Alice's
    ``pass-start`` message.

    Bob *stages* the final key and commits it when Alice says she did; when her word never
    comes (a crash, a cut link) the key stays staged and the next session of the link settles
    it (:meth:`KeyStore.resolve_staged`): both ends then hold it, or neither.
    """
    rand = SessionRandomness(config.insecure_seed)
    result = SessionResult(link=link, insecure_reproducible=rand.insecure_reproducible,
                           insecure_seed=rand.insecure_seed)
    half = _Half(store, link, config, result, step)
    ch = half.channel(transport)
    events = None if callable(tags) else _tag_events(tags)   # bad input raises at once

    def body():
        ch.open()
        start = PassStart.from_bytes(_recv(ch, "pass-start"))
        nonlocal events, tags
        if events is None:
            tags = tags(start)
            events = _tag_events(tags)
        result.detections = int(len(tags))
        if start.parameters != _agreed(config):
            raise ProtocolAbort(f"the peers' session parameters differ: Alice "
                                f"{start.parameters}, Bob {_agreed(config)}")
        try:
            store.begin_session(start.session_id, link, pass_id=start.pass_key,
                                once_per_pass=once_per_pass)
        except KeyStoreError as exc:
            raise ProtocolAbort(str(exc)) from None
        half.session_id = start.session_id
        staged = store.staged_sessions(link)
        ch.send("pass-accept", json.dumps({"staged": staged}).encode())
        if staged:
            done = _recv(ch, "resolved")
            if len(done) != len(staged) or set(done) - {0, 1}:
                raise ProtocolAbort("malformed 'resolved' message")
            for k, ok in zip(staged, done, strict=True):
                store.resolve_staged(k, committed=bool(ok), pool=half.pool)
        _bob_protocol(events, start, ch, half, rand)

    return half.run(ch, body)


def _bob_protocol(events, start: PassStart, ch, half: _Half, rand) -> None:
    config, result = half.config, half.result
    clock = half.clock
    t0 = clock()
    period_ps = start.slot_period_ps
    rate = 1e12 / period_ps
    slot_range = start.slot_range()
    ticks, masks, res = events
    if ticks.size < 100:
        raise tm.TimingError(f"{ticks.size} tag events are too few for a session")

    # 1. timing recovery (unusable tags are an input error, not an abort)
    est = tm.estimate_timing(ticks, period_ps / res, max_drift=config.max_drift,
                             seed=rand.integer("timing"))
    result.timing = est.to_json()
    t0 = half.step("timing", t0)

    # 2. the receiver device: slot assignment + decoding, block by block
    with open_device(config.bob_device or config.device, role="receiver") as bob_dev:
        rx = ReceiverDriver(bob_dev, random_key=rand.stream_key("decoder"))
        rx.reset()
        blocks = tm.slot_blocks(ticks, est, frac_bits=rx.frac_bits,
                                window_sigmas=config.window_sigmas,
                                max_events=config.block_events)
        det = rx.run_blocks(ticks, masks, blocks)
        counters = rx.counters()
    result.device_counters.update(counters)
    n_events = counters["RX_EVENTS"]
    result.in_window_fraction = 1.0 - counters["RX_REJECTED"] / n_events if n_events else None
    det = _strictly_increasing(det)
    t0 = half.step("device", t0)

    # 3. slot alignment: a run of detections disclosed, Alice answers the shift
    if det.slots.size < config.alignment_sample + 16:
        raise ProtocolAbort(f"only {det.slots.size} detections: too few to align and sift")
    pick = tm.alignment_sample(det.slots, config.alignment_sample)
    ch.send("align-sample", det.slots[pick].astype(">i8").tobytes()
            + det.basis[pick].tobytes() + det.bit[pick].tobytes())
    with _parsing("align-shift"):
        (shift,) = struct.unpack(">q", _recv(ch, "align-shift"))
    keep = np.ones(det.slots.size, bool)
    keep[pick] = False
    a_slots = det.slots + shift
    if slot_range is not None:
        keep &= (a_slots >= slot_range[0]) & (a_slots < slot_range[1])
    a_slots = a_slots[keep]
    b_basis, b_bits = det.basis[keep], det.bit[keep]
    t0 = half.step("alignment", t0)

    # 4. sifting
    bob_send_report(ch, a_slots, b_basis)
    b_sift = bob_receive_flags(ch, a_slots, b_basis, b_bits)
    both = config.key_bases == "zx"
    if both:
        # no X bits disclosed: the X detections become key too
        stats = None
        n_z, n_x = _sifted_counts(result, b_sift.key.size, b_sift.x_bits.size)
    else:
        bob_disclose_x_bits(ch, b_sift)
        b_sift = bob_receive_x_errors(ch, b_sift)
        stats = b_sift.stats
        n_z, qber_x = _sifted(result, stats)
        n_x = b_sift.x_slots.size
    # the profile's QBER is that of the Z key as error correction finds it (Bob never learns
    # which X bits were wrong, only how many)
    all_slots = np.concatenate([b_sift.slots, b_sift.x_slots])
    order = np.argsort(all_slots, kind="stable")

    def profile(z_err: np.ndarray, z_known: bool) -> list[dict]:
        errs = np.concatenate([z_err, np.zeros(n_x, bool)])[order]
        known = np.concatenate([np.full(n_z, z_known), np.zeros(n_x, bool)])[order]
        return _profile(config.profile_bin_s, rate, all_slots[order], errs, known, slot_range)

    result.profile = profile(np.zeros(n_z, bool), False)
    t0 = half.step("sifting", t0)
    if not both:
        _check_x(result, config)

    # 5. error correction of each key part (Z; and X when both bases give key)
    if both:
        with _parsing("ec-estimate"):
            (estimate,) = struct.unpack(">d", _recv(ch, "ec-estimate"))
            if not 0.0 <= estimate <= 0.5:
                raise ValueError("QBER estimate outside [0, 1/2]")
        raw = [b_sift.key, b_sift.x_bits]
    else:
        estimate, raw = qber_x, [b_sift.key]
    fixed, leaks = [], []
    for part in raw:
        key, leaked = _bob_correct(ch, part, _qber_estimate(estimate), config)
        fixed.append(key)
        leaks.append(leaked)
        # the X key's estimate: the Z QBER just measured, far tighter than the sample's
        estimate = int((key != part).sum()) / part.size
    flips = [k != r for k, r in zip(fixed, raw, strict=True)]
    if both:
        errors = (np.bincount(b_sift.intensity[flips[0]], minlength=3)[:3],
                  np.bincount(b_sift.x_intensity[flips[1]], minlength=3)[:3])
        ch.send("ec-errors", struct.pack(">6Q", *(int(v) for e in errors for v in e)))
        stats = _both_bases_statistics(b_sift.intensity, b_sift.x_intensity, *errors)
        _corrected_both(result, leaks, [int(f.sum()) for f in flips], (n_z, n_x))
        _check_x(result, config)
    else:
        _corrected(result, leaks[0], int(flips[0].sum()), n_z)
    result.profile = profile(flips[0], True)
    t0 = half.step("error correction", t0)
    _check_z(result, config)
    bob_key = np.concatenate(fixed)

    # 6. verification
    t_bits = verification_tag_bits(config.eps_cor)
    seed_b, tag_recv = decode_verify(_recv(ch, "verify"), bob_key.size, t_bits)
    ok = bool(np.array_equal(verification_tag(bob_key, seed_b, t_bits), tag_recv))
    ch.send("verify-result", bytes([ok]))
    result.verification_ok = ok
    t0 = half.step("verification", t0)
    if not ok:
        raise ProtocolAbort("verification failed: the corrected keys differ; block discarded")

    # 7. finite-key length of each part, as Alice computes it
    lengths = _finite_keys(start, config, stats, leaks, [int(f.sum()) for f in flips], result)

    # 8. privacy amplification of each part with Alice's seeds; the layout and IDs she sends
    sizes = [p.size + ell - 1 if ell else 0 for p, ell in zip(fixed, lengths, strict=True)]
    with _parsing("pa-seed"):
        raw_seed = _recv(ch, "pa-seed")
        if len(raw_seed) != sum((n + 7) // 8 for n in sizes):
            raise ValueError("seed of the wrong length")
        seeds, at = [], 0
        for n in sizes:
            seeds.append(np.unpackbits(np.frombuffer(raw_seed, np.uint8, (n + 7) // 8, at))[:n])
            at += (n + 7) // 8
    key_b = np.concatenate([privacy_amplify(p, ell, seed_bits=sd)[0] if ell
                            else np.zeros(0, np.uint8)
                            for p, ell, sd in zip(fixed, lengths, seeds, strict=True)])
    total = key_b.size
    r0, r1, ids = decode_key_ids(_recv(ch, "key-ids"))
    # the refill must be exactly what his pool lacks at the session's end ("stored" out,
    # "committed" in), the layout his own rule's
    need = half.pool.refill_need(pending_out=1, pending_in=1)
    n_key = total - r0 - r1
    senders = (half.peer, half.store.party)
    layout = key_layout(n_key, senders, first_share=config.alice_share) if n_key > 0 else []
    if (r0, r1) != (min(need[0], total), min(need[1], total - r0)) \
            or len(ids) != len(layout):
        raise ProtocolAbort("the peers disagree on the authentication refill or the key layout")
    t0 = half.step("privacy amplification", t0)

    cut = r0 + r1
    half.store.stage_session(half.link, peer=half.peer, session_id=start.session_id,
                             refill=(key_b[:r0], key_b[r0:cut]), key_bits=key_b[cut:],
                             layout=layout, key_ids=ids,
                             meta=_key_meta(start, config, result, rand))
    crashpoint("bob-staged")
    ch.send("stored", b"")
    _stored(result, key_b, cut, layout, ids)
    try:
        ch.expect("committed")
    except PeerAbort:
        half.store.resolve_staged(start.session_id, committed=False, pool=half.pool)
        raise
    except _ABORTS as exc:
        # Alice may have committed: the key stays staged until the next session settles it
        result.abort_reason = f"key staged, Alice's commit not confirmed yet ({_reason(exc)})"
        result.staged = True
        return
    crashpoint("bob-confirmed")
    half.store.resolve_staged(start.session_id, committed=True, pool=half.pool)
    half.step("storage", t0)


def _alice_protocol(alice, start: PassStart, ch, half: _Half, rand) -> None:
    config, result = half.config, half.result
    clock = half.clock
    t0 = clock()
    source = alice.source
    slot_range = start.slot_range()

    # 3. slot alignment
    s_slots, s_basis, s_bits = decode_align_sample(_recv(ch, "align-sample"))
    try:
        align = tm.find_slot_shift(s_slots, s_basis, s_bits, source.choices,
                                   center=config.alignment_center,
                                   max_shift=config.max_slot_shift, slot_range=slot_range,
                                   max_error=max(0.3, config.qber_threshold + 0.15))
    except tm.TimingError as exc:
        raise ProtocolAbort(str(exc)) from None
    ch.send("align-shift", struct.pack(">q", align.shift))
    result.alignment = dataclasses.asdict(align)
    t0 = half.step("alignment", t0)

    # 4. sifting on Alice's device
    def records_at(slots: np.ndarray) -> np.ndarray:
        return alice_record(*source.choices(slots))

    both = config.key_bases == "zx"
    with open_device(config.alice_device or config.device, role="transmitter") as alice_dev:
        tx = TransmitterDriver(alice_dev)
        tx.reset()
        report = alice_answer_report(ch, tx, records_at)
        a_sift = alice_sifted(report) if both else alice_count_x_errors(ch, report)
        result.device_counters.update(tx.counters())
    if both:
        n_z, n_x = _sifted_counts(result, a_sift.key.size, a_sift.x_bits.size)
        stats = None
    else:
        stats = a_sift.stats
        n_z, qber_x = _sifted(result, stats)
    t0 = half.step("sifting", t0)
    if not both:
        _check_x(result, config)

    # 5. error correction of each key part (Z; and X when both bases give key); with both,
    # the Z key's QBER estimate is the disclosed alignment sample's, two standard deviations
    # up (a few hundred bits: an LDPC rate from the bare rate would often fail)
    if both:
        rate, compared = float(result.alignment["error_rate"]), int(result.alignment["compared"])
        estimate = min(0.5, rate + 2.0 * math.sqrt(max(rate, 1.0 / max(compared, 1))
                                                   * (1.0 - rate) / max(compared, 1)))
        ch.send("ec-estimate", struct.pack(">d", estimate))
        raw = [a_sift.key, a_sift.x_bits]
    else:
        estimate, raw = qber_x, [a_sift.key]
    leaks, flipped = [], []
    for i, part in enumerate(raw):
        leaked, f = _alice_correct(ch, part, _qber_estimate(estimate), config, rand,
                                   "cascade" if i == 0 else "cascade-x")
        leaks.append(leaked)
        flipped.append(f)
        estimate = f / part.size      # as Bob: the X key's estimate is the Z QBER measured
    if both:
        with _parsing("ec-errors"):
            counts = np.array(struct.unpack(">6Q", _recv(ch, "ec-errors")), np.int64)
            errors = (counts[:3], counts[3:])
            if [int(e.sum()) for e in errors] != flipped:
                raise ValueError("error counts per intensity disagree with the totals")
            stats = _both_bases_statistics(a_sift.intensity, a_sift.x_intensity, *errors)
        _corrected_both(result, leaks, flipped, (n_z, n_x))
        _check_x(result, config)
    else:
        _corrected(result, leaks[0], flipped[0], n_z)
    t0 = half.step("error correction", t0)
    _check_z(result, config)
    a_key = np.concatenate(raw)

    # 6. verification: seed and tag to Bob, his verdict back
    t_bits = verification_tag_bits(config.eps_cor)
    vseed = rand.bits("verify", a_key.size + t_bits - 1)
    tag_a = verification_tag(a_key, vseed, t_bits)
    ch.send("verify", struct.pack(">I", vseed.size) + np.packbits(vseed).tobytes()
            + np.packbits(tag_a).tobytes())
    result.verification_ok = _recv(ch, "verify-result") == b"\x01"
    t0 = half.step("verification", t0)
    if not result.verification_ok:
        raise ProtocolAbort("verification failed: the corrected keys differ; block discarded")

    # 7. finite-key length of each part
    lengths = _finite_keys(start, config, stats, leaks, flipped, result)

    # 8. privacy amplification of each part; the refill of what the session took, the layout,
    # the IDs
    seeds = [rand.bits("pa" if i == 0 else "pa-x", p.size + ell - 1) if ell
             else np.zeros(0, np.uint8) for i, (p, ell) in enumerate(zip(raw, lengths,
                                                                        strict=True))]
    key_a = np.concatenate([privacy_amplify(p, ell, seed_bits=sd)[0] if ell
                            else np.zeros(0, np.uint8)
                            for p, ell, sd in zip(raw, lengths, seeds, strict=True)])
    ch.send("pa-seed", b"".join(np.packbits(sd).tobytes() for sd in seeds))
    total = key_a.size
    # pending at the session's end: "key-ids" and "committed" out, Bob's "stored" in
    need = half.pool.refill_need(pending_out=2, pending_in=1)
    r0 = min(need[0], total)
    r1 = min(need[1], total - r0)
    n_key = total - r0 - r1
    senders = (half.store.party, half.peer)
    layout = key_layout(n_key, senders, first_share=config.alice_share) if n_key else []
    ids = rand.uuids("key-ids", len(layout))
    ch.send("key-ids", struct.pack(">QQ", r0, r1) + b"".join(uuid.UUID(k).bytes
                                                              for k in ids))
    t0 = half.step("privacy amplification", t0)

    _recv(ch, "stored")
    cut = r0 + r1
    crashpoint("alice-before-commit")
    half.store.commit_session(half.link, peer=half.peer, pool=half.pool,
                              refill=(key_a[:r0], key_a[r0:cut]), key_bits=key_a[cut:],
                              layout=layout, key_ids=ids,
                              meta=_key_meta(start, config, result, rand),
                              session_id=start.session_id)
    _stored(result, key_a, cut, layout, ids)
    crashpoint("alice-committed")
    # committed: from here on Alice never aborts; if Bob misses this he asks next time
    with contextlib.suppress(*_ABORTS, OSError):
        ch.send("committed", b"")
    half.step("storage", t0)


# -- steps both halves share -----------------------------------------------------------------

def _alice_ldpc(ch, key: np.ndarray, qber: float) -> tuple[int, int | None]:
    """Alice's LDPC half: syndromes, then reveals on request. Returns (leaked, flipped), the
    flip count from Bob's report, or None when a frame was not decoded."""
    alice = AliceLdpc(key, qber)
    ch.send("ldpc-syndromes", alice.syndromes())
    while True:
        with _parsing("ldpc-request"):
            try:
                reveal = alice.answer(_recv(ch, "ldpc-request"))
            except LdpcFailure:
                return alice.leaked_bits, None
        if reveal is None:
            break
        ch.send("ldpc-reveal", reveal)
    with _parsing("ldpc-flips"):
        (flipped,) = struct.unpack(">Q", _recv(ch, "ldpc-flips"))
        if flipped > key.size:
            raise ValueError("more flips than bits")
    return alice.leaked_bits, int(flipped)


def _bob_ldpc(ch, key: np.ndarray, qber: float) -> tuple[np.ndarray | None, int]:
    """Bob's LDPC half; returns his corrected key (None when a frame was not decoded) and
    the bits Alice disclosed."""
    bob = BobLdpc(key, qber)
    with _parsing("ldpc-syndromes"):
        request = bob.first(_recv(ch, "ldpc-syndromes"))
    while request[0] == 0:
        ch.send("ldpc-request", request)
        with _parsing("ldpc-reveal"):
            request = bob.retry(_recv(ch, "ldpc-reveal"))
    ch.send("ldpc-request", request)
    if request[0] != 1:
        return None, bob.leaked_bits
    ch.send("ldpc-flips", struct.pack(">Q", int((bob.corrected != key).sum())))
    return bob.corrected, bob.leaked_bits


def _qber_estimate(qber_x: float) -> float:
    """Error correction's QBER estimate, bounded to a sane range."""
    return min(max(qber_x, 1e-3), 0.25)


def _sifted_counts(result: SessionResult, n_z: int, n_x: int) -> tuple[int, int]:
    result.sifted_z_bits = n_z
    result.sifted_bits = n_z + n_x
    if n_x == 0 or n_z == 0:
        raise ProtocolAbort("no sifted detections in one of the bases")
    return n_z, n_x


def _corrected_both(result: SessionResult, leaks: list[int], flipped: list[int],
                    sizes: tuple[int, int]) -> None:
    result.ec_leaked_bits = int(sum(leaks))
    result.qber_z = flipped[0] / sizes[0]
    result.qber_x = flipped[1] / sizes[1]
    h = sizes[0] * binary_entropy(result.qber_z) + sizes[1] * binary_entropy(result.qber_x)
    result.ec_efficiency = result.ec_leaked_bits / h if h > 0 else None


def _alice_correct(ch, key: np.ndarray, estimate: float, config: SessionConfig, rand,
                   name: str) -> tuple[int, int]:
    """Alice's half of error correcting one key part → (leaked bits, Bob's flip count).

    LDPC that leaves a frame undecoded falls back to Cascade on the whole part (dropping the
    frame would select the key by its errors); the leak is both methods' disclosures."""
    leaked = 0
    if config.reconciliation == "ldpc":
        leaked, flipped = _alice_ldpc(ch, key, estimate)
        if flipped is not None:
            return leaked, flipped
    # Cascade: Alice answers parity queries
    cascade_seed = rand.integer(name)
    ch.send("cascade-seed", struct.pack(">Q", cascade_seed))
    oracle, flipped = serve_parities(ch, key, seed=cascade_seed, qber_estimate=estimate,
                                     passes=config.cascade_passes)
    return leaked + int(oracle.leaked_bits), int(flipped)


def _bob_correct(ch, key: np.ndarray, estimate: float, config: SessionConfig
                 ) -> tuple[np.ndarray, int]:
    """Bob's half of error correcting one key part → (his corrected part, leaked bits)."""
    leaked = 0
    if config.reconciliation == "ldpc":
        corrected, leaked = _bob_ldpc(ch, key, estimate)
        if corrected is not None:
            return corrected, leaked
    # Cascade: queries and answers as public frames, both transcripts authenticated
    with _parsing("cascade-seed"):
        (cascade_seed,) = struct.unpack(">Q", _recv(ch, "cascade-seed"))
    oracle = RemoteParityOracle(ch, key.size)
    ec = reconcile(None, key, estimate, seed=cascade_seed, passes=config.cascade_passes,
                   oracle=oracle)
    oracle.finish(int((ec.corrected != key).sum()))
    return ec.corrected, leaked + int(ec.leaked_bits)


def _sifted(result: SessionResult, stats: DecoyStatistics) -> tuple[int, float]:
    n_x, m_x = int(stats.n_x.sum()), int(stats.m_x.sum())
    result.qber_x = m_x / n_x if n_x else None
    n_z, _ = _sifted_counts(result, int(stats.n_z.sum()), n_x)
    return n_z, result.qber_x


def _check_x(result: SessionResult, config: SessionConfig) -> None:
    if result.qber_x > config.qber_threshold:
        raise ProtocolAbort(f"X-basis QBER {result.qber_x:.4f} exceeds the threshold "
                            f"{config.qber_threshold:.4f}")


def _corrected(result: SessionResult, leaked: int, flipped: int, n_z: int) -> None:
    result.ec_leaked_bits = leaked
    result.qber_z = flipped / n_z
    h = binary_entropy(result.qber_z)
    result.ec_efficiency = leaked / (n_z * h) if h > 0 else None


def _check_z(result: SessionResult, config: SessionConfig) -> None:
    if result.qber_z > config.qber_threshold:
        raise ProtocolAbort(f"Z-basis QBER {result.qber_z:.4f} exceeds the threshold "
                            f"{config.qber_threshold:.4f}")


def _finite_keys(start: PassStart, config: SessionConfig, stats: DecoyStatistics,
                 leaks: list[int], flipped: list[int], result: SessionResult) -> list[int]:
    """Secret length of each key part.

    One part (``key_bases="z"``): the Z key, its phase error bounded from the disclosed X bits
    (Lim et al. 2014 as :mod:`~mozi.host.postprocessing.finite_key` states it), with the whole
    ``ε_sec``. Two parts (``"zx"``): each basis is the key of one analysis and the test of the
    other — the Z key's phase error from the X errors that error correction found, the X
    key's from the Z errors — each with ``ε_sec / 2`` (the concatenation is ``ε_sec``-secret
    by composition) and its own ``λ_EC``. A part whose bound gives no key contributes none;
    the session aborts only when no part does.
    """
    both = len(leaks) == 2
    params = FiniteKeyParams(intensities=start.intensities, probabilities=start.probabilities,
                             eps_sec=config.eps_sec / (2 if both else 1),
                             eps_cor=config.eps_cor, qber_threshold=config.qber_threshold)
    z = DecoyStatistics(n_z=stats.n_z, n_x=stats.n_x, m_x=stats.m_x,
                        m_z_observed=int(flipped[0]))
    parts = [finite_key_length(z, leaks[0], params)]
    if both:
        x = DecoyStatistics(n_z=stats.n_x, n_x=stats.n_z, m_x=stats.m_z_observed,
                            m_z_observed=int(flipped[1]))
        parts.append(finite_key_length(x, leaks[1], params))
        result.finite_key_x = parts[1].as_dict()
    result.finite_key = parts[0].as_dict()
    lengths = [0 if fk.aborted else max(0, fk.length) for fk in parts]
    if sum(lengths) <= 0:
        fk = parts[0]
        raise ProtocolAbort(fk.abort_reason or f"finite-key length {fk.length} is not positive")
    return lengths


def _both_bases_statistics(z_intensity: np.ndarray, x_intensity: np.ndarray,
                           z_errors: np.ndarray, x_errors: np.ndarray) -> DecoyStatistics:
    """Decoy statistics of a both-bases session: the X errors as error correction found them
    (``m_x``), the Z errors likewise (``m_z_observed``, per intensity)."""
    n_z = np.bincount(z_intensity, minlength=3)[:3]
    n_x = np.bincount(x_intensity, minlength=3)[:3]
    if np.any(z_errors > n_z) or np.any(x_errors > n_x):
        raise ValueError("more errors announced than detections")
    return DecoyStatistics(n_z=n_z, n_x=n_x, m_x=x_errors, m_z_observed=z_errors)


def _key_meta(start: PassStart, config: SessionConfig, result: SessionResult, rand) -> dict:
    meta = {"pass_id": start.pass_id, "session_id": start.session_id,
            "eps_sec": config.eps_sec, "eps_cor": config.eps_cor, "qber_z": result.qber_z,
            "sifted_z_bits": result.sifted_z_bits,
            "insecure_reproducible": rand.insecure_reproducible}
    if rand.insecure_reproducible:
        meta["insecure_seed"] = rand.insecure_seed
    return meta


def _stored(result: SessionResult, key: np.ndarray, cut: int, layout, ids) -> None:
    result.auth_bits_replenished = int(cut)
    result.final_key_bits = int(key.size - cut)
    result.key_ids = list(ids)
    result.key_senders = [sender for sender, _ in layout]
    ends = np.cumsum([size for _, size in layout])
    result.key_check_values = [check_value(block) for block in
                               np.split(key[cut:], ends[:-1])] if layout else []


def _reason(exc: Exception) -> str:
    if isinstance(exc, AuthKeyPoolExhausted):
        return f"the link's authentication key is exhausted ({exc}); install a new one"
    if isinstance(exc, ChannelEmpty):
        return _NEVER_ARRIVED
    if isinstance(exc, AuthenticationError):
        return f"classical channel: {exc}"
    return str(exc)


def _strictly_increasing(det: Detections) -> Detections:
    if det.slots.size < 2:
        return det
    keep = np.concatenate([[True], np.diff(det.slots) > 0])
    if keep.all():
        return det
    return Detections(det.slots[keep], det.basis[keep], det.bit[keep], det.multi[keep],
                      det.lost[keep])


# -- both halves in one process ------------------------------------------------------------

def run_session(tags, alice, *, link: str, store_alice: KeyStore, store_bob: KeyStore,
                config: SessionConfig = SessionConfig(), progress: bool = False,
                tap: MessageTap | None = None) -> SessionResult:
    """Run the whole protocol for one link; on success both stores hold the same key.

    Alice's half (:func:`alice_session`) and Bob's (:func:`bob_session`) run in two threads
    joined by a :class:`~mozi.host.crypto.auth.LocalTransport` pair: they share nothing but
    the frames of the classical channel, exactly as two nodes do over TCP.

    Parameters
    ----------
    tags : mozi.sim.tagfile.TagData
        Bob's time tags (channels named H, V, D, A).
    alice : mozi.sim.link.AliceFile
        Alice's record of the pass: her source (choices of every slot) and metadata
        (``first_slot``, ``n_slots``, ``slot_period_ps``, ``pass``).
    link : str
        The link: both stores hold its authentication key (``mozi link init``), each naming
        the other's party as its peer.
    store_alice, store_bob : mozi.host.keys.keystore.KeyStore
        The two parties' key stores.
    config : SessionConfig
    progress : bool
        Show progress on stderr.
    tap : MessageTap, optional
        A man in the middle on the classical channel (tests).

    Returns
    -------
    SessionResult
        Bob's view with Alice's alignment, counters and key accounting; ``aborted=True``
        (nothing stored) when the QBER exceeds the threshold, verification fails, the slots
        cannot be aligned, the finite-key length is not positive, or the classical channel
        fails (rejected messages, a malformed or missing message).

    Raises
    ------
    MoziError
        Input that cannot be processed (no usable tags, unknown channel names, unavailable
        device), or stores without a matching authentication key for the link.
    """
    if not isinstance(link, str) or not link:
        raise MoziError("link must be a non-empty name")
    _check_pair(link, store_alice, store_bob)
    bar = tqdm(total=8, desc=f"session {link}", unit="step", file=sys.stderr,
               disable=not progress, leave=False)
    results: dict[str, SessionResult] = {}

    def step(name: str, t0: float) -> float:
        results["bob-timings"].timings[name] = round(time.perf_counter() - t0, 4)
        bar.update(1)
        bar.set_postfix_str(f"{name} done")
        return time.perf_counter()

    ta, tb = LocalTransport.pair(tap=tap, names=("alice->bob", "bob->alice"))
    halves = {
        "alice": lambda: alice_session(ta, alice, link=link, store=store_alice, config=config),
        "bob": lambda: bob_session(tb, tags, link=link, store=store_bob, config=config,
                                   step=step),
    }
    errors: dict[str, BaseException] = {}
    results["bob-timings"] = SessionResult(link=link)

    def run(name: str, transport: LocalTransport) -> None:
        try:
            results[name] = halves[name]()
        except BaseException as exc:        # re-raised in the caller's thread
            errors[name] = exc
        finally:
            transport.close()

    threads = [threading.Thread(target=run, args=(name, t), name=f"session-{name}")
               for name, t in (("alice", ta), ("bob", tb))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        bar.close()
    for name in ("bob", "alice"):
        if name in errors and not isinstance(errors[name], PeerAbort):
            raise errors[name]
    return _merge(results["alice"], results["bob"], results["bob-timings"].timings)


def _check_pair(link: str, store_alice: KeyStore, store_bob: KeyStore) -> None:
    """The two ends' authentication keys of ``link`` must belong together."""
    if store_alice.party == store_bob.party:
        raise MoziError(f"Alice's and Bob's key stores both belong to {store_alice.party!r}")
    for store, other in ((store_alice, store_bob), (store_bob, store_alice)):
        peer = store.peer(link)
        if peer is not None and peer != other.party:
            raise MoziError(f"link {link!r} of {store.party!r} is shared with {peer!r}, not "
                            f"with {other.party!r}")
    for store in (store_alice, store_bob):
        if not store.has_auth_key(link):
            raise MoziError(f"{store.party!r} has no authentication key for link {link!r}; "
                            f"create a matching pair with `mozi link init`")
    pool_a, pool_b = store_alice.auth_key(link), store_bob.auth_key(link)
    if pool_a.role == pool_b.role or pool_a.tag_bits != pool_b.tag_bits \
            or pool_a.hash_key != pool_b.hash_key:
        raise MoziError(f"the two stores' authentication keys of link {link!r} do not match; "
                        f"create a matching pair with `mozi link init`")


def _merge(a: SessionResult, b: SessionResult, bob_steps: dict[str, float]) -> SessionResult:
    """One result from the two halves' views: Bob's, with what only Alice knows."""
    out = dataclasses.replace(b)
    out.alignment = a.alignment
    out.auth_bits_consumed = a.auth_bits_consumed
    out.device_counters = {**b.device_counters, **a.device_counters}
    out.timings = {**{k: v for k, v in a.timings.items() if k != "total"}, **bob_steps,
                   "total": max(a.timings.get("total", 0.0), b.timings.get("total", 0.0))}
    if a.aborted or b.aborted:
        out.aborted = True
        # the half that gave up says why; the other only heard that it did, or heard nothing
        def rank(r: SessionResult) -> int:
            reason = r.abort_reason or ""
            return 3 if not r.aborted else 2 if reason.startswith(_PEER) \
                else 1 if reason == _NEVER_ARRIVED else 0
        out.abort_reason = min((b, a), key=rank).abort_reason
        out.final_key_bits = 0
        out.key_ids, out.key_senders, out.key_check_values = [], [], []
        out.auth_bits_replenished = 0
    elif b.staged:
        out.key_ids, out.key_senders = a.key_ids, a.key_senders
        out.key_check_values = a.key_check_values
        out.final_key_bits, out.auth_bits_replenished = a.final_key_bits, \
            a.auth_bits_replenished
    return out
