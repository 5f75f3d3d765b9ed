"""Quantum-link simulation of one satellite pass: Alice's pulses to Bob's time tags.

The simulator samples *detections*, never pulses. The pass is cut into chunks of 0.1 s
(10^7 slots at 100 MHz) in which the channel transmittance ``T`` is taken constant (its value
at the chunk's middle; the 2017 loss changes by ~0.02 dB in 0.1 s). In a chunk:

1. For each of Alice's 12 states (intensity, basis, bit), the eavesdropper (or the plain
   channel) gives a mixture of what reaches Bob (:mod:`mozi.sim.eve`), and the receiver model
   gives each component's click probability (:mod:`mozi.sim.receiver`). ``p_max`` is the
   largest per-state click probability.
2. Candidate slots form a Bernoulli(``p_max``) process over the chunk's slots, drawn as
   geometric gaps. Alice's choices at the candidates are looked up (random access,
   :class:`mozi.sim.source.AliceSource`) and each candidate is kept with probability
   ``p_click(state) / p_max`` — exact thinning, so kept slots are exactly the slots with at
   least one click.
3. For each kept slot a mixture component is drawn in proportion to its click probability,
   then the detector outcome conditioned on at least one click (multi-clicks kept).
4. Dark counts and background clicks are added as Poisson processes in time.

Then every click gets Gaussian jitter, the per-detector dead time removes clicks, and the
physical times are turned into Bob's clock.

Timing model: Alice emits slot ``k`` at ``k · period`` (slot 0 = start of the pass profile);
Bob's tag of a click at physical time ``t`` is ``t · (1 + drift_ppm·10^-6) + clock_offset_ps``,
rounded to 1 ps. The range-dependent propagation delay (2–4 ms, changing by up to ~20 µs
per second) is *not* in the tags: on Micius the beacon/sync laser tracking removes it, and
Bob's residual is modelled by the offset and the linear drift. A noise click at time ``t``
belongs to slot ``round(t / period)`` (each slot spans ``±period/2`` around its pulse).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from mozi.sim.errors import FileFormatError, short_repr
from mozi.sim.eve import Eavesdropper, direct_components
from mozi.sim.model import decode_basis
from mozi.sim.passes import PassProfile
from mozi.sim.receiver import (
    ReceiverConfig,
    apply_dead_time,
    noise_events,
    routing,
    sample_clicks,
)
from mozi.sim.source import AliceSource, ConfigurationError, SourceConfig
from mozi.sim.tagfile import atomic_write
from tqdm import tqdm

__all__ = [
    "AliceFile",
    "AliceFileError",
    "SimResult",
    "TimingConfig",
    "click_probabilities",
    "read_alice",
    "simulate_pass",
    "write_alice",
]

CHUNK_S = 0.1
PROFILE_BIN_S = 10.0
_INTENSITY_NAMES = ("signal", "decoy", "vacuum")


class AliceFileError(FileFormatError):
    """Alice's side file is missing, corrupt or not of this format."""


@dataclass(frozen=True)
class TimingConfig:
    """Bob's clock relative to Alice's pulses.

    Attributes
    ----------
    clock_offset_ps : float
        Bob's clock reading at Alice's slot-0 emission time.
    drift_ppm : float
        Linear rate error of Bob's clock (parts per million).
    slot_period_ps : float or None
        Slot period; ``None`` means ``1e12 / rep_rate_hz`` of the source (what
        :func:`simulate_pass` fills in). Must agree with the source if given.
    """

    clock_offset_ps: float = 1_000_000.0
    drift_ppm: float = 0.05
    slot_period_ps: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.clock_offset_ps) or not -1e3 < self.drift_ppm < 1e3:
            raise ConfigurationError("clock offset must be finite and |drift| < 1000 ppm")
        if self.slot_period_ps is not None and not self.slot_period_ps > 0:
            raise ConfigurationError("slot_period_ps must be positive")

    def bob_time_ps(self, t_ps) -> np.ndarray:
        """Bob's clock reading (int64 ps, rounded) at physical times ``t_ps``."""
        t = np.asarray(t_ps, np.float64)
        return np.rint(t + t * (self.drift_ppm * 1e-6) + self.clock_offset_ps).astype(np.int64)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def click_probabilities(source: SourceConfig, receiver: ReceiverConfig, transmittance: float,
                        eve: Eavesdropper | None = None) -> np.ndarray:
    """Probability of at least one (signal) click per slot, per Alice state.

    Returns
    -------
    float array, shape (3, 2, 2)
        Indexed by intensity code, basis, bit; dark counts excluded.
    """
    route = routing(receiver)
    comps = eve.components(source, transmittance, route) if eve is not None \
        else direct_components(source, transmittance)
    return comps.click_probabilities(route).sum(axis=-1)


