"""The QKD session engine: Bob's time tags and Alice's records → one key in both key stores.

:func:`run_session` plays both parties in one process, but every piece of information that
crosses from one to the other travels as a message of an authenticated classical channel
(:mod:`mozi.host.crypto.auth`) or as link-protocol frames to that party's own device
(:mod:`mozi.host.devices.device`). Steps:

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
   the refill sizes; both stores get identical keys under identical IDs and senders, each in
   one transaction with its refill.

The classical channel is the link's lasting authentication key in the two key stores
(``mozi link init`` makes it): both ends open it, every pad is persisted before use, and
``auth_bits_consumed`` / ``auth_bits_replenished`` report exactly what left and entered it.

Randomness. Every random choice — Bob's squashing bits for multi-click events (the device's
random words), the Cascade shuffles, the verification and privacy-amplification seeds, the key
IDs — comes from a :class:`~mozi.host.crypto.randomness.SessionRandomness`: the OS CSPRNG, unless
``SessionConfig.insecure_seed`` asks for a reproducible run, which marks the result and every
stored key ``insecure_reproducible``.

An abort stores nothing and returns a :class:`SessionResult` with ``aborted=True`` and the
reason (a QBER above the threshold, a failed verification, an authentication failure or a
malformed message); input that cannot be processed at all (too few tags, unknown channels, no
authentication key) raises a :class:`~mozi.sim.errors.MoziError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import struct
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from mozi.host.crypto.auth import (
    DEFAULT_MAX_FAILURES,
    AuthenticatedChannel,
    AuthKeyPoolExhausted,
    ChannelEmpty,
    MemoryTransport,
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
from mozi.host.postprocessing.cascade import AliceParityOracle, reconcile
from mozi.host.postprocessing.finite_key import (
    DecoyStatistics,
    FiniteKeyParams,
    binary_entropy,
    finite_key_length,
)
from mozi.host.postprocessing.privacy import privacy_amplify
from mozi.host.postprocessing.sifting import run_sifting
from mozi.host.postprocessing.verification import verification_tag, verification_tag_bits
from mozi.sim.errors import MoziError
from mozi.sim.model import CHANNELS, alice_record
from tqdm import tqdm

__all__ = [
    "ChannelParityOracle",
    "MessageTap",
    "decode_align_sample",
    "decode_key_ids",
    "decode_verify",
    "SessionConfig",
    "SessionResult",
    "run_session",
]


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
        Rejected classical messages after which the session aborts.
    cascade_passes : int
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
    auth_max_failures: int = DEFAULT_MAX_FAILURES
    cascade_passes: int = 16
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
        Z-basis QBER from the errors Cascade corrected (None if EC did not run).
    qber_x : float or None
        X-basis QBER from the disclosed X bits.
    ec_leaked_bits : int or None
        Parity bits disclosed by Cascade (``λ_EC``).
    ec_efficiency : float or None
        ``λ_EC / (n · h(qber_z))``.
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
        The :class:`~mozi.host.postprocessing.finite_key.FiniteKeyResult` as a dict.
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
    profile: list[dict] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    timing: dict | None = None
    alignment: dict | None = None
    device_counters: dict[str, int] = dataclasses.field(default_factory=dict)
    insecure_reproducible: bool = False
    insecure_seed: int | None = None

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


class ChannelParityOracle(AliceParityOracle):
    """Cascade's Alice oracle reached over the classical channel, with batched authentication.

    Every parity query of Bob (shuffle id and ranges) and every answer of Alice is serialised
    into bytes and passed between the parties as on a public link; both ends log what they
    sent and received. :meth:`authenticate` then sends Bob's whole query transcript and
    Alice's whole answer transcript as two messages of the authenticated channel, and each
    side compares them with its own log. So Cascade's hundreds of round trips cost two tags,
    and a tampered query or answer is caught before the key is used (Wegman–Carter on the
    transcript: forgery probability ``≈ transcript_blocks / 2**tag_bits``). Alice's side
    answers with :meth:`AliceParityOracle.parities`, which counts the disclosed bits.

    Parameters
    ----------
    bits : uint8 bit array
        Alice's sifted key.
    alice_channel, bob_channel : AuthenticatedChannel
        The two ends of the session's channel.
    """

    def __init__(self, bits, alice_channel, bob_channel):
        super().__init__(bits)
        self._alice = alice_channel
        self._bob = bob_channel
        self._bob_sent: list[bytes] = []
        self._alice_got: list[bytes] = []
        self._alice_sent: list[bytes] = []
        self._bob_got: list[bytes] = []
        self.public_bytes = 0

    def parities(self, shuffle: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Bob's query → Alice's answer over the public link (see the class docstring)."""
        lo = np.asarray(lo, np.int64)
        hi = np.asarray(hi, np.int64)
        query = struct.pack(">HI", shuffle, lo.size) + lo.astype(">u4").tobytes() \
            + hi.astype(">u4").tobytes()
        self._bob_sent.append(query)
        # --- Alice's side
        self._alice_got.append(query)
        sid, count = struct.unpack_from(">HI", query)
        if len(query) != 6 + 8 * count:
            raise ProtocolAbort("malformed Cascade query")
        q_lo = np.frombuffer(query, ">u4", count, 6).astype(np.int64)
        q_hi = np.frombuffer(query, ">u4", count, 6 + 4 * count).astype(np.int64)
        answer = np.packbits(super().parities(sid, q_lo, q_hi)).tobytes()
        self._alice_sent.append(answer)
        # --- Bob's side
        self._bob_got.append(answer)
        self.public_bytes += len(query) + len(answer)
        if len(answer) != (lo.size + 7) // 8:
            raise ProtocolAbort("malformed Cascade answer")
        return np.unpackbits(np.frombuffer(answer, np.uint8))[:lo.size].copy()

    def authenticate(self) -> None:
        """Exchange and check both transcripts over the authenticated channel.

        Raises
        ------
        ProtocolAbort
            A transcript differs from what the other side logged (tampering).
        """
        self._bob.send("cascade-queries", b"".join(self._bob_sent))
        if _recv(self._alice, "cascade-queries") != b"".join(self._alice_got):
            raise ProtocolAbort("Cascade queries were altered on the public link")
        self._alice.send("cascade-answers", b"".join(self._alice_sent))
        if _recv(self._bob, "cascade-answers") != b"".join(self._bob_got):
            raise ProtocolAbort("Cascade answers were altered on the public link")


