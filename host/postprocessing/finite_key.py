"""Decoy-state finite-key analysis (Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307, 2014).

The key is drawn from the Z basis and the X basis is the test basis (the paper, which keys on
X, is read with X and Z swapped). Intensities ``μ1 > μ2 + μ3``, ``μ2 > μ3 >= 0`` (signal, decoy,
vacuum) are chosen with probabilities ``p_k``; for every intensity ``k`` the sifted statistics
are ``n_{Z,k}`` and ``n_{X,k}`` detections and ``m_{X,k}`` X-basis errors. With
``ε1 = ε_sec/21`` and Hoeffding's deviation ``δ(n, ε1) = sqrt(n/2 · ln(1/ε1))`` (``n`` the
*total* count of the basis; one δ serves every intensity), the paper's equations are:

* ``n±_{Z,k} = e^{μk}/p_k · (n_{Z,k} ± δ(n_Z, ε1))``, ``m±_{X,k} = e^{μk}/p_k · (m_{X,k} ±
  δ(m_X, ε1))`` (same for ``n±_{X,k}``);
* ``τ_n = Σ_k p_k e^{−μk} μk^n / n!`` (probability that Alice sends ``n`` photons);
* (2) vacuum events ``s_{Z,0} >= τ0 (μ2 n−_{Z,μ3} − μ3 n+_{Z,μ2}) / (μ2 − μ3)``;
* (3) single-photon events ``s_{Z,1} >= τ1 μ1 [n−_{Z,μ2} − n+_{Z,μ3} − (μ2² − μ3²)/μ1²
  (n+_{Z,μ1} − s_{Z,0}/τ0)] / [μ1(μ2 − μ3) − μ2² + μ3²]``, and ``s_{X,1}`` likewise from X;
* (4) single-photon errors in X ``v_{X,1} <= τ1 (m+_{X,μ2} − m−_{X,μ3}) / (μ2 − μ3)``;
* (5) phase error rate ``φ_Z <= v_{X,1}/s_{X,1} + γ(ε_sec, v_{X,1}/s_{X,1}, s_{X,1},
  s_{Z,1})`` with ``γ(a, b, c, d) = sqrt((c + d)(1 − b) b / (c d ln 2) · log2((c + d) /
  (c d (1 − b) b) · 21² / a²))``;
* (1) ``ℓ = ⌊s_{Z,0} + s_{Z,1} − s_{Z,1} h(φ_Z) − λ_EC − 6 log2(21/ε_sec) − log2(2/ε_cor)⌋``.

Negative lower bounds are raised to 0 and ``φ_Z`` is capped at 1/2 (both only make the key
shorter). The analysis also reports an upper bound on the vacuum events,
``s_{Z,0} <= τ0 n+_{Z,μ3}`` (from ``n*_{μ3} >= p_{μ3|0} s_0``), which does not enter ℓ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "DecoyStatistics",
    "FiniteKeyParams",
    "FiniteKeyResult",
    "binary_entropy",
    "finite_key_length",
    "gamma",
    "security_cost",
]


def binary_entropy(p):
    """Binary entropy ``h(p) = −p log2 p − (1 − p) log2(1 − p)``, with ``h(0) = h(1) = 0``.

    Parameters
    ----------
    p : float or array_like
        Probabilities in ``[0, 1]``.

    Returns
    -------
    float or numpy array
        Same shape as ``p``.

    Raises
    ------
    ValueError
        Any value outside ``[0, 1]`` (or NaN).
    """
    arr = np.asarray(p, dtype=np.float64)
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise ValueError(f"binary_entropy needs probabilities in [0, 1], not {p!r}")
    inner = (arr > 0.0) & (arr < 1.0)
    q = np.where(inner, arr, 0.5)
    h = np.where(inner, -q * np.log2(q) - (1.0 - q) * np.log2(1.0 - q), 0.0)
    return float(h) if h.ndim == 0 else h


def gamma(a: float, b: float, c: float, d: float) -> float:
    """Random-sampling correction ``γ(a, b, c, d)`` of Lim et al. Eq. (5).

    Parameters
    ----------
    a : float
        Secrecy parameter ``ε_sec``.
    b : float
        Observed single-photon error rate in the test basis, ``0 <= b <= 1/2``.
    c, d : float
        Single-photon events in the test and key bases, both ``> 0``.

    Returns
    -------
    float
        ``sqrt((c + d)(1 − b) b / (c d ln 2) · log2((c + d) / (c d (1 − b) b) · 21² / a²))``;
        0 for ``b = 0`` (its limit) and whenever the logarithm is negative.
    """
    if c <= 0 or d <= 0:
        raise ValueError("gamma needs positive single-photon counts")
    var = b * (1.0 - b)
    if var <= 0.0:
        return 0.0
    log_arg = math.log2((c + d) / (c * d * var)) + 2.0 * math.log2(21.0 / a)
    if log_arg <= 0.0:
        return 0.0
    return math.sqrt((c + d) * var / (c * d * math.log(2.0)) * log_arg)


@dataclass(frozen=True)
class FiniteKeyParams:
    """Protocol parameters of the finite-key analysis.

    Attributes
    ----------
    intensities : tuple of 3 floats
        Mean photon numbers ``(μ1, μ2, μ3)`` = (signal, decoy, vacuum); ``μ1 > μ2 + μ3``,
        ``μ2 > μ3 >= 0``.
    probabilities : tuple of 3 floats
        Probability ``p_k`` that Alice picks each intensity (sum 1).
    eps_sec : float
        Secrecy parameter ``ε_sec``.
    eps_cor : float
        Correctness parameter ``ε_cor`` (sets the verification tag length too).
    qber_threshold : float
        Abort when the Z or X QBER exceeds this.
    """

    intensities: tuple[float, float, float] = (0.8, 0.1, 0.0)
    probabilities: tuple[float, float, float] = (0.5, 0.25, 0.25)
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    qber_threshold: float = 0.11

    def __post_init__(self) -> None:
        mu = tuple(float(x) for x in self.intensities)
        p = tuple(float(x) for x in self.probabilities)
        if len(mu) != 3 or len(p) != 3:
            raise ValueError("intensities and probabilities need 3 values (signal, decoy, "
                             "vacuum)")
        mu1, mu2, mu3 = mu
        if not (mu3 >= 0.0 and mu2 > mu3 and mu1 > mu2 + mu3):
            raise ValueError(f"intensities must satisfy mu1 > mu2 + mu3 and mu2 > mu3 >= 0, "
                             f"not {mu}")
        if min(p) <= 0.0 or abs(sum(p) - 1.0) > 1e-9:
            raise ValueError(f"probabilities must be positive and sum to 1, not {p}")
        for name in ("eps_sec", "eps_cor"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), not {value!r}")
        if not 0.0 < self.qber_threshold <= 0.5:
            raise ValueError(f"qber_threshold must lie in (0, 0.5], not {self.qber_threshold!r}")
        object.__setattr__(self, "intensities", mu)
        object.__setattr__(self, "probabilities", p)


def _counts(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (3,):
        raise ValueError(f"{name} needs one count per intensity (signal, decoy, vacuum)")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must hold non-negative integers, not {value!r}")
    return arr.astype(np.int64)


@dataclass
class DecoyStatistics:
    """Sifted statistics per intensity (index 0 signal, 1 decoy, 2 vacuum).

    Attributes
    ----------
    n_z : array of 3 ints
        Sifted detections in the key basis Z.
    n_x : array of 3 ints
        Sifted detections in the test basis X.
    m_x : array of 3 ints
        Bit errors among the X detections (all X bits are announced).
    m_z_observed : array of 3 ints or int, optional
        Bit errors error correction found in the Z key (per intensity, or the total); gives
        the Z QBER checked against the threshold.
    """

    n_z: np.ndarray
    n_x: np.ndarray
    m_x: np.ndarray
    m_z_observed: np.ndarray | int | None = None

    def __post_init__(self) -> None:
        self.n_z = _counts(self.n_z, "n_z")
        self.n_x = _counts(self.n_x, "n_x")
        self.m_x = _counts(self.m_x, "m_x")
        if np.any(self.m_x > self.n_x):
            raise ValueError("m_x cannot exceed n_x")
        if self.m_z_observed is not None:
            if np.ndim(self.m_z_observed) == 0:
                total = int(self.m_z_observed)
                if total < 0 or total > int(self.n_z.sum()):
                    raise ValueError("m_z_observed must lie in [0, n_z total]")
                self.m_z_observed = total
            else:
                self.m_z_observed = _counts(self.m_z_observed, "m_z_observed")
                if np.any(self.m_z_observed > self.n_z):
                    raise ValueError("m_z_observed cannot exceed n_z")

    @property
    def m_z_total(self) -> int | None:
        """Total Z errors found by error correction, if known."""
        if self.m_z_observed is None:
            return None
        return int(np.sum(self.m_z_observed))


@dataclass
class FiniteKeyResult:
    """Outcome of :func:`finite_key_length`, with every intermediate bound.

    Attributes
    ----------
    length : int
        Secret key length ℓ (0 on abort).
    s_z0, s_z1 : float
        Lower bounds on vacuum and single-photon events in the Z key (Eqs. 2, 3).
    s_x1 : float
        Lower bound on single-photon events in X.
    v_x1 : float
        Upper bound on single-photon errors in X (Eq. 4).
    phi_z : float
        Upper bound on the single-photon phase error rate of the key (Eq. 5).
    qber_z : float or None
        Z QBER from the errors EC found (None if not given).
    qber_x : float
        X QBER over all intensities.
    lambda_ec : int
        Bits disclosed by error correction.
    aborted : bool
    abort_reason : str or None
    key_length_real : float
        ℓ before flooring (may be negative).
    s_z0_upper : float
        Upper bound on vacuum events in Z (reported only).
    s_x0 : float
        Lower bound on vacuum events in X (needed for s_x1).
    gamma : float
        Sampling correction added to ``v_x1 / s_x1``.
    tau : tuple of float
        ``(τ0, τ1)``.
    delta_n_z, delta_n_x, delta_m_x : float
        Hoeffding deviations.
    n_z_plus, n_z_minus, n_x_plus, n_x_minus, m_x_plus, m_x_minus : tuple of 3 floats
        The ``n±``/``m±`` of every intensity.
    security_bits : float
        ``6 log2(21/ε_sec) + log2(2/ε_cor)``.
    n_z_total : int
        Sifted key length before error correction.
    """

    length: int
    s_z0: float
    s_z1: float
    s_x1: float
    v_x1: float
    phi_z: float
    qber_z: float | None
    qber_x: float
    lambda_ec: int
    aborted: bool
    abort_reason: str | None
    key_length_real: float = 0.0
    s_z0_upper: float = 0.0
    s_x0: float = 0.0
    gamma: float = 0.0
    tau: tuple[float, float] = (0.0, 0.0)
    delta_n_z: float = 0.0
    delta_n_x: float = 0.0
    delta_m_x: float = 0.0
    n_z_plus: tuple[float, ...] = field(default=())
    n_z_minus: tuple[float, ...] = field(default=())
    n_x_plus: tuple[float, ...] = field(default=())
    n_x_minus: tuple[float, ...] = field(default=())
    m_x_plus: tuple[float, ...] = field(default=())
    m_x_minus: tuple[float, ...] = field(default=())
    security_bits: float = 0.0
    n_z_total: int = 0

    def as_dict(self) -> dict:
        """JSON-serialisable dictionary of every field."""
        return asdict(self)


def security_cost(params: FiniteKeyParams) -> float:
    """Bits spent on the security parameters: ``6 log2(21/ε_sec) + log2(2/ε_cor)``."""
    return 6.0 * math.log2(21.0 / params.eps_sec) + math.log2(2.0 / params.eps_cor)


def _delta(total: int, ln_term: float) -> float:
    return math.sqrt(total / 2.0 * ln_term)


def _vacuum_lower(mu, tau0, plus, minus) -> float:
    _, mu2, mu3 = mu
    return tau0 * (mu2 * minus[2] - mu3 * plus[1]) / (mu2 - mu3)


def _single_lower(mu, tau0, tau1, plus, minus, s0) -> float:
    mu1, mu2, mu3 = mu
    num = minus[1] - plus[2] - (mu2**2 - mu3**2) / mu1**2 * (plus[0] - s0 / tau0)
    return tau1 * mu1 * num / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)


def finite_key_length(stats: DecoyStatistics, lambda_ec: int,
                      params: FiniteKeyParams = FiniteKeyParams()) -> FiniteKeyResult:
    """Secret key length of a block by the decoy-state bounds of Lim et al. (2014).

    Parameters
    ----------
    stats : DecoyStatistics
        Per-intensity sifted counts of the block.
    lambda_ec : int
        Bits disclosed by error correction (e.g. :attr:`CascadeResult.leaked_bits`).
    params : FiniteKeyParams
        Intensities, probabilities, ε_sec, ε_cor and the QBER threshold.

    Returns
    -------
    FiniteKeyResult
        ``aborted`` (with ``length = 0`` and a reason) when the Z or X QBER exceeds the
        threshold, when there are no detections in a basis, or when ℓ <= 0; the bounds are
        filled in either way.
    """
    lambda_ec = int(lambda_ec)
    if lambda_ec < 0:
        raise ValueError(f"lambda_ec must be non-negative, not {lambda_ec!r}")
    mu = params.intensities
    p = params.probabilities
    scale = np.array([math.exp(m) / pk for m, pk in zip(mu, p, strict=True)])
    tau0 = sum(pk * math.exp(-m) for m, pk in zip(mu, p, strict=True))
    tau1 = sum(pk * math.exp(-m) * m for m, pk in zip(mu, p, strict=True))
    ln_term = math.log(21.0 / params.eps_sec)

    nz_tot, nx_tot, mx_tot = int(stats.n_z.sum()), int(stats.n_x.sum()), int(stats.m_x.sum())
    d_nz, d_nx, d_mx = (_delta(nz_tot, ln_term), _delta(nx_tot, ln_term),
                        _delta(mx_tot, ln_term))
    nz_p, nz_m = scale * (stats.n_z + d_nz), scale * (stats.n_z - d_nz)
    nx_p, nx_m = scale * (stats.n_x + d_nx), scale * (stats.n_x - d_nx)
    mx_p, mx_m = scale * (stats.m_x + d_mx), scale * (stats.m_x - d_mx)

    s_z0 = max(0.0, _vacuum_lower(mu, tau0, nz_p, nz_m))
    s_x0 = max(0.0, _vacuum_lower(mu, tau0, nx_p, nx_m))
    s_z1 = max(0.0, _single_lower(mu, tau0, tau1, nz_p, nz_m, s_z0))
    s_x1 = max(0.0, _single_lower(mu, tau0, tau1, nx_p, nx_m, s_x0))
    v_x1 = max(0.0, tau1 * (mx_p[1] - mx_m[2]) / (mu[1] - mu[2]))
    s_z0_upper = tau0 * float(nz_p[2])

    qber_x = mx_tot / nx_tot if nx_tot else math.nan
    mz = stats.m_z_total
    qber_z = (mz / nz_tot if nz_tot else math.nan) if mz is not None else None

    g = 0.0
    phi = 0.5
    if s_x1 > 0.0 and s_z1 > 0.0:
        b = min(v_x1 / s_x1, 0.5)
        g = gamma(params.eps_sec, b, s_x1, s_z1)
        phi = min(0.5, b + g)
    cost = security_cost(params)
    ell = s_z0 + s_z1 - s_z1 * binary_entropy(phi) - lambda_ec - cost

    reason = None
    thr = params.qber_threshold
    if nz_tot == 0 or nx_tot == 0:
        reason = "no detections in the " + ("key (Z)" if nz_tot == 0 else "test (X)") + " basis"
    elif qber_z is not None and qber_z > thr:
        reason = f"QBER in Z {qber_z:.2%} exceeds the threshold {thr:.2%}"
    elif qber_x > thr:
        reason = f"QBER in X {qber_x:.2%} exceeds the threshold {thr:.2%}"
    elif s_z1 <= 0.0 or s_x1 <= 0.0:
        reason = "no single-photon events can be certified (s1 lower bound is 0)"
    elif ell < 1.0:
        reason = f"no positive secret key length (l = {ell:.1f} bits)"
    length = 0 if reason else int(math.floor(ell))

    return FiniteKeyResult(
        length=length, s_z0=s_z0, s_z1=s_z1, s_x1=s_x1, v_x1=v_x1, phi_z=phi,
        qber_z=qber_z, qber_x=qber_x, lambda_ec=lambda_ec, aborted=reason is not None,
        abort_reason=reason, key_length_real=ell, s_z0_upper=s_z0_upper, s_x0=s_x0, gamma=g,
        tau=(tau0, tau1), delta_n_z=d_nz, delta_n_x=d_nx, delta_m_x=d_mx,
        n_z_plus=tuple(map(float, nz_p)), n_z_minus=tuple(map(float, nz_m)),
        n_x_plus=tuple(map(float, nx_p)), n_x_minus=tuple(map(float, nx_m)),
        m_x_plus=tuple(map(float, mx_p)), m_x_minus=tuple(map(float, mx_m)),
        security_bits=cost, n_z_total=nz_tot,
    )
