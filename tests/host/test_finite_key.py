"""Decoy-state finite-key analysis (Lim et al. 2014): hand-checked numbers and behaviour."""

import json
import math

import numpy as np
import pytest
from mozi.host.postprocessing.finite_key import (
    DecoyStatistics,
    FiniteKeyParams,
    binary_entropy,
    finite_key_length,
    gamma,
    security_cost,
)

PARAMS = FiniteKeyParams()


def channel(pulses, eta, *, y0=1e-6, e_mis=0.01, params=PARAMS):
    """Expected sifted statistics of a lossy channel (1/4 of pulses sifted per basis).

    Gain ``Q_k = 1 − (1 − Y0) e^{−η μk}``, error gain ``E_k Q_k = Y0/2 + e_mis (1 − e^{−η μk})``.
    Returns the statistics and the true single-photon yield and error rate.
    """
    n, m = [], []
    for mu, p in zip(params.intensities, params.probabilities, strict=True):
        sent = pulses * p / 4
        n.append(round(sent * (1 - (1 - y0) * math.exp(-eta * mu))))
        m.append(round(sent * (y0 / 2 + e_mis * (1 - math.exp(-eta * mu)))))
    y1 = 1 - (1 - y0) * (1 - eta)
    e1 = (y0 / 2 + e_mis * eta) / y1
    return n, m, y1, e1


def true_key(pulses, eta, lam, *, y0=1e-6, e_mis=0.01, params=PARAMS):
    """GLLP key with the *true* vacuum and single-photon contributions (infinite decoys)."""
    _, _, y1, e1 = channel(pulses, eta, y0=y0, e_mis=e_mis, params=params)
    s0 = sum(pulses * p / 4 * math.exp(-mu) * y0
             for mu, p in zip(params.intensities, params.probabilities, strict=True))
    s1 = sum(pulses * p / 4 * mu * math.exp(-mu) * y1
             for mu, p in zip(params.intensities, params.probabilities, strict=True))
    return s0 + s1 * (1 - binary_entropy(e1)) - lam


def stats_for(pulses, eta, **kw):
    n, m, _, _ = channel(pulses, eta, **kw)
    return DecoyStatistics(n_z=n, n_x=n, m_x=m, m_z_observed=sum(m))


def ec_leak(stats, f=1.1):
    q = int(np.sum(stats.m_x)) / int(np.sum(stats.n_x))
    return int(math.ceil(f * int(np.sum(stats.n_z)) * binary_entropy(q)))


def test_binary_entropy():
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-4)
    assert binary_entropy(0.2) == pytest.approx(binary_entropy(0.8))
    np.testing.assert_allclose(binary_entropy([0.0, 0.25, 0.5]), [0.0, 0.8112781, 1.0],
                               atol=1e-7)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            binary_entropy(bad)


def test_hand_checked_small_case():
    """Every step worked out by hand (4-5 significant digits) for a 2.2·10^5-bit block.

    τ0 = .5e^-.8 + .25e^-.1 + .25 = 0.700874, τ1 = .4e^-.8 + .025e^-.1 = 0.202353;
    δ(220500) = sqrt(110250 · ln(21e10)) = 1695.36, δ(2490) = 180.160;
    n+_Z,μ1 = 4.45108 · 201695.4 = 897763, n−_Z,μ2 = 4.42068 · 18304.6 = 80919.0,
    n+_Z,μ3 = 4 · 2195.36 = 8781.46, n−_Z,μ3 < 0 ⇒ s_Z,0 = 0;
    s_Z,1 = 0.161882 · (80919.0 − 8781.46 − 0.015625 · 897763) / 0.07 = 134385;
    v_X,1 = 0.202353 · (4.42068 · 430.16 − 4 · 59.840) / 0.1 = 3363.6, b = 0.025029;
    γ = sqrt(2/c · b(1−b) / ln 2 · (log2(2/(c b(1−b))) + 2 log2(21e10))) = 0.0058153;
    φ = 0.030845, h(φ) = 0.19861; 6 log2(21e10) + log2(2e15) = 276.50;
    ℓ = 134385 · 0.80139 − 20000 − 276.50 = 87418.
    """
    stats = DecoyStatistics(n_z=[200000, 20000, 500], n_x=[200000, 20000, 500],
                            m_x=[2000, 250, 240], m_z_observed=2200)
    r = finite_key_length(stats, 20000)
    assert not r.aborted and r.abort_reason is None
    assert r.tau == pytest.approx((0.700874, 0.202353), rel=1e-5)
    assert r.delta_n_z == pytest.approx(1695.36, rel=1e-5)
    assert r.delta_m_x == pytest.approx(180.160, rel=1e-5)
    assert r.n_z_plus[0] == pytest.approx(897763, rel=1e-5)
    assert r.n_z_minus[1] == pytest.approx(80919.0, rel=1e-5)
    assert r.n_z_plus[2] == pytest.approx(8781.46, rel=1e-5)
    assert r.n_z_minus[2] < 0 and r.s_z0 == 0.0
    assert r.s_z1 == pytest.approx(134385, rel=1e-5)
    assert r.s_x1 == pytest.approx(134385, rel=1e-5)
    assert r.v_x1 == pytest.approx(3363.6, rel=1e-4)
    assert r.gamma == pytest.approx(0.0058153, rel=1e-4)
    assert r.phi_z == pytest.approx(0.030845, rel=1e-4)
    assert r.security_bits == pytest.approx(276.50, abs=0.01)
    assert r.length == 87418
    assert r.qber_z == pytest.approx(2200 / 220500)
    assert r.qber_x == pytest.approx(2490 / 220500)
    assert r.s_z0_upper == pytest.approx(0.700874 * 8781.46, rel=1e-5)