@dataclass(eq=False)
class SimResult:
    """Outcome of :func:`simulate_pass`.

    Attributes
    ----------
    tags_ps : int64 array
        Bob's time tags (his clock, ps), sorted.
    channels : uint8 array
        Detector of each tag, 0..3 = H, V, D, A (a multi-click is several records).
    true_slot : int64 array
        Ground truth: Alice's slot of each record (noise clicks: the slot they fall in).
    noise : bool array
        Ground truth: the record is a dark count or background click.
    alice : AliceSource
    first_slot, n_slots : int
        Slots ``first_slot … first_slot + n_slots - 1`` were simulated.
    timing : TimingConfig
        With ``slot_period_ps`` filled in.
    profile : list of dict
        Per 10-s bin of the pass: ``t_s`` (bin start), ``detections`` (all records),
        ``sifted_kbps`` and ``qber`` (ground truth, in-gate), ``distance_km``, ``loss_db``.
    totals : dict
        Whole-run figures (see ``docs/simulator.md``).
    """

    tags_ps: np.ndarray
    channels: np.ndarray
    true_slot: np.ndarray
    noise: np.ndarray
    alice: AliceSource
    first_slot: int
    n_slots: int
    timing: TimingConfig
    profile: list[dict]
    totals: dict
    pass_name: str = ""
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    eve: Eavesdropper | None = None
    t_start_s: float = 0.0
    t_stop_s: float = 0.0

    @property
    def slot_period_ps(self) -> float:
        """Slot period in ps."""
        return float(self.timing.slot_period_ps)

    def metadata(self) -> dict:
        """JSON-able description of the run (everything needed to reproduce it)."""
        return {
            "generator": "mozi.sim.link.simulate_pass",
            "pass": self.pass_name,
            "seed": self.alice.seed,
            "source": self.alice.config.to_dict(),
            "timing": self.timing.to_dict(),
            "receiver": self.receiver.to_dict(),
            "eve": self.eve.to_dict() if self.eve is not None else None,
            "first_slot": self.first_slot,
            "n_slots": self.n_slots,
            "slot_period_ps": self.slot_period_ps,
            "t_start_s": self.t_start_s,
            "t_stop_s": self.t_stop_s,
            "channel_names": ["H", "V", "D", "A"],
        }


_SOURCE = SourceConfig()
_RECEIVER = ReceiverConfig()
_TIMING = TimingConfig()


