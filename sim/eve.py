"""Eavesdroppers acting on the quantum channel.

An eavesdropper is described by what reaches Bob's receiver for each of Alice's states: for
intensity ``i``, basis ``b`` and bit ``x``, a *mixture* of components, each a weight with the
polarisation state and the light (coherent state of some mean photon number, or a Fock state)
that arrives at the receiver (:class:`Components`). The link simulator samples detections from
these mixtures exactly (:mod:`mozi.sim.link`), so any per-pulse attack that acts independently
on each pulse fits this description. Eve is assumed to know the public source and receiver
parameters (worst case).

* :class:`InterceptResend` — Eve intercepts a fraction of the pulses next to Alice, measures
  each in a random basis with an ideal detector and resends a coherent pulse in the state she
  found through the real channel, bright enough to keep the signal count rate. On sifted bits
  from intercepted pulses she causes 25 % errors.
* :class:`PhotonNumberSplitting` — Eve measures the photon number of every pulse (QND), keeps
  one photon of each multi-photon pulse and sends the rest to Bob over a lossless channel;
  single-photon pulses are blocked as far as needed (and, at high loss, most multi-photon pulses
  too) so that the *signal* count rate is what Bob expects. She adds no errors; the decoy
  states' count rates then no longer fit the channel, which is what the decoy analysis detects.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from mozi.sim.receiver import COHERENT, FOCK, click_probability
from mozi.sim.source import ConfigurationError, SourceConfig

__all__ = [
    "Components",
    "Eavesdropper",
    "InterceptResend",
    "PhotonNumberSplitting",
    "direct_components",
    "eve_from_dict",
]


@dataclass(frozen=True, eq=False)
class Components:
    """What reaches Bob for each of Alice's states: arrays of shape (3, 2, 2, J).

    Index ``[i, b, x, j]`` is component ``j`` for Alice's intensity ``i``, basis ``b``, bit
    ``x``. Weights of one state sum to at most 1 (the rest: nothing reaches Bob).

    Attributes
    ----------
    weight : float array
    basis, bit : uint8 arrays
        Polarisation state of the light reaching Bob.
    kind : uint8 array
        :data:`mozi.sim.receiver.COHERENT` or :data:`mozi.sim.receiver.FOCK`.
    param : float array
        Mean photon number at the receiver (coherent) or photon number (Fock).
    """

    weight: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    kind: np.ndarray
    param: np.ndarray

    def click_probabilities(self, route: np.ndarray) -> np.ndarray:
        """``weight × P(at least one click)`` per component, shape (3, 2, 2, J)."""
        r = route[self.basis, self.bit]          # (3, 2, 2, J, 4)
        return self.weight * click_probability(self.kind, self.param, r)


def _states(j: int) -> tuple[np.ndarray, np.ndarray]:
    b = np.broadcast_to(np.arange(2, dtype=np.uint8)[None, :, None, None], (3, 2, 2, j))
    x = np.broadcast_to(np.arange(2, dtype=np.uint8)[None, None, :, None], (3, 2, 2, j))
    return b.copy(), x.copy()


def direct_components(source: SourceConfig, transmittance: float) -> Components:
    """No eavesdropper: Alice's coherent state attenuated by the channel."""
    mu = np.asarray(source.intensities, np.float64)
    b, x = _states(1)
    return Components(
        weight=np.ones((3, 2, 2, 1)),
        basis=b, bit=x,
        kind=np.full((3, 2, 2, 1), COHERENT, np.uint8),
        param=np.broadcast_to(mu[:, None, None, None] * transmittance, (3, 2, 2, 1)).copy(),
    )