def _recv(channel: AuthenticatedChannel, kind: str) -> bytes:
    """Next accepted message of the channel, which must be of ``kind`` (see ``expect``)."""
    return channel.expect(kind)


@contextlib.contextmanager
def _parsing(kind: str):
    """Turn a malformed (authenticated, so the peer's own) message into a protocol abort."""
    try:
        yield
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolAbort(f"malformed {kind!r} message ({exc})") from None


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


def run_session(tags, alice, *, link: str, store_alice: KeyStore, store_bob: KeyStore,
                config: SessionConfig = SessionConfig(), progress: bool = False,
                tap: MessageTap | None = None) -> SessionResult:
    """Run the whole protocol for one link; on success both stores hold the same key.

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
        ``aborted=True`` (nothing stored) when the QBER exceeds the threshold, verification
        fails, the slots cannot be aligned, the finite-key length is not positive, or the
        classical channel fails (rejected messages, a malformed or missing message).

    Raises
    ------
    MoziError
        Input that cannot be processed (no usable tags, unknown channel names, no periodic
        structure in the tags, unavailable device), or stores without a matching
        authentication key for the link.
    """
    if not isinstance(link, str) or not link:
        raise MoziError("link must be a non-empty name")
    pools = _link_pools(link, store_alice, store_bob)
    rand = SessionRandomness(config.insecure_seed)
    result = SessionResult(link=link, detections=int(len(tags)),
                           insecure_reproducible=rand.insecure_reproducible,
                           insecure_seed=rand.insecure_seed)
    clock = time.perf_counter
    t_all = clock()
    bar = tqdm(total=8, desc=f"session {link}", unit="step", file=sys.stderr,
               disable=not progress, leave=False)

    def step(name: str, t0: float) -> float:
        result.timings[name] = round(clock() - t0, 4)
        bar.update(1)
        bar.set_postfix_str(f"{name} done")
        return clock()

    try:
        _run(tags, alice, link, store_alice, store_bob, pools, config, rand, result, step,
             clock, tap)
    except (ProtocolAbort, AuthenticationError, AuthKeyPoolExhausted, ChannelEmpty) as exc:
        result.aborted = True
        result.abort_reason = _reason(exc)
        result.final_key_bits = 0
        result.key_ids = []
        result.key_senders = []
        result.key_check_values = []
    finally:
        bar.close()
        result.timings["total"] = round(clock() - t_all, 4)
    return result


