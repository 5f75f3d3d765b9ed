"""The QKD session engine: Bob's time tags and Alice's records → one key in both key stores.

:func:`run_session` plays both parties in one process, but every piece of information that
crosses from one to the other travels as a message of an authenticated classical channel
(:mod:`mozi.host.auth`) or as link-protocol frames to that party's own device
(:mod:`mozi.host.device`). Steps:

1. **Timing recovery** (Bob): slot period, offset and jitter from the tags
   (:func:`mozi.host.timing.estimate_timing`).
2. **Slot assignment and basis decoding** on Bob's device, block by block, registers
   reprogrammed per block (:func:`mozi.host.timing.slot_blocks`,
   :class:`~mozi.host.device.ReceiverDriver`).
3. **Slot alignment**: Bob discloses ``(slot, basis, bit)`` of a short run of detections,
   Alice answers the slot shift (:func:`mozi.host.timing.find_slot_shift`); the disclosed
   detections are dropped.
4. **Sifting** (:func:`mozi.host.sifting.run_sifting`): report, match flags on Alice's
   device, intensity announcement, X-basis disclosure → decoy statistics. Abort if the X-basis
   QBER exceeds the threshold.
5. **Error correction**: Cascade on the Z key; queries and answers cross the public link and
   their whole transcripts are then authenticated (:class:`ChannelParityOracle`); ``λ_EC`` is
   the exact count of disclosed parities. Abort if the Z QBER (errors corrected) exceeds the
   threshold.
6. **Verification**: Toeplitz tag of ``⌈log2(1/ε_cor)⌉`` bits (:mod:`mozi.host.verification`);
   a mismatch discards the block.
7. **Finite-key length** (Lim et al. 2014, :mod:`mozi.host.finite_key`); abort if ℓ ≤ 0.
8. **Privacy amplification** (Toeplitz, FFT; Alice's seed sent to Bob) and **storage**: Alice
   draws the key IDs and sends them; both stores get identical keys under identical IDs.

An abort stores nothing and returns a :class:`SessionResult` with ``aborted=True`` and the
reason; input that cannot be processed at all (too few tags, unknown channels) raises a
:class:`~mozi.sim.errors.MoziError`.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import struct
import sys
import time
from typing import Any

import numpy as np
from mozi.host import timing as tm
from mozi.host.auth import AuthKeyPool, make_channel_pair
from mozi.host.cascade import AliceParityOracle, reconcile
from mozi.host.device import (
    Detections,
    ReceiverDriver,
    TransmitterDriver,
    open_device,
)
from mozi.host.errors import ProtocolAbort
from mozi.host.finite_key import (
    DecoyStatistics,
    FiniteKeyParams,
    binary_entropy,
    finite_key_length,
)
from mozi.host.keystore import new_key_ids
from mozi.host.privacy import privacy_amplify, random_seed_bits
from mozi.host.sifting import run_sifting
from mozi.host.verification import verification_tag, verification_tag_bits
from mozi.sim.errors import MoziError
from mozi.sim.model import CHANNELS, alice_record
from tqdm import tqdm

__all__ = [
    "ChannelParityOracle",
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
    seed : int or None
        Seed of the session's public randomness (decoder random bits, Cascade shuffles,
        verification and privacy-amplification seeds): the same seed gives the same key.
        ``None`` draws the hashing seeds from the OS CSPRNG and a fresh session seed.
    device : str
        Device backend for both parties (:func:`mozi.host.device.open_device`).
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
    auth_tag_bits : int
        Tag length of the authenticated channel.
    auth_bootstrap_bits : int
        Size of the pre-shared authentication key the session starts from.
    cascade_passes : int
    profile_bin_s : float
        Width of the profile bins (seconds of pass time).
    block_events : int
        Tag events per SlotAssigner block (registers are reprogrammed between blocks).
    """

    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_threshold: float = 0.11
    seed: int | None = None
    device: str = "model"
    window_sigmas: float = 3.0
    max_drift: float = 2e-4
    max_slot_shift: int = 1 << 16
    alignment_center: int = 0
    alignment_sample: int = 512
    auth_tag_bits: int = 64
    auth_bootstrap_bits: int = 1 << 17
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
        if self.seed is not None and (isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer, not {self.seed!r}")
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
        Secret bits spent authenticating the classical messages (one party's pool).
    final_key_bits : int
        Stored key length (0 on abort).
    aborted : bool
    abort_reason : str or None
    key_ids : list of str
        IDs under which both stores hold the key.
    finite_key : dict or None
        The :class:`~mozi.host.finite_key.FiniteKeyResult` as a dict.
    profile : list of dict
        Per ``profile_bin_s`` of pass time: ``t_s``, ``sifted_kbps``, ``qber``.
    timings : dict
        Seconds spent per step, and ``total``.
    timing : dict or None
        The recovered slot clock (:class:`~mozi.host.timing.TimingEstimate`).
    alignment : dict or None
        The slot alignment (:class:`~mozi.host.timing.AlignmentResult`).
    device_counters : dict
        Receiver and transmitter counters read from the devices.
    seed : int
        The session seed actually used.
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
    final_key_bits: int = 0
    aborted: bool = False
    abort_reason: str | None = None
    key_ids: list[str] = dataclasses.field(default_factory=list)
    finite_key: dict | None = None
    profile: list[dict] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    timing: dict | None = None
    alignment: dict | None = None
    device_counters: dict[str, int] = dataclasses.field(default_factory=dict)
    seed: int = 0

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


def _recv(channel, kind: str) -> bytes:
    """Next message of the channel, which must be of ``kind``."""
    got, payload = channel.receive()
    if got != kind:
        raise ProtocolAbort(f"expected a {kind!r} message, got {got!r}")
    return payload


class _Abort(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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


def _seeds(seed: int) -> dict[str, int]:
    ss = np.random.SeedSequence(seed)
    names = ("decoder", "timing", "cascade", "verify", "pa")
    return {n: int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
            for n, s in zip(names, ss.spawn(len(names)), strict=True)}


def _seed_bits(seed: int | None, n: int) -> np.ndarray | None:
    if seed is None:
        return None
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


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


def run_session(tags, alice, *, link: str, store_alice, store_bob,
                config: SessionConfig = SessionConfig(), progress: bool = False
                ) -> SessionResult:
    """Run the whole protocol for one link; on success both stores hold the same key.

    Parameters
    ----------
    tags : mozi.sim.tagfile.TagData
        Bob's time tags (channels named H, V, D, A).
    alice : mozi.sim.link.AliceFile
        Alice's record of the pass: her source (choices of every slot) and metadata
        (``first_slot``, ``n_slots``, ``slot_period_ps``, ``pass``).
    link : str
        Link name stored with the keys.
    store_alice, store_bob : mozi.host.keystore.KeyStore
        The two parties' key stores.
    config : SessionConfig
    progress : bool
        Show progress on stderr.

    Returns
    -------
    SessionResult
        ``aborted=True`` (nothing stored) when the QBER exceeds the threshold, verification
        fails, the slots cannot be aligned, or the finite-key length is not positive.

    Raises
    ------
    MoziError
        Input that cannot be processed (no usable tags, unknown channel names, no periodic
        structure in the tags, unavailable device).
    """
    if not isinstance(link, str) or not link:
        raise MoziError("link must be a non-empty name")
    seed = config.seed if config.seed is not None else secrets.randbits(62)
    fixed = config.seed is not None
    seeds = _seeds(seed)
    result = SessionResult(link=link, detections=int(len(tags)), seed=seed)
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
        _run(tags, alice, link, store_alice, store_bob, config, seeds, fixed, result, step,
             clock)
    except _Abort as exc:
        result.aborted = True
        result.abort_reason = exc.reason
        result.final_key_bits = 0
        result.key_ids = []
    finally:
        bar.close()
        result.timings["total"] = round(clock() - t_all, 4)
    return result


def _run(tags, alice, link, store_alice, store_bob, config, seeds, fixed, result, step, clock):
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
                             seed=seeds["timing"])
    result.timing = est.to_json()
    t0 = step("timing", t0)

    # 2. Bob's device: slot assignment + decoding, block by block
    with open_device(config.device) as bob_dev:
        rx = ReceiverDriver(bob_dev, random_seed=seeds["decoder"])
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

    # authenticated channel from a pre-shared bootstrap key
    boot = np.unpackbits(np.frombuffer(secrets.token_bytes(config.auth_bootstrap_bits // 8),
                                       np.uint8))
    ch_a, ch_b = make_channel_pair(AuthKeyPool(boot), AuthKeyPool(boot.copy()),
                                   tag_bits=config.auth_tag_bits)
    try:
        _protocol(source, meta, rate, det, ch_a, ch_b, link, store_alice, store_bob, config,
                  seeds, fixed, result, step, clock, t0)
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
              seeds, fixed, result, step, clock, t0):
    first_slot = meta.get("first_slot")
    n_slots = meta.get("n_slots")
    slot_range = (int(first_slot), int(first_slot) + int(n_slots)) \
        if first_slot is not None and n_slots is not None else None

    # 3. slot alignment: Bob discloses a run of detections, Alice answers the shift
    if det.slots.size < config.alignment_sample + 16:
        raise _Abort(f"only {det.slots.size} detections: too few to align and sift")
    pick = tm.alignment_sample(det.slots, config.alignment_sample)
    ch_b.send("align-sample", det.slots[pick].astype(">i8").tobytes()
              + det.basis[pick].tobytes() + det.bit[pick].tobytes())
    payload = _recv(ch_a, "align-sample")
    n = len(payload) // 10
    s_slots = np.frombuffer(payload, ">i8", n).astype(np.int64)
    s_basis = np.frombuffer(payload, np.uint8, n, 8 * n)
    s_bits = np.frombuffer(payload, np.uint8, n, 9 * n)
    try:
        align = tm.find_slot_shift(s_slots, s_basis, s_bits, source.choices,
                                   center=config.alignment_center,
                                   max_shift=config.max_slot_shift, slot_range=slot_range,
                                   max_error=max(0.3, config.qber_threshold + 0.15))
        ch_a.send("align-shift", struct.pack(">q", align.shift))
    except tm.TimingError as exc:
        ch_a.send("align-failed", str(exc).encode())
        raise _Abort(_recv(ch_b, "align-failed").decode()) from None
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

    with open_device(config.device) as alice_dev:
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
        raise _Abort("no sifted detections in one of the bases")
    if result.qber_x > config.qber_threshold:
        raise _Abort(f"X-basis QBER {result.qber_x:.4f} exceeds the threshold "
                     f"{config.qber_threshold:.4f}")

    # 5. Cascade over the channel
    ch_a.send("cascade-seed", struct.pack(">Q", seeds["cascade"]))
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
        raise _Abort(f"Z-basis QBER {result.qber_z:.4f} exceeds the threshold "
                     f"{config.qber_threshold:.4f}")

    # 6. verification: Alice sends seed and tag, Bob compares
    t_bits = verification_tag_bits(config.eps_cor)
    vseed = _seed_bits(seeds["verify"] if fixed else None, n_z + t_bits - 1)
    if vseed is None:
        vseed = random_seed_bits(n_z + t_bits - 1)
    tag_a = verification_tag(a_sift.key, vseed, t_bits)
    ch_a.send("verify", struct.pack(">I", vseed.size) + np.packbits(vseed).tobytes()
              + np.packbits(tag_a).tobytes())
    payload = _recv(ch_b, "verify")
    (ns,) = struct.unpack_from(">I", payload)
    nbytes = (ns + 7) // 8
    seed_b = np.unpackbits(np.frombuffer(payload, np.uint8, nbytes, 4))[:ns]
    tag_recv = np.unpackbits(np.frombuffer(payload, np.uint8, offset=4 + nbytes))[:t_bits]
    ok = bool(np.array_equal(verification_tag(bob_key, seed_b, t_bits), tag_recv))
    ch_b.send("verify-result", bytes([ok]))
    ok_a = _recv(ch_a, "verify-result") == b"\x01"
    result.verification_ok = ok and ok_a
    t0 = step("verification", t0)
    if not result.verification_ok:
        raise _Abort("verification failed: the corrected keys differ; block discarded")

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
        raise _Abort(fk.abort_reason or f"finite-key length {fk.length} is not positive")

    # 8. privacy amplification and storage
    pa_seed = _seed_bits(seeds["pa"] if fixed else None, n_z + fk.length - 1)
    key_a, pa_seed = privacy_amplify(a_sift.key, fk.length, seed_bits=pa_seed)
    ids = new_key_ids(fk.length)
    ch_a.send("pa-seed", np.packbits(pa_seed).tobytes())
    ch_a.send("key-ids", "\n".join(ids).encode())
    seed_recv = np.unpackbits(np.frombuffer(_recv(ch_b, "pa-seed"), np.uint8))[:pa_seed.size]
    ids_b = _recv(ch_b, "key-ids").decode().split("\n")
    key_b, _ = privacy_amplify(bob_key, fk.length, seed_bits=seed_recv)
    if not np.array_equal(key_a, key_b):
        raise _Abort("final keys differ after privacy amplification")
    t0 = step("privacy amplification", t0)
    key_meta = {"pass_id": meta.get("pass") or None, "eps_sec": config.eps_sec,
                "eps_cor": config.eps_cor, "session_seed": result.seed,
                "qber_z": result.qber_z, "sifted_z_bits": n_z}
    store_alice.add_key(link, key_a, key_ids=ids, meta=key_meta)
    try:
        store_bob.add_key(link, key_b, key_ids=ids_b, meta=key_meta)
    except BaseException:
        # never leave a key at one end only: Alice's copy is erased (marked consumed)
        store_alice.consume_many(ids, purpose="discarded: the peer could not store the key")
        raise
    result.final_key_bits = int(fk.length)
    result.key_ids = list(ids)
    step("storage", t0)