def test_vacuum_bound_with_nonzero_mu3():
    """μ3 > 0 uses both n−_μ3 and n+_μ2 in Eq. (2); check it against the formula."""
    params = FiniteKeyParams(intensities=(0.6, 0.2, 0.01), probabilities=(0.6, 0.3, 0.1))
    stats = DecoyStatistics(n_z=[10**7, 2 * 10**6, 10**5], n_x=[10**7, 2 * 10**6, 10**5],
                            m_x=[10**5, 2 * 10**4, 4 * 10**4])
    r = finite_key_length(stats, 10**6, params)
    mu1, mu2, mu3 = params.intensities
    tau0 = sum(p * math.exp(-mu) for mu, p in zip(params.intensities,
                                                      params.probabilities, strict=True))
    d = math.sqrt(sum(stats.n_z) / 2 * math.log(21 / params.eps_sec))
    n3m = math.exp(mu3) / 0.1 * (10**5 - d)
    n2p = math.exp(mu2) / 0.3 * (2 * 10**6 + d)
    assert r.s_z0 == pytest.approx(tau0 * (mu2 * n3m - mu3 * n2p) / (mu2 - mu3), rel=1e-12)
    assert r.s_z0 > 0 and r.s_z0 < r.s_z0_upper
    assert r.qber_z is None


def test_more_loss_gives_less_key():
    pulses = 1e11
    lengths = []
    for eta in (3e-3, 1e-3, 3e-4, 1e-4):
        st = stats_for(pulses, eta)
        lengths.append(finite_key_length(st, ec_leak(st)).length)
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[1] > 0
    # and at some loss the key vanishes: the protocol aborts
    st = stats_for(pulses, 1e-6)
    assert finite_key_length(st, ec_leak(st)).aborted


def test_more_leak_or_stricter_eps_gives_less_key():
    st = stats_for(1e11, 1e-3)
    base = finite_key_length(st, 10**5).length
    assert finite_key_length(st, 2 * 10**5).length == base - 10**5
    strict = FiniteKeyParams(eps_sec=1e-15)
    assert finite_key_length(st, 10**5, strict).length < base


def test_more_pulses_give_a_higher_rate():
    rates = []
    for pulses in (1e9, 1e10, 1e11, 1e12):
        st = stats_for(pulses, 1e-3)
        rates.append(finite_key_length(st, ec_leak(st)).length / pulses)
    assert rates == sorted(rates)