def _candidates(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Positions of successes of a Bernoulli(p) process over ``range(n)`` (sorted int64)."""
    if p <= 0.0 or n <= 0:
        return np.empty(0, np.int64)
    if p >= 1.0:
        return np.arange(n, dtype=np.int64)
    parts = []
    pos = -1
    while True:
        mean = (n - 1 - pos) * p
        draw = int(mean + 6.0 * math.sqrt(mean) + 16)
        steps = np.cumsum(rng.geometric(p, size=draw)) + pos
        parts.append(steps[steps < n])
        if steps[-1] >= n:
            break
        pos = int(steps[-1])
    return np.concatenate(parts).astype(np.int64)


def _pass_range(profile: PassProfile, t_start, t_stop) -> tuple[float, float]:
    lo, hi = float(profile.times_s[0]), float(profile.times_s[-1])
    t0 = lo if t_start is None else float(t_start)
    t1 = hi if t_stop is None else float(t_stop)
    if not (lo <= t0 < t1 <= hi):
        raise ConfigurationError(
            f"time range [{t0:g}, {t1:g}) s must lie within the pass [{lo:g}, {hi:g}] s "
            "and be non-empty")
    return t0, t1


def simulate_pass(
    profile: PassProfile,
    *,
    seed: int,
    source: SourceConfig = _SOURCE,
    receiver: ReceiverConfig = _RECEIVER,
    timing: TimingConfig = _TIMING,
    eve: Eavesdropper | None = None,
    t_start: float | None = None,
    t_stop: float | None = None,
    progress: bool = False,
) -> SimResult:
    """Simulate Bob's detections over (part of) a pass.

    Parameters
    ----------
    profile : PassProfile
        Loss versus time; slot 0 is emitted at the profile's time 0.
    seed : int
        Alice's generator key (``AliceSource(seed)``) and, through a separate stream, the
        channel's randomness. Same arguments and seed → same result.
    source, receiver, timing : configs
    eve : Eavesdropper, optional
    t_start, t_stop : float, optional
        Simulated time range within the pass in seconds (default: all of it).
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    SimResult

    Raises
    ------
    ConfigurationError
        Bad time range, or a ``timing.slot_period_ps`` that disagrees with the source.
    """
    period = source.slot_period_ps
    if timing.slot_period_ps is not None and \
            abs(timing.slot_period_ps - period) > 1e-9 * period:
        raise ConfigurationError(
            f"timing.slot_period_ps={timing.slot_period_ps} disagrees with the source's "
            f"{period} ps")
    timing = replace(timing, slot_period_ps=period)
    t0, t1 = _pass_range(profile, t_start, t_stop)
    rate = source.rep_rate_hz
    first_slot = math.ceil(round(t0 * rate, 6))
    end_slot = math.ceil(round(t1 * rate, 6))
    n_slots = end_slot - first_slot
    alice = AliceSource(seed, source)
    rng = np.random.default_rng([alice.seed & 0xFFFFFFFF, alice.seed >> 32, 0x11C])
    route = routing(receiver)
    chunk = max(1, round(CHUNK_S * rate))

    slot_parts, time_parts, ch_parts, noise_parts = [], [], [], []
    bar = tqdm(total=round(t1 - t0, 1), unit="s", desc="simulate", file=sys.stderr,
               disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
    try:
        for k0 in range(first_slot, end_slot, chunk):
            k1 = min(k0 + chunk, end_slot)
            t_mid = 0.5 * (k0 + k1) / rate
            trans = float(profile.transmittance_at(t_mid))
            comps = eve.components(source, trans, route) if eve is not None \
                else direct_components(source, trans)
            cp = comps.click_probabilities(route)                   # (3, 2, 2, J)
            p_state = cp.sum(axis=-1)
            p_max = float(p_state.max())
            cand = _candidates(rng, k1 - k0, p_max) + k0
            if cand.size:
                basis, bit, inten = alice.choices(cand)
                keep = rng.random(cand.size) * p_max < p_state[inten, basis, bit]
                slots = cand[keep]
                basis, bit, inten = basis[keep], bit[keep], inten[keep]
                cum = np.cumsum(cp[inten, basis, bit], axis=1)      # (n, J)
                u = rng.random(slots.size) * cum[:, -1]
                j = np.minimum((cum <= u[:, None]).sum(axis=1), cum.shape[1] - 1)
                idx = (inten, basis, bit, j)
                clicks = sample_clicks(rng, comps.kind[idx], comps.param[idx],
                                       route[comps.basis[idx], comps.bit[idx]])
                row, det = np.nonzero(clicks)
                s = slots[row]
                slot_parts.append(s)
                time_parts.append(s * period)
                ch_parts.append(det.astype(np.uint8))
                noise_parts.append(np.zeros(s.size, bool))
            nt, nch = noise_events(rng, (k0 - 0.5) * period, (k1 - 0.5) * period, receiver)
            slot_parts.append(np.floor(nt / period + 0.5).astype(np.int64))
            time_parts.append(nt)
            ch_parts.append(nch)
            noise_parts.append(np.ones(nt.size, bool))
            bar.update(round((k1 - k0) / rate, 6))
    finally:
        bar.close()

    true_slot = np.concatenate(slot_parts).astype(np.int64)
    phys = np.concatenate(time_parts).astype(np.float64)
    channels = np.concatenate(ch_parts).astype(np.uint8)
    noise = np.concatenate(noise_parts)
    signal = ~noise
    if receiver.jitter_ps > 0:
        phys[signal] += rng.normal(0.0, receiver.jitter_ps, int(signal.sum()))
    clicks_before = phys.size
    alive = apply_dead_time(phys, channels, receiver.dead_time_ps)
    true_slot, phys, channels, noise = true_slot[alive], phys[alive], channels[alive], \
        noise[alive]
    tags = timing.bob_time_ps(phys)
    order = np.lexsort((channels, tags))
    tags, phys, channels, true_slot, noise = (a[order] for a in
                                              (tags, phys, channels, true_slot, noise))

    profile_bins, totals = _statistics(rng, profile, alice, receiver, period, rate, t0, t1,
                                       true_slot, phys, channels, noise)
    totals["dead_time_losses"] = int(clicks_before - alive.sum())
    totals["n_slots"] = int(n_slots)
    return SimResult(tags, channels, true_slot, noise, alice, first_slot, n_slots, timing,
                     profile_bins, totals, pass_name=profile.name, receiver=receiver, eve=eve,
                     t_start_s=t0, t_stop_s=t1)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def _statistics(rng, profile, alice, receiver, period, rate, t0, t1, true_slot, phys,
                channels, noise):
    """Ground-truth sifting per 10-s bin: in-gate clicks, multi-click rule of the model."""
    in_gate = np.abs(phys - true_slot * period) <= receiver.gate_ps / 2
    gs = true_slot[in_gate]
    gm = (np.uint8(1) << channels[in_gate]).astype(np.uint8)
    order = np.argsort(gs, kind="stable")
    gs, gm = gs[order], gm[order]
    if gs.size:
        starts = np.flatnonzero(np.concatenate([[True], gs[1:] != gs[:-1]]))
        slots = gs[starts]
        masks = np.bitwise_or.reduceat(gm, starts).astype(np.uint8)
    else:
        slots = np.empty(0, np.int64)
        masks = np.empty(0, np.uint8)
    rand = rng.integers(0, 4, slots.size, dtype=np.uint8)
    valid, b_basis, b_bit, multi = decode_basis(masks, rand)
    a_basis, a_bit, a_int = alice.choices(slots)
    sifted = valid & (b_basis == a_basis)
    error = sifted & (b_bit != a_bit)

    edges = np.arange(math.floor(t0 / PROFILE_BIN_S) * PROFILE_BIN_S, t1, PROFILE_BIN_S)
    nb = edges.size
    rec_bin = np.clip(((true_slot / rate - edges[0]) // PROFILE_BIN_S).astype(np.int64), 0,
                      nb - 1)
    slot_bin = np.clip(((slots / rate - edges[0]) // PROFILE_BIN_S).astype(np.int64), 0,
                       nb - 1)
    det = np.bincount(rec_bin, minlength=nb)
    sif = np.bincount(slot_bin, weights=sifted, minlength=nb).astype(np.int64)
    err = np.bincount(slot_bin, weights=error, minlength=nb).astype(np.int64)
    bins = []
    for i, start in enumerate(edges):
        span = float(min(start + PROFILE_BIN_S, t1) - max(start, t0))
        mid = max(start, t0) + span / 2
        bins.append({
            "t_s": round(float(start), 3),
            "duration_s": round(float(span), 3),
            "distance_km": round(float(profile.distance_at(mid)), 1),
            "loss_db": round(float(profile.loss_at(mid)), 2),
            "detections": int(det[i]),
            "sifted_kbps": round(float(sif[i]) / span / 1e3, 4),
            "qber": _ratio(int(err[i]), int(sif[i])),
        })
    duration = t1 - t0
    by_int = {}
    for code, name in enumerate(_INTENSITY_NAMES):
        m = a_int == code
        s_i, e_i = int(sifted[m].sum()), int(error[m].sum())
        by_int[name] = {"gated_slots": int(m.sum()), "sifted_bits": s_i, "errors": e_i,
                        "qber": _ratio(e_i, s_i)}
    totals = {
        "duration_s": round(duration, 6),
        "detections": int(true_slot.size),
        "noise_detections": int(noise.sum()),
        "gated_slots": int(slots.size),
        "multi_click_slots": int(multi.sum()),
        "sifted_bits": int(sifted.sum()),
        "errors": int(error.sum()),
        "qber": _ratio(int(error.sum()), int(sifted.sum())),
        "sifted_kbps": round(int(sifted.sum()) / duration / 1e3, 4),
        "by_intensity": by_int,
    }
    return bins, totals


# --------------------------------------------------------------------------------------------
# Alice's side file
# --------------------------------------------------------------------------------------------

_ALICE_FORMAT = "mozi-alice"
_ALICE_VERSION = 1


@dataclass
class AliceFile:
    """Alice's side of a simulated pass: her generator (stands in for stored QRNG output).

    Attributes
    ----------
    source : AliceSource
    metadata : dict
        :meth:`SimResult.metadata` of the run.
    """

    source: AliceSource
    metadata: dict


def write_alice(path: str | os.PathLike, result: SimResult) -> None:
    """Write Alice's side file (JSON) atomically, readable by its owner only (mode 0600).

    Raises
    ------
    mozi.sim.tagfile.OutputError
        The file cannot be written.
    """
    doc = {"format": _ALICE_FORMAT, "version": _ALICE_VERSION,
           "source": result.alice.to_dict(), "metadata": result.metadata()}
    # Alice's seed gives every bit she sent: the file is as secret as a key store
    atomic_write(path, [(json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")],
                 mode=0o600)


def read_alice(path: str | os.PathLike) -> AliceFile:
    """Read a file written by :func:`write_alice`.

    Raises
    ------
    AliceFileError
        Missing, unreadable, not JSON, or not an Alice file of a known version.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise AliceFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise AliceFileError(f"{path}: not a Mozi Alice file (invalid JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != _ALICE_FORMAT:
        raise AliceFileError(f"{path}: not a Mozi Alice file")
    if doc.get("version") != _ALICE_VERSION:
        raise AliceFileError(f"{path}: unsupported Alice file version "
                             f"{short_repr(doc.get('version'))}")
    try:
        source = AliceSource.from_dict(doc["source"])
        metadata = doc["metadata"]
    except (KeyError, ConfigurationError) as exc:
        raise AliceFileError(f"{path}: corrupt Alice file ({str(exc)[:120]})") from None
    if not isinstance(metadata, dict):
        raise AliceFileError(f"{path}: corrupt Alice file (metadata)")
    for name in ("first_slot", "n_slots"):
        value = metadata.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < 2**62):
            raise AliceFileError(f"{path}: corrupt Alice file (metadata {name})")
    period = metadata.get("slot_period_ps")
    if period is not None and (isinstance(period, bool) or not isinstance(period, int | float)
                               or not 0 < period < 1e15):
        raise AliceFileError(f"{path}: corrupt Alice file (metadata slot_period_ps)")
    if not isinstance(metadata.get("pass", ""), str | None):
        raise AliceFileError(f"{path}: corrupt Alice file (metadata pass)")
    return AliceFile(source, metadata)