class Eavesdropper(ABC):
    """An attack on the quantum channel, described per pulse by :class:`Components`."""

    name = "eve"

    @abstractmethod
    def components(self, source: SourceConfig, transmittance: float,
                   route: np.ndarray) -> Components:
        """The mixture reaching Bob at channel ``transmittance``.

        Parameters
        ----------
        source : SourceConfig
            Alice's (public) source parameters.
        transmittance : float
            Transmittance of the real channel at this time.
        route : float array, shape (2, 2, 4)
            Bob's routing probabilities (:func:`mozi.sim.receiver.routing`).
        """

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-able description, with ``"type"``."""


class InterceptResend(Eavesdropper):
    """Intercept-resend on a fraction of the pulses.

    Parameters
    ----------
    fraction : float
        Probability that Eve attacks a pulse (independently per pulse), in [0, 1].
    resend_mu : float, optional
        Mean photon number of Eve's resent pulses. Default: ``mu_s / (1 - exp(-mu_s))`` with
        ``mu_s`` the signal intensity, which keeps the signal count rate (Eve only resends when
        her ideal detector saw a photon).
    """

    name = "intercept-resend"

    def __init__(self, fraction: float = 1.0, resend_mu: float | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ConfigurationError(f"eve fraction must lie in [0, 1], not {fraction!r}")
        if resend_mu is not None and resend_mu <= 0:
            raise ConfigurationError("resend_mu must be positive")
        self.fraction = float(fraction)
        self.resend_mu = resend_mu

    def __repr__(self) -> str:
        return f"InterceptResend(fraction={self.fraction}, resend_mu={self.resend_mu})"

    def _resend_mu(self, source: SourceConfig) -> float:
        if self.resend_mu is not None:
            return float(self.resend_mu)
        mu_s = source.intensities[0]
        return mu_s / -math.expm1(-mu_s) if mu_s > 0 else 1.0

    def components(self, source, transmittance, route):
        mu = np.asarray(source.intensities, np.float64)
        f = self.fraction
        seen = -np.expm1(-mu)[:, None, None]              # Eve's ideal detector clicks
        b, x = _states(4)
        weight = np.empty((3, 2, 2, 4))
        weight[..., 0] = 1.0 - f                           # not attacked
        weight[..., 1] = f * seen * 0.5                    # Eve chose Alice's basis
        weight[..., 2] = f * seen * 0.25                   # other basis, found 0
        weight[..., 3] = f * seen * 0.25                   # other basis, found 1
        b[..., 2:] = 1 - b[..., 2:]
        x[..., 2] = 0
        x[..., 3] = 1
        param = np.empty((3, 2, 2, 4))
        param[..., 0] = mu[:, None, None] * transmittance
        param[..., 1:] = self._resend_mu(source) * transmittance
        return Components(weight, b, x, np.full((3, 2, 2, 4), COHERENT, np.uint8), param)

    def to_dict(self):
        return {"type": self.name, "fraction": self.fraction, "resend_mu": self.resend_mu}


class PhotonNumberSplitting(Eavesdropper):
    """Photon-number-splitting attack that hides its loss behind a lossless channel.

    Eve forwards ``n - 1`` photons of an ``n``-photon pulse (``n >= 2``) losslessly with
    probability ``w`` and a single photon with probability ``s``; ``(s, w)`` is chosen at each
    moment so that the mean click probability of the intensity ``match_intensity`` (signal by
    default) equals the one without Eve: first single photons are blocked (``s`` lowered to
    0), then, if still too many, multi-photon pulses (``w`` lowered). At Micius's 30–40 dB
    loss Eve blocks every single photon.

    Parameters
    ----------
    match_intensity : int
        Intensity code (0 signal, 1 decoy, 2 vacuum) whose count rate Eve preserves.
    """

    name = "pns"

    def __init__(self, match_intensity: int = 0) -> None:
        if match_intensity not in (0, 1, 2):
            raise ConfigurationError("match_intensity must be 0, 1 or 2")
        self.match_intensity = int(match_intensity)

    def __repr__(self) -> str:
        return f"PhotonNumberSplitting(match_intensity={self.match_intensity})"

    def policy(self, source: SourceConfig, transmittance: float,
               route: np.ndarray) -> tuple[float, float]:
        """Eve's forwarding probabilities ``(s, w)`` for single- and multi-photon pulses."""
        mu = source.intensities[self.match_intensity]
        pz = source.p_z
        state_w = np.array([[pz / 2, pz / 2], [(1 - pz) / 2, (1 - pz) / 2]])
        eta = route.sum(axis=-1)                                   # (2, 2)
        target = float((state_w * -np.expm1(-mu * transmittance * eta)).sum())
        n = np.arange(2, self._n_max(mu) + 1)
        pn = _poisson(n, mu)
        multi = float((state_w[..., None] * pn * (1 - (1 - eta[..., None]) ** (n - 1))).sum())
        single = float((state_w * _poisson(np.array(1), mu) * eta).sum())
        if multi >= target:
            return 0.0, (target / multi if multi > 0 else 0.0)
        return (min((target - multi) / single, 1.0) if single > 0 else 0.0), 1.0

    @staticmethod
    def _n_max(mu: float) -> int:
        return int(math.ceil(mu + 12.0 * math.sqrt(mu) + 12.0))

    def components(self, source, transmittance, route):
        mu = np.asarray(source.intensities, np.float64)
        s, w = self.policy(source, transmittance, route)
        n = np.arange(1, self._n_max(float(mu.max())) + 1)
        j = n.size
        pn = _poisson(n[None, :], mu[:, None])                     # (3, J)
        fw = np.where(n == 1, s, w)
        weight = np.broadcast_to((pn * fw)[:, None, None, :], (3, 2, 2, j)).copy()
        b, x = _states(j)
        photons = np.where(n == 1, 1, n - 1).astype(np.float64)
        param = np.broadcast_to(photons, (3, 2, 2, j)).copy()
        return Components(weight, b, x, np.full((3, 2, 2, j), FOCK, np.uint8), param)

    def to_dict(self):
        return {"type": self.name, "match_intensity": self.match_intensity}


def _poisson(n, mu) -> np.ndarray:
    n = np.asarray(n, np.float64)
    mu = np.asarray(mu, np.float64)
    lg = np.vectorize(math.lgamma)(n + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = n * np.log(mu) - mu - lg
    return np.where(mu > 0, np.exp(logp), (n == 0).astype(np.float64))


def eve_from_dict(d: dict | None) -> Eavesdropper | None:
    """Inverse of ``Eavesdropper.to_dict`` (``None`` for no eavesdropper)."""
    if d is None:
        return None
    kind = d.get("type")
    if kind == InterceptResend.name:
        return InterceptResend(d.get("fraction", 1.0), d.get("resend_mu"))
    if kind == PhotonNumberSplitting.name:
        return PhotonNumberSplitting(d.get("match_intensity", 0))
    raise ConfigurationError(f"unknown eavesdropper type {kind!r}")