def test_abort_on_intercept_resend_qber():
    """Intercept-resend on every pulse gives 25 % QBER in both bases: abort, no key."""
    n = [10**6, 10**5, 10**3]
    m = [v // 4 for v in n]
    r = finite_key_length(DecoyStatistics(n_z=n, n_x=n, m_x=m, m_z_observed=m), 0)
    assert r.aborted and r.length == 0
    assert "QBER" in r.abort_reason and "25.00%" in r.abort_reason


def test_abort_on_z_qber_alone():
    st = stats_for(1e11, 1e-3)
    st.m_z_observed = int(0.12 * sum(st.n_z))
    r = finite_key_length(st, 0)
    assert r.aborted and "Z" in r.abort_reason


def test_threshold_is_configurable():
    n = [10**7, 10**6, 10**4]
    m = [int(v * 0.08) for v in n]
    st = DecoyStatistics(n_z=n, n_x=n, m_x=m, m_z_observed=m)
    assert finite_key_length(st, 0, FiniteKeyParams(qber_threshold=0.05)).aborted
    r = finite_key_length(st, 0)
    assert r.abort_reason is None or "QBER" not in r.abort_reason


def test_abort_when_no_positive_length():
    st = stats_for(1e11, 1e-3)
    r = finite_key_length(st, 10**9)
    assert r.aborted and r.length == 0 and "positive" in r.abort_reason
    assert r.key_length_real < 0 and r.s_z1 > 0      # bounds are still reported


def test_abort_without_detections():
    r = finite_key_length(DecoyStatistics([0, 0, 0], [0, 0, 0], [0, 0, 0]), 0)
    assert r.aborted and "detections" in r.abort_reason


def test_asymptotic_limit_close_to_gllp():
    """Huge blocks: ℓ/N tends to the decoy bound, within ~10 % of the true GLLP key."""
    eta = 1e-3
    ratios = []
    for pulses in (1e12, 1e14, 1e16):
        st = stats_for(pulses, eta)
        lam = ec_leak(st, f=1.0)
        r = finite_key_length(st, lam)
        truth = true_key(pulses, eta, lam)
        assert r.length <= truth          # the bounds never overestimate
        ratios.append(r.length / truth)
    assert ratios == sorted(ratios)
    assert 0.88 < ratios[-1] <= 1.0
    # finite-size terms vanish: the last two blocks differ by < 1 % in rate
    assert ratios[-1] - ratios[-2] < 0.01


def test_gamma_function():
    assert gamma(1e-10, 0.0, 100.0, 100.0) == 0.0
    g = gamma(1e-10, 0.02, 1e6, 1e6)
    want = math.sqrt(2e6 * 0.02 * 0.98 / (1e12 * math.log(2))
                     * math.log2(2e6 / (1e12 * 0.02 * 0.98) * 21**2 / 1e-20))
    assert g == pytest.approx(want, rel=1e-12)
    assert gamma(1e-10, 0.02, 1e8, 1e8) < g
    with pytest.raises(ValueError):
        gamma(1e-10, 0.02, 0.0, 1.0)


def test_security_cost_default():
    assert security_cost(PARAMS) == pytest.approx(6 * math.log2(21e10) + math.log2(2e15))


@pytest.mark.parametrize("kw", [
    dict(intensities=(0.1, 0.2, 0.0)),
    dict(intensities=(0.8, 0.1, 0.1)),
    dict(probabilities=(0.5, 0.5, 0.5)),
    dict(probabilities=(1.0, 0.0, 0.0)),
    dict(eps_sec=0.0),
    dict(eps_cor=1.0),
    dict(qber_threshold=0.6),
])
def test_params_validation(kw):
    with pytest.raises(ValueError):
        FiniteKeyParams(**kw)


def test_statistics_validation():
    with pytest.raises(ValueError):
        DecoyStatistics([1, 2], [1, 2, 3], [0, 0, 0])
    with pytest.raises(ValueError):
        DecoyStatistics([1, 2, 3], [1, 2, 3], [0, 5, 0])
    with pytest.raises(ValueError):
        DecoyStatistics([1, 2, 3], [1, 2, 3], [0, 0, -1])
    with pytest.raises(ValueError):
        DecoyStatistics([1, 2, 3], [1, 2, 3], [0, 0, 0], m_z_observed=[0, 3, 0])
    with pytest.raises(ValueError):
        finite_key_length(DecoyStatistics([1, 2, 3], [1, 2, 3], [0, 0, 0]), -1)


def test_result_as_dict_is_json_ready():
    st = stats_for(1e11, 1e-3)
    d = finite_key_length(st, ec_leak(st)).as_dict()
    assert {"length", "s_z0", "s_z1", "s_x1", "v_x1", "phi_z", "qber_z", "qber_x",
            "lambda_ec", "aborted", "abort_reason"} <= set(d)
    json.dumps(d)
