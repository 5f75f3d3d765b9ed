"""Time-bin recovery: clock offset and drift from Bob's own tags, slot registers, slot alignment.

Bob's tag of a photon sent in Alice's slot ``k`` arrives at ``t = c + k·P + jitter``, with
``P = T·(1 + drift)`` the slot period seen on Bob's clock (``T`` the nominal period) and ``c``
an unknown offset. Nothing but the tags is needed to find ``P`` and ``c`` modulo ``P``:

1. **Coarse drift from detection pairs.** Two signal tags ``Δ`` apart sit at the same slot
   phase: ``Δ / P`` is an integer up to jitter. For a drift uncertainty ``R`` the candidate
   periods ``P̂(1 + ε)``, ``|ε| ≤ R``, are scored with ``Σ cos(2π Δ/(P̂(1 + ε)))`` over
   random pairs up to ``L ≈ 8/R`` slots apart (at any detection rate); the best candidate
   shrinks ``R`` 32-fold and the next round uses pairs 32 times further apart (coarse to
   fine, until the phase advance over the whole run is below 0.05 slot or the pairs span the
   whole run).
2. **Phase per chunk.** Timestamps are folded modulo ``P̂`` in chunks of time; the circular
   mean of each chunk is the arrival phase of the signal. Chunk phases are taken relative to
   the common peak when the whole run stays within a quarter slot (else unwrapped) and a line
   is fitted (weighted by the counts): its slope corrects the period. The peak of all folded
   tags gives ``c``; the jitter ``σ`` is the second moment around it with the uniform
   background (dark counts) subtracted.
3. **SlotAssigner registers.** Slots are cut so the peak sits in the middle of a slot
   (``slot start = c − P/2 + k·P``); the acceptance window is ``±window_sigmas·σ`` around
   it. Registers are fixed-point (``frac_bits``) and are recomputed per block of events from the
   exact model, so fixed-point rounding of the period never accumulates
   (:func:`slot_blocks`, the ``offset = B − S·period`` rule of
   :func:`mozi.sim.model.assign_slots`, with timestamps rebased per block).
4. **Integer alignment** (which of Bob's slots is Alice's slot 0): Bob discloses
   ``(slot, basis, bit)`` of a short run of detections; Alice compares them with her records
   over every candidate shift and answers the one with a clearly lowest error rate
   (:func:`find_slot_shift`). The disclosed detections are removed from the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from mozi.firmware.protocol import REGISTERS
from mozi.host.devices.device import SlotBlock
from mozi.sim.errors import MoziError

__all__ = [
    "AlignmentResult",
    "TimingError",
    "TimingEstimate",
    "alignment_sample",
    "estimate_timing",
    "find_slot_shift",
    "slot_blocks",
]


#: Largest union of candidate slots :func:`find_slot_shift` evaluates in one piece.
_UNION_SLOTS = 8_000_000


class TimingError(MoziError):
    """The slot clock cannot be recovered from the tags (too few or structureless tags)."""


@dataclasses.dataclass(frozen=True)
class TimingEstimate:
    """Recovered slot clock of Bob's tags (all times in ticks).

    Attributes
    ----------
    period : float
        Slot period ``P`` on Bob's clock.
    offset : float
        Arrival time of the signal peak of Bob's slot 0, slots being numbered from Bob's
        clock epoch: slot ``k`` peaks at ``offset + k·period``, ``|offset| <= period/2``. If
        both clocks share an epoch, Bob's slot numbers equal Alice's up to a small shift.
    nominal_period : float
        The nominal period ``T`` the search started from.
    drift : float
        ``P / T − 1``.
    sigma : float
        RMS width of the arrival peak (jitter).
    residual_rms : float
        RMS of the chunk phases around the fitted line (ticks): small when the clock model
        (constant period) holds.
    chunks : int
        Chunks used in the phase fit.
    signal_fraction : float
        Resultant length of the folded phases (1 = all tags in a sharp peak, 0 = no peak).
    """

    period: float
    offset: float
    nominal_period: float
    drift: float
    sigma: float
    residual_rms: float
    chunks: int
    signal_fraction: float

    def slot_of(self, t) -> np.ndarray:
        """Bob's slot index of times ``t`` (nearest peak)."""
        return np.floor((np.asarray(t, np.float64) - self.offset) / self.period + 0.5) \
            .astype(np.int64)

    def to_json(self) -> dict:
        """JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


def _pair_scan(t: np.ndarray, period: float, spread: float, rng: np.random.Generator, *,
               grid: int = 129, pairs: int = 20_000) -> tuple[float, float, float]:
    """One coarse-to-fine round: the period correction that best phases up detection pairs.

    Pairs ``(t_j, t_j')`` with separations ``Δ`` spread uniformly up to ``L`` slots are scored
    on a grid of relative corrections ``ε ∈ [−spread, spread]``: ``Σ cos(2π Δ / (P̂(1 + ε)))``
    is largest where both tags of the signal pairs sit at the same slot phase. With ``L =
    (grid − 1)/(16·spread)`` the grid step resolves the peak (width ``~1/L``); long
    separations alias, but the sum over many different ``Δ`` leaves only the true peak.

    Returns
    -------
    period : float
        Corrected period.
    spread : float
        Remaining relative uncertainty (two grid steps).
    significance : float
        Peak score over the noise level ``sqrt(pairs)``.
    """
    n = t.size
    span = float(t[-1] - t[0])
    lag = min((grid - 1) / (16.0 * spread) * period, span)
    anchors = rng.integers(0, n - 1, pairs)
    target = t[anchors] + rng.random(pairs) * lag
    # the last tag before the target: separations stay below L (no aliasing noise)
    partner = np.searchsorted(t, target, side="right") - 1
    ok = partner > anchors
    if ok.sum() < pairs // 10:                   # sparse tags: take the first one after
        partner = np.minimum(partner + 1, n - 1)
        ok = partner > anchors
    d = (t[partner] - t[anchors])[ok] / period
    eps = np.linspace(-spread, spread, grid)
    score = np.empty(grid)
    for lo in range(0, grid, 32):
        e = eps[lo:lo + 32, None]
        score[lo:lo + 32] = np.cos(2 * np.pi * (d[None, :] / (1.0 + e))).sum(axis=1)
    best = int(np.argmax(score))
    shift = eps[best]
    if 0 < best < grid - 1:                      # parabolic interpolation of the peak
        y0, y1, y2 = score[best - 1:best + 2]
        den = y0 - 2 * y1 + y2
        if den < 0:
            shift += 0.5 * (y0 - y2) / den * (eps[1] - eps[0])
    sig = float(score[best]) / math.sqrt(max(d.size, 1))
    return period * (1.0 + shift), 2 * (eps[1] - eps[0]), sig


def _peak_sigma(dev: np.ndarray) -> float:
    """RMS width (slots) of the arrival peak in ``dev`` (slot phases centred on the peak).

    ``dev`` is a Gaussian peak on a uniform background (dark counts, background light). The
    background density is measured away from the peak (``|dev| >= 1/4``) and its share of the
    second moment inside ``|dev| < w`` removed; ``w`` then narrows to 5σ and the estimate is
    repeated. Falls back to the MAD when the subtraction leaves nothing.
    """
    a = np.abs(dev)
    central = dev[a < 0.25]
    mad = float(np.median(np.abs(central - np.median(central)))) if central.size else 0.25
    sd = max(1.4826 * mad, 1e-3)
    density = np.count_nonzero(a >= 0.25) / 0.5          # background tags per unit slot
    w = 0.25
    for _ in range(4):
        inside = a < w
        bg = density * 2 * w
        sig_n = np.count_nonzero(inside) - bg
        if sig_n <= 10:
            break
        var = (float(np.sum(dev[inside] ** 2)) - bg * w * w / 3) / sig_n
        if var <= 0:
            break
        sd = max(math.sqrt(var), 1e-3)
        w = min(0.25, 5 * sd)
    return sd


def _circular(phase: np.ndarray) -> complex:
    return complex(np.exp(2j * np.pi * phase).mean()) if phase.size else 0j


def estimate_timing(timestamps: np.ndarray, nominal_period: float, *, max_drift: float = 2e-4,
                    chunk_ticks: float | None = None, min_chunk_events: int = 8,
                    seed: int = 0) -> TimingEstimate:
    """Recover the slot period and offset from the tags themselves.

    Parameters
    ----------
    timestamps : integer or float array
        Bob's tags in ticks, sorted.
    nominal_period : float
        Nominal slot period in ticks.
    max_drift : float
        Largest relative clock drift searched for.
    chunk_ticks : float, optional
        Chunk length of the phase fit (default: ``2e6`` nominal periods — 20 ms at 10 ns —
        or longer so that a chunk holds 16 tags on average).
    min_chunk_events : int
        Chunks with fewer tags are skipped.
    seed : int
        Seed of the random pair selection.

    Returns
    -------
    TimingEstimate

    Raises
    ------
    TimingError
        Fewer than 100 tags, or no periodic structure found.
    """
    t = np.asarray(timestamps, np.float64)
    if t.size < 100:
        raise TimingError(f"{t.size} tags are too few to recover the slot clock (need >= 100)")
    if np.any(np.diff(t) < 0):
        raise TimingError("tags are not sorted in time")
    t0 = float(t[0])
    t = t - t0
    rng = np.random.default_rng(seed)
    period = float(nominal_period)
    duration = float(t[-1])
    if chunk_ticks is None:
        # 20 ms at 10 ns slots, longer when the rate is low (>= 16 tags per chunk on average)
        chunk_ticks = max(2e6 * period, 16.0 * duration / t.size)
    # 1. coarse to fine from detection pairs, until the phase advance over the whole run is
    #    small (or the pairs span the whole run and cannot resolve more)
    spread = max_drift
    for _ in range(10):
        if spread * duration < 0.05 * period:
            break
        period, new_spread, significance = _pair_scan(t, period, spread, rng)
        if significance < 5.0:
            raise TimingError("tags show no periodic arrival structure at the nominal slot "
                              f"period (pair coherence {significance:.1f} sigma)")
        if new_spread >= spread:
            break
        spread = new_spread
    # 2. chunk phases, weighted line fit (iterated once the period is refined)
    for _ in range(3):
        phase = np.mod(t / period, 1.0)
        idx = (t // chunk_ticks).astype(np.int64)
        starts = np.flatnonzero(np.concatenate([[True], idx[1:] != idx[:-1]]))
        counts = np.diff(np.concatenate([starts, [t.size]]))
        z = np.add.reduceat(np.exp(2j * np.pi * phase), starts)
        mid = np.add.reduceat(t, starts) / counts
        use = counts >= min_chunk_events
        if use.sum() < 1:
            raise TimingError("no chunk holds enough tags to measure the arrival phase")
        z, mid, counts = z[use], mid[use], counts[use]
        if spread * duration < 0.25 * period:
            # the whole run stays within a quarter slot: phases relative to the common peak,
            # no unwrapping (robust when chunks hold few signal tags)
            ref = complex(z.sum())
            ph = np.angle(z * np.conj(ref)) / (2 * np.pi) + np.angle(ref) / (2 * np.pi)
        else:
            ph = np.unwrap(np.angle(z)) / (2 * np.pi)      # in slots
        w = counts.astype(np.float64)
        if ph.size >= 2 and duration > 0:
            xm = float(np.average(mid, weights=w))
            x = mid - xm
            ym = float(np.average(ph, weights=w))
            b = float(np.sum(w * x * (ph - ym)) / np.sum(w * x * x))
            a = ym - b * xm
        else:
            a, b = float(np.average(ph, weights=w)), 0.0
        # phase(t) = a + b t (slots): peaks where t/period − b t is an integer
        period = period / (1.0 - b * period)
        resid = ph - (a + b * mid)
        spread = min(spread, 4 * abs(b) * period + 1e-15)
        if abs(b) * max(duration, 1.0) < 1e-4:      # < 1e-4 slot over the whole span
            break
    # peak position relative to the refitted period
    phase = np.mod(t / period, 1.0)
    zc = _circular(phase)
    if abs(zc) < 0.01:
        raise TimingError("tags show no periodic arrival peak at the nominal slot period "
                          f"({abs(zc):.3f} resultant)")
    peak = (np.angle(zc) / (2 * np.pi)) % 1.0
    dev = (phase - peak + 0.5) % 1.0 - 0.5                  # in slots, centred on the peak
    sigma = _peak_sigma(dev) * period
    # refine the peak with a trimmed mean around it
    core = dev[np.abs(dev) < 3 * sigma / period]
    if core.size:
        peak = (peak + float(core.mean())) % 1.0
    if peak >= 0.5:
        peak -= 1.0
    # number slots from Bob's clock epoch: slot k peaks at offset + k·period, |offset| <= P/2
    ref = t0 + peak * period
    offset = ref - round(ref / period) * period
    rms = float(np.sqrt(np.average(resid ** 2, weights=w))) * period if resid.size else 0.0
    return TimingEstimate(period=period, offset=offset, nominal_period=float(nominal_period),
                          drift=period / float(nominal_period) - 1.0, sigma=sigma,
                          residual_rms=rms, chunks=int(w.size), signal_fraction=abs(zc))


def slot_blocks(timestamps: np.ndarray, timing: TimingEstimate, *, frac_bits: int,
                window_sigmas: float = 3.0, window_ticks: float | None = None,
                max_events: int = 50_000, max_slots: int = 50_000_000) -> list[SlotBlock]:
    """Cut the tags into blocks and compute each block's SlotAssigner registers.

    A block ends after ``max_events`` tags or ``max_slots`` slots, and only at a gap of more
    than two slots between tags (so no slot's clicks are split between blocks). Each block's
    timestamps are rebased to its first tag; its ``offset`` places slot boundaries half a
    period before each peak, exact (from the clock model) at the block's middle slot. The
    fixed-point period is off by up to ``2**-(frac_bits+1)`` tick per slot, so blocks are also
    kept short enough that this drifts by less than ``0.1·σ`` at either end.

    Parameters
    ----------
    timestamps : integer array, ticks, sorted
    timing : TimingEstimate
    frac_bits : int
        Fractional bits of the device's registers (``SA_FRAC_BITS``).
    window_sigmas : float
        Half-width of the acceptance window in units of ``timing.sigma``.
    window_ticks : float, optional
        Full window width in ticks (overrides ``window_sigmas``).
    max_events, max_slots : int
        Block limits.

    Returns
    -------
    list of SlotBlock

    Raises
    ------
    TimingError
        The period does not fit the ``SA_PERIOD`` register.
    """
    t = np.asarray(timestamps, np.int64)
    P = timing.period
    scale = 1 << frac_bits
    period_fp = int(round(P * scale))
    reg_width = REGISTERS["SA_PERIOD"].width
    if period_fp >> reg_width:
        raise TimingError(f"a slot period of {P:.1f} ticks does not fit the {reg_width}-bit "
                          f"SA_PERIOD register with {frac_bits} fractional bits; use coarser "
                          "tag resolution")
    width = window_ticks if window_ticks is not None else 2 * window_sigmas * timing.sigma
    half = min(width / 2, P / 2) * scale
    ws = max(0, int(math.floor(period_fp / 2 - half)))
    we = min(period_fp, int(math.ceil(period_fp / 2 + half)))
    if we <= ws:
        we = ws + 1
    # the fixed-point period is off by `err` ticks per slot; offsets are exact at each block's
    # middle slot, so a block of n slots drifts by ±n/2·err: keep that below 0.1 σ
    err = abs(period_fp / scale - P)
    if err > 0:
        max_slots = max(1, min(max_slots, int(2 * 0.1 * timing.sigma / err)))
    gaps = np.flatnonzero(np.diff(t) > 2 * P) + 1            # allowed block starts
    blocks = []
    start = 0
    n = t.size
    while start < n:
        # tags before t[start] + max_slots·P; an integer bound (t < x ⟺ t < ⌈x⌉ for integer
        # t) keeps numpy from converting the whole tag array to float on every block
        limit_t = int(math.ceil(int(t[start]) + max_slots * P))
        hard = min(n, start + max_events, int(np.searchsorted(t, limit_t, side="left")))
        if hard >= n:
            stop = n
        else:
            # last allowed cut at or before `hard`, but after `start`
            j = int(np.searchsorted(gaps, hard, side="right")) - 1
            stop = int(gaps[j]) if j >= 0 and gaps[j] > start else hard
            if stop <= start:
                stop = hard
        base = int(t[start])
        first_edge = timing.offset - P / 2                     # start of slot 0 (ticks)
        s_b = int(math.floor((base - first_edge) / P))
        mid = (int(math.floor((int(t[stop - 1]) - first_edge) / P)) - s_b) // 2
        edge_mid = first_edge + (s_b + mid) * P                # start of the middle slot
        offset_fp = int(round((edge_mid - base) * scale)) - mid * period_fp
        blocks.append(SlotBlock(start=start, stop=stop, base_tick=base, slot_base=s_b,
                                period=period_fp, offset=offset_fp, window_start=ws,
                                window_end=we))
        start = stop
    return blocks


@dataclasses.dataclass(frozen=True)
class AlignmentResult:
    """Outcome of :func:`find_slot_shift`.

    Attributes
    ----------
    shift : int
        Alice's slot = Bob's slot + ``shift``.
    error_rate : float
        Error rate of the sample at that shift (basis-matched entries).
    compared : int
        Basis-matched sample entries at that shift.
    runner_up_error_rate : float
        Lowest error rate of any other shift.
    candidates : int
        Shifts examined.
    """

    shift: int
    error_rate: float
    compared: int
    runner_up_error_rate: float
    candidates: int


def alignment_sample(slots: np.ndarray, size: int) -> np.ndarray:
    """Indices of the ``size`` consecutive detections spanning the fewest slots.

    Bob discloses these for :func:`find_slot_shift`; a tight run keeps Alice's search cheap.
    """
    s = np.asarray(slots, np.int64)
    if s.size <= size:
        return np.arange(s.size)
    spans = s[size - 1:] - s[:s.size - size + 1]
    i = int(np.argmin(spans))
    return np.arange(i, i + size)


def find_slot_shift(sample_slots: np.ndarray, sample_basis: np.ndarray, sample_bits: np.ndarray,
                    alice_choices: Callable[[np.ndarray], tuple[np.ndarray, ...]], *,
                    center: int, max_shift: int, slot_range: tuple[int, int] | None = None,
                    max_error: float = 0.3, min_gap: float = 0.1) -> AlignmentResult:
    """Alice's side of the alignment: the shift under which Bob's sample matches her records.

    Parameters
    ----------
    sample_slots, sample_basis, sample_bits : arrays
        Bob's disclosed detections (his slot numbering).
    alice_choices : callable
        ``alice_choices(slots) -> (basis, bit, intensity)`` in Alice's numbering.
    center : int
        Expected shift (e.g. from the clocks' common epoch).
    max_shift : int
        Shifts ``center − max_shift … center + max_shift`` are tried.
    slot_range : (int, int), optional
        Alice's valid slots ``[lo, hi)``; shifts mapping the sample outside are skipped.
    max_error : float
        The best shift must have an error rate at most this.
    min_gap : float
        … and the runner-up one at least this much higher.

    Returns
    -------
    AlignmentResult

    Raises
    ------
    TimingError
        No shift fits clearly (no correlation with Alice's records).
    """
    s = np.asarray(sample_slots, np.int64)
    bb = np.asarray(sample_basis, np.uint8)
    bv = np.asarray(sample_bits, np.uint8)
    if s.size < 16:
        raise TimingError(f"{s.size} detections are too few to align the slots")
    lo_shift, hi_shift = center - max_shift, center + max_shift
    if slot_range is not None:
        lo_shift = max(lo_shift, slot_range[0] - int(s.min()))
        hi_shift = min(hi_shift, slot_range[1] - 1 - int(s.max()))
    if hi_shift < lo_shift:
        raise TimingError("no slot shift maps Bob's detections into Alice's records")
    nshift = hi_shift - lo_shift + 1
    compared = np.zeros(nshift, np.int32)
    errors = np.zeros(nshift, np.int32)
    span = int(s.max()) - int(s.min()) + nshift
    if span <= max(2 * nshift, _UNION_SLOTS):
        # a tight sample: Alice's choices over the union of all candidate windows at once
        base = int(s.min()) + lo_shift
        a_basis, a_bit, _ = alice_choices(np.arange(base, base + span, dtype=np.int64))
        rel = s - int(s.min())
        windows = ((a_basis[r:r + nshift], a_bit[r:r + nshift]) for r in rel.tolist())
    else:
        # a sparse sample (low detection rate): one window of candidates per detection
        offsets = np.arange(lo_shift, hi_shift + 1, dtype=np.int64)
        windows = (alice_choices(int(x) + offsets)[:2] for x in s.tolist())
    for j, (wb, wv) in enumerate(windows):
        m = wb == bb[j]
        compared += m
        errors += m & (wv != bv[j])
    rate = np.where(compared > 0, errors / np.maximum(compared, 1), 1.0)
    best = int(np.argmin(rate))
    others = np.delete(rate, best)
    runner = float(others.min()) if others.size else 1.0
    res = AlignmentResult(shift=lo_shift + best, error_rate=float(rate[best]),
                          compared=int(compared[best]), runner_up_error_rate=runner,
                          candidates=int(nshift))
    if res.error_rate > max_error or runner - res.error_rate < min_gap:
        raise TimingError(
            f"slot alignment failed: best shift has error rate {res.error_rate:.3f}, "
            f"runner-up {runner:.3f} over {nshift} candidates")
    return res
