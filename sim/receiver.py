"""Bob's receiver: passive basis choice, four single-photon detectors, noise and dead time.

Physics (all per slot, vectorised over slots):

* A photon arriving in polarisation state ``(basis_in, bit_in)`` goes to the Z arm (H/V)
  with probability ``p_z`` and to the X arm (D/A) otherwise (passive beam splitter). In the arm
  of its own basis it reaches the correct detector with probability ``1 - misalignment`` and
  the other one with ``misalignment``; in the other arm it reaches either with 1/2. Detector
  ``d`` then registers it with probability ``efficiency[d]``. This gives the *routing*
  probabilities ``r[basis_in, bit_in, d]`` (:func:`routing`).
* A coherent state with mean photon number ``nu`` at the receiver makes independent Poisson
  photon numbers at the four detectors, so detector ``d`` clicks with probability
  ``1 - exp(-nu * r[d])``, independently of the others.
* A Fock state of ``m`` photons (what a photon-number-splitting eavesdropper forwards) is
  distributed multinomially over the detectors; detector ``d`` clicks if it gets a photon.
* More than one click in a slot is a multi-click and is kept (one record per detector).
* Dark counts (per detector) and background light (shared between detectors in proportion
  to their efficiency and arm) are Poisson processes in time, independent of the pulses.
* Each click gets independent Gaussian timing jitter (RMS ``jitter_ps``); each detector is
  then blind for ``dead_time_ps`` after every registered click (non-paralysable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from mozi.sim.source import ConfigurationError

__all__ = [
    "COHERENT",
    "FOCK",
    "ReceiverConfig",
    "apply_dead_time",
    "click_probability",
    "noise_events",
    "routing",
    "sample_clicks",
]

#: Kinds of light reaching the receiver in a slot.
COHERENT = 0
FOCK = 1


def _four(value, name: str) -> tuple[float, float, float, float]:
    v = np.broadcast_to(np.asarray(value, np.float64), (4,)) if np.ndim(value) == 0 \
        else np.asarray(value, np.float64)
    if v.shape != (4,):
        raise ConfigurationError(f"{name} needs one value per detector (H, V, D, A)")
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class ReceiverConfig:
    """Ground receiver settings (defaults calibrated to the Micius 2017 pass).

    Attributes
    ----------
    efficiency : 4 floats (or one for all)
        Detection efficiency of H, V, D, A (mismatch allowed). 0.45 puts the sifted key of
        the 2017 pass at the published ~1.7 Mbit on top of the loss table.
    dark_count_hz : 4 floats (or one for all)
        Dark-count rate of each detector.
    background_hz : float
        Background-light click rate summed over the four detectors.
    dead_time_ps : float
        Non-paralysable dead time of each detector.
    jitter_ps : float
        RMS of the Gaussian timing jitter of each click (detector plus tagger).
    misalignment : float
        Probability that a photon in the arm of its own basis reaches the wrong detector
        (polarisation reference error); sets the optical QBER.
    p_z : float
        Probability that the passive beam splitter sends a photon to the Z arm.
    gate_ps : float
        Width of the time filter, centred on each pulse, that the ground-truth statistics of
        :func:`mozi.sim.link.simulate_pass` apply (as the post-processing does).
    """

    efficiency: tuple[float, float, float, float] = (0.45, 0.45, 0.45, 0.45)
    dark_count_hz: tuple[float, float, float, float] = (25.0, 25.0, 25.0, 25.0)
    background_hz: float = 100.0
    dead_time_ps: float = 50_000.0
    jitter_ps: float = 150.0
    misalignment: float = 0.01
    p_z: float = 0.5
    gate_ps: float = 2_000.0

    def __post_init__(self) -> None:
        eff = _four(self.efficiency, "efficiency")
        dark = _four(self.dark_count_hz, "dark_count_hz")
        object.__setattr__(self, "efficiency", eff)
        object.__setattr__(self, "dark_count_hz", dark)
        if any(not 0.0 <= e <= 1.0 for e in eff):
            raise ConfigurationError("detector efficiencies must lie in [0, 1]")
        if any(d < 0 for d in dark) or self.background_hz < 0:
            raise ConfigurationError("dark-count and background rates must be >= 0")
        if self.dead_time_ps < 0 or self.jitter_ps < 0 or self.gate_ps <= 0:
            raise ConfigurationError("dead time and jitter must be >= 0 and the gate > 0")
        if not 0.0 <= self.misalignment <= 0.5:
            raise ConfigurationError("misalignment must lie in [0, 0.5]")
        if not 0.0 <= self.p_z <= 1.0:
            raise ConfigurationError("p_z must lie in [0, 1]")

    def noise_rates_hz(self) -> np.ndarray:
        """Dark plus background click rate of each detector (H, V, D, A)."""
        arm = np.array([self.p_z, self.p_z, 1 - self.p_z, 1 - self.p_z]) / 2
        w = arm * np.asarray(self.efficiency)
        share = w / w.sum() if w.sum() > 0 else np.zeros(4)
        return np.asarray(self.dark_count_hz) + self.background_hz * share

    def to_dict(self) -> dict:
        """JSON-able form."""
        d = asdict(self)
        d["efficiency"] = list(self.efficiency)
        d["dark_count_hz"] = list(self.dark_count_hz)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ReceiverConfig:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigurationError(f"bad receiver description: {exc}") from None


def routing(cfg: ReceiverConfig) -> np.ndarray:
    """Per-photon detection probabilities ``r[basis_in, bit_in, detector]``, shape (2, 2, 4).

    ``r`` includes the basis splitter, misalignment and detector efficiency; ``1 - r.sum(-1)``
    is the probability that the photon is not detected.
    """
    e = cfg.misalignment
    arm = (cfg.p_z, 1.0 - cfg.p_z)
    r = np.zeros((2, 2, 4))
    for b_in in (0, 1):
        for x_in in (0, 1):
            for d in range(4):
                b_det, x_det = d >> 1, d & 1
                if b_det == b_in:
                    q = 1.0 - e if x_det == x_in else e
                else:
                    q = 0.5
                r[b_in, x_in, d] = arm[b_det] * q * cfg.efficiency[d]
    return r


def click_probability(kind, param, r) -> np.ndarray:
    """Probability of at least one click for light of ``kind`` with ``param``.

    Parameters
    ----------
    kind : int array
        :data:`COHERENT` (``param`` = mean photon number at the receiver) or :data:`FOCK`
        (``param`` = photon number).
    param : float array
    r : float array, shape (..., 4)
        Routing probabilities (:func:`routing`) of the light's polarisation state.
    """
    eta = np.asarray(r).sum(axis=-1)
    param = np.asarray(param, np.float64)
    coh = -np.expm1(-param * eta)
    fock = 1.0 - np.power(np.clip(1.0 - eta, 0.0, 1.0), param)
    return np.where(np.asarray(kind) == FOCK, fock, coh)


def sample_clicks(rng: np.random.Generator, kind, param, r) -> np.ndarray:
    """Detector outcomes conditioned on at least one click.

    Parameters
    ----------
    rng : numpy Generator
    kind, param : arrays of length n
        As in :func:`click_probability`.
    r : float array, shape (n, 4)

    Returns
    -------
    bool array, shape (n, 4)
        Which of H, V, D, A clicked; every row has at least one click.

    Raises
    ------
    ValueError
        A row cannot click at all (zero routing probability or no photons).
    """
    kind = np.asarray(kind)
    param = np.asarray(param, np.float64)
    r = np.asarray(r, np.float64)
    n = kind.size
    if n and np.any(click_probability(kind, param, r) <= 0):
        raise ValueError("every row must have a non-zero click probability")
    clicks = np.zeros((n, 4), bool)
    coh = np.flatnonzero(kind == COHERENT)
    if coh.size:
        # independent detectors: draw the first clicking one, the later ones freely
        p = -np.expm1(-param[coh, None] * r[coh])
        cum = 1.0 - np.cumprod(1.0 - p, axis=1)
        u = rng.random(coh.size) * cum[:, -1]
        first = np.minimum((cum <= u[:, None]).sum(axis=1), 3)
        later = rng.random((coh.size, 4)) < p
        idx = np.arange(4)
        clicks[coh] = (idx == first[:, None]) | (later & (idx > first[:, None]))
    pending = np.flatnonzero(kind == FOCK)
    while pending.size:
        pv = np.empty((pending.size, 5))
        pv[:, :4] = r[pending]
        pv[:, 4] = np.clip(1.0 - pv[:, :4].sum(axis=1), 0.0, 1.0)
        pv /= pv.sum(axis=1, keepdims=True)
        got = rng.multinomial(param[pending].astype(np.int64), pv)[:, :4] > 0
        ok = got.any(axis=1)
        clicks[pending[ok]] = got[ok]
        pending = pending[~ok]
    return clicks


def noise_events(rng: np.random.Generator, t0_ps: float, t1_ps: float,
                 cfg: ReceiverConfig) -> tuple[np.ndarray, np.ndarray]:
    """Dark counts and background clicks in ``[t0_ps, t1_ps)``.

    Returns
    -------
    times_ps : float64 array (unsorted)
    channels : uint8 array
    """
    rates = cfg.noise_rates_hz()
    counts = rng.poisson(rates * (t1_ps - t0_ps) * 1e-12)
    channels = np.repeat(np.arange(4, dtype=np.uint8), counts)
    times = t0_ps + rng.random(channels.size) * (t1_ps - t0_ps)
    return times, channels


def apply_dead_time(times_ps: np.ndarray, channels: np.ndarray,
                    dead_time_ps: float) -> np.ndarray:
    """Non-paralysable dead time per detector: which clicks are registered.

    A click is lost when it comes less than ``dead_time_ps`` after the previous *registered*
    click of the same detector.

    Returns
    -------
    bool array, same length as ``times_ps``
    """
    times_ps = np.asarray(times_ps, np.float64)
    channels = np.asarray(channels)
    keep = np.ones(times_ps.size, bool)
    if dead_time_ps <= 0 or times_ps.size < 2:
        return keep
    order = np.lexsort((times_ps, channels))
    t = times_ps[order]
    ch = channels[order]
    alive = np.arange(t.size)
    # A click whose gap to the previous candidate of its detector is >= dead time is surely
    # registered (the last registered click is no later than that candidate); the click right
    # after a surely-registered one with a shorter gap is surely lost. Repeat until no
    # violation remains: the loop runs as many times as the longest burst is long.
    while alive.size > 1:
        gap = np.diff(t[alive])
        same = ch[alive[1:]] == ch[alive[:-1]]
        bad = same & (gap < dead_time_ps)
        if not bad.any():
            break
        prev_sure = np.concatenate([[True], ~bad[:-1]])
        drop = bad & prev_sure
        lost = np.zeros(alive.size, bool)
        lost[1:] = drop
        alive = alive[~lost]
    keep[:] = False
    keep[order[alive]] = True
    return keep