def _reason(exc: Exception) -> str:
    if isinstance(exc, AuthKeyPoolExhausted):
        return f"the link's authentication key is exhausted ({exc}); install a new one"
    if isinstance(exc, ChannelEmpty):
        return "a message of the classical channel never arrived"
    if isinstance(exc, AuthenticationError):
        return f"classical channel: {exc}"
    return str(exc)


def _link_pools(link: str, store_alice: KeyStore, store_bob: KeyStore):
    """The two ends' authentication keys of ``link``, checked to belong together."""
    if store_alice.party == store_bob.party:
        raise MoziError(f"Alice's and Bob's key stores both belong to {store_alice.party!r}")
    for store, other in ((store_alice, store_bob), (store_bob, store_alice)):
        peer = store.peer(link)
        if peer is not None and peer != other.party:
            raise MoziError(f"link {link!r} of {store.party!r} is shared with {peer!r}, not "
                            f"with {other.party!r}")
    pool_a, pool_b = store_alice.auth_key(link), store_bob.auth_key(link)
    if pool_a.role == pool_b.role or pool_a.tag_bits != pool_b.tag_bits \
            or pool_a.hash_key != pool_b.hash_key:
        raise MoziError(f"the two stores' authentication keys of link {link!r} do not match; "
                        f"create a matching pair with `mozi link init`")
    return pool_a, pool_b


def _run(tags, alice, link, store_alice, store_bob, pools, config, rand, result, step, clock,
         tap):
    t0 = clock()
    source = alice.source
    meta = dict(getattr(alice, "metadata", {}) or {})
    period_ps = float(meta.get("slot_period_ps") or source.config.slot_period_ps)
    rate = 1e12 / period_ps
    ticks, masks, res = _tag_events(tags)
    if ticks.size < 100:
        raise tm.TimingError(f"{ticks.size} tag events are too few for a session")

    # 1. timing recovery (Bob)
    est = tm.estimate_timing(ticks, period_ps / res, max_drift=config.max_drift,
                             seed=rand.integer("timing"))
    result.timing = est.to_json()
    t0 = step("timing", t0)

    # 2. Bob's device: slot assignment + decoding, block by block
    with open_device(config.bob_device or config.device, role="receiver") as bob_dev:
        rx = ReceiverDriver(bob_dev, random_key=rand.stream_key("decoder"))
        rx.reset()
        blocks = tm.slot_blocks(ticks, est, frac_bits=rx.frac_bits,
                                window_sigmas=config.window_sigmas,
                                max_events=config.block_events)
        det = rx.run_blocks(ticks, masks, blocks)
        counters = rx.counters()
    result.device_counters.update(counters)
    events = counters["RX_EVENTS"]
    result.in_window_fraction = 1.0 - counters["RX_REJECTED"] / events if events else None
    det = _strictly_increasing(det)
    t0 = step("device", t0)

    # the classical channel: the link's lasting authentication key at both ends
    pool_a, pool_b = pools
    ta, tb = MemoryTransport.pair(tap=tap, names=("alice->bob", "bob->alice"))
    ch_a = AuthenticatedChannel(pool_a, ta, max_failures=config.auth_max_failures)
    ch_b = AuthenticatedChannel(pool_b, tb, max_failures=config.auth_max_failures)
    try:
        ch_a.open()
        ch_b.open()
        _protocol(source, meta, rate, det, ch_a, ch_b, link, store_alice, store_bob, config,
                  rand, result, step, clock, t0)
    finally:
        result.auth_bits_consumed = int(ch_a.consumed_bits)


def _strictly_increasing(det: Detections) -> Detections:
    if det.slots.size < 2:
        return det
    keep = np.concatenate([[True], np.diff(det.slots) > 0])
    if keep.all():
        return det
    return Detections(det.slots[keep], det.basis[keep], det.bit[keep], det.multi[keep],
                      det.lost[keep])


def _protocol(source, meta, rate, det, ch_a, ch_b, link, store_alice, store_bob, config,
              rand, result, step, clock, t0):
    first_slot = meta.get("first_slot")
    n_slots = meta.get("n_slots")
    slot_range = (int(first_slot), int(first_slot) + int(n_slots)) \
        if first_slot is not None and n_slots is not None else None

    # 3. slot alignment: Bob discloses a run of detections, Alice answers the shift
    if det.slots.size < config.alignment_sample + 16:
        raise ProtocolAbort(f"only {det.slots.size} detections: too few to align and sift")
    pick = tm.alignment_sample(det.slots, config.alignment_sample)
    ch_b.send("align-sample", det.slots[pick].astype(">i8").tobytes()
              + det.basis[pick].tobytes() + det.bit[pick].tobytes())
    s_slots, s_basis, s_bits = decode_align_sample(_recv(ch_a, "align-sample"))
    try:
        align = tm.find_slot_shift(s_slots, s_basis, s_bits, source.choices,
                                   center=config.alignment_center,
                                   max_shift=config.max_slot_shift, slot_range=slot_range,
                                   max_error=max(0.3, config.qber_threshold + 0.15))
        ch_a.send("align-shift", struct.pack(">q", align.shift))
    except tm.TimingError as exc:
        ch_a.send("align-failed", str(exc).encode())
        with _parsing("align-failed"):
            reason = _recv(ch_b, "align-failed").decode()
        raise ProtocolAbort(reason) from None
    with _parsing("align-shift"):
        (shift,) = struct.unpack(">q", _recv(ch_b, "align-shift"))
    result.alignment = dataclasses.asdict(align)
    keep = np.ones(det.slots.size, bool)
    keep[pick] = False
    a_slots = det.slots + shift
    if slot_range is not None:
        keep &= (a_slots >= slot_range[0]) & (a_slots < slot_range[1])
    a_slots = a_slots[keep]
    b_basis, b_bits = det.basis[keep], det.bit[keep]
    t0 = step("alignment", t0)

    # 4. sifting on Alice's device, over the channel
    def records_at(slots: np.ndarray) -> np.ndarray:
        return alice_record(*source.choices(slots))

    with open_device(config.alice_device or config.device, role="transmitter") as alice_dev:
        tx = TransmitterDriver(alice_dev)
        tx.reset()
        a_sift, b_sift = run_sifting(ch_a, ch_b, tx, records_at, a_slots, b_basis, b_bits)
        result.device_counters.update(tx.counters())
    stats: DecoyStatistics = b_sift.stats
    n_x = int(stats.n_x.sum())
    m_x = int(stats.m_x.sum())
    n_z = int(stats.n_z.sum())
    result.sifted_z_bits = n_z
    result.sifted_bits = n_z + n_x
    result.qber_x = m_x / n_x if n_x else None
    x_err = a_sift.x_bits != b_sift.x_bits
    all_slots = np.concatenate([b_sift.slots, b_sift.x_slots])
    order = np.argsort(all_slots, kind="stable")

    def profile(z_err: np.ndarray, z_known: bool) -> list[dict]:
        errs = np.concatenate([z_err, x_err])[order]
        known = np.concatenate([np.full(n_z, z_known), np.ones(n_x, bool)])[order]
        return _profile(config.profile_bin_s, rate, all_slots[order], errs, known,
                        slot_range)

    result.profile = profile(np.zeros(n_z, bool), False)
    t0 = step("sifting", t0)
    if n_x == 0 or n_z == 0:
        raise ProtocolAbort("no sifted detections in one of the bases")
    if result.qber_x > config.qber_threshold:
        raise ProtocolAbort(f"X-basis QBER {result.qber_x:.4f} exceeds the threshold "
                     f"{config.qber_threshold:.4f}")

    # 5. Cascade over the channel
    ch_a.send("cascade-seed", struct.pack(">Q", rand.integer("cascade")))
    with _parsing("cascade-seed"):
        (cascade_seed,) = struct.unpack(">Q", _recv(ch_b, "cascade-seed"))
    oracle = ChannelParityOracle(a_sift.key, ch_a, ch_b)
    qber_est = min(max(result.qber_x, 1e-3), 0.25)
    ec = reconcile(a_sift.key, b_sift.key, qber_est, seed=cascade_seed,
                   passes=config.cascade_passes, oracle=oracle)
    oracle.authenticate()
    bob_key = ec.corrected
    flips = bob_key != b_sift.key
    result.ec_leaked_bits = int(ec.leaked_bits)
    result.qber_z = int(flips.sum()) / n_z
    h = binary_entropy(result.qber_z)
    result.ec_efficiency = ec.leaked_bits / (n_z * h) if h > 0 else None
    result.profile = profile(flips, True)
    t0 = step("error correction", t0)
    if result.qber_z > config.qber_threshold:
        raise ProtocolAbort(f"Z-basis QBER {result.qber_z:.4f} exceeds the threshold "
                     f"{config.qber_threshold:.4f}")

    # 6. verification: Alice sends seed and tag, Bob compares
    t_bits = verification_tag_bits(config.eps_cor)
    vseed = rand.bits("verify", n_z + t_bits - 1)
    tag_a = verification_tag(a_sift.key, vseed, t_bits)
    ch_a.send("verify", struct.pack(">I", vseed.size) + np.packbits(vseed).tobytes()
              + np.packbits(tag_a).tobytes())
    seed_b, tag_recv = decode_verify(_recv(ch_b, "verify"), bob_key.size, t_bits)
    ok = bool(np.array_equal(verification_tag(bob_key, seed_b, t_bits), tag_recv))
    ch_b.send("verify-result", bytes([ok]))
    ok_a = _recv(ch_a, "verify-result") == b"\x01"
    result.verification_ok = ok and ok_a
    t0 = step("verification", t0)
    if not result.verification_ok:
        raise ProtocolAbort("verification failed: the corrected keys differ; block discarded")

    # 7. finite-key length
    params = FiniteKeyParams(intensities=source.config.intensities,
                             probabilities=source.config.probabilities,
                             eps_sec=config.eps_sec, eps_cor=config.eps_cor,
                             qber_threshold=config.qber_threshold)
    stats = DecoyStatistics(n_z=stats.n_z, n_x=stats.n_x, m_x=stats.m_x,
                            m_z_observed=int(flips.sum()))
    fk = finite_key_length(stats, ec.leaked_bits, params)
    result.finite_key = fk.as_dict()
    if fk.aborted or fk.length <= 0:
        raise ProtocolAbort(fk.abort_reason or f"finite-key length {fk.length} is not positive")

    # 8. privacy amplification, refill of the authentication key, storage
    pa_seed = rand.bits("pa", n_z + fk.length - 1)
    key_a, pa_seed = privacy_amplify(a_sift.key, fk.length, seed_bits=pa_seed)
    ch_a.send("pa-seed", np.packbits(pa_seed).tobytes())
    with _parsing("pa-seed"):
        raw = _recv(ch_b, "pa-seed")
        if len(raw) != (n_z + fk.length - 1 + 7) // 8:
            raise ValueError("seed of the wrong length")
        seed_recv = np.unpackbits(np.frombuffer(raw, np.uint8))[:pa_seed.size]
    key_b, _ = privacy_amplify(bob_key, fk.length, seed_bits=seed_recv)

    # Alice: refill what this session took (counting the pad of the key-ids message itself),
    # then the layout of the rest, and its IDs
    r_need = ch_a.pool.refill_need(pending_out=1)
    r0 = min(r_need[0], fk.length)
    r1 = min(r_need[1], fk.length - r0)
    n_key = fk.length - r0 - r1
    senders = (store_alice.party, store_bob.party)
    layout = key_layout(n_key, senders, first_share=config.alice_share) if n_key else []
    ids = rand.uuids("key-ids", len(layout))
    ch_a.send("key-ids", struct.pack(">QQ", r0, r1) + b"".join(uuid.UUID(k).bytes
                                                                for k in ids))
    b_r0, b_r1, ids_b = decode_key_ids(_recv(ch_b, "key-ids"))
    # Bob: the refill must be exactly what his own pool lacks, the layout his own rule's
    b_need = ch_b.pool.refill_need()
    b_key = fk.length - b_r0 - b_r1
    b_layout = key_layout(b_key, senders, first_share=config.alice_share) if b_key > 0 else []
    if (b_r0, b_r1) != (min(b_need[0], fk.length), min(b_need[1], fk.length - b_r0)) \
            or len(ids_b) != len(b_layout):
        raise ProtocolAbort("the peers disagree on the authentication refill or the key layout")
    if not np.array_equal(key_a, key_b):
        raise ProtocolAbort("final keys differ after privacy amplification")
    t0 = step("privacy amplification", t0)

    key_meta = {"pass_id": meta.get("pass") or None, "eps_sec": config.eps_sec,
                "eps_cor": config.eps_cor, "qber_z": result.qber_z, "sifted_z_bits": n_z,
                "insecure_reproducible": rand.insecure_reproducible}
    if rand.insecure_reproducible:
        key_meta["insecure_seed"] = rand.insecure_seed
    cut = r0 + r1
    refill_a = (key_a[:r0], key_a[r0:cut])
    refill_b = (key_b[:b_r0], key_b[b_r0:b_r0 + b_r1])
    store_alice.commit_session(link, peer=store_bob.party, pool=ch_a.pool, refill=refill_a,
                               key_bits=key_a[cut:], layout=layout, key_ids=ids,
                               meta=key_meta)
    try:
        store_bob.commit_session(link, peer=store_alice.party, pool=ch_b.pool,
                                 refill=refill_b, key_bits=key_b[cut:], layout=b_layout,
                                 key_ids=ids_b, meta=key_meta)
    except BaseException:
        # never leave a key at one end only: Alice's copy is erased and her refill undone
        _undo(store_alice, ch_a.pool, ids, (r0, r1))
        raise
    result.auth_bits_replenished = int(cut)
    result.final_key_bits = int(n_key)
    result.key_ids = list(ids)
    result.key_senders = [sender for sender, _ in layout]
    ends = np.cumsum([size for _, size in layout])
    result.key_check_values = [check_value(block) for block in
                               np.split(key_a[cut:], ends[:-1])]
    step("storage", t0)


def _undo(store: KeyStore, pool, ids: list[str], refill: tuple[int, int]) -> None:
    with contextlib.suppress(KeyStoreError):
        if ids:
            store.discard(ids, reason="the peer could not store the key")
        pool.drop_refill(refill)
