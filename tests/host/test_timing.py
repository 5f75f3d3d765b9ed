"""Time-bin recovery from synthetic tags with known drift, offset, jitter and noise."""

import numpy as np
import pytest
from mozi.host.devices.device import ReceiverDriver, open_device
from mozi.host.devices.model import ModelTransport
from mozi.host.postprocessing.timing import (
    TimingError,
    alignment_sample,
    estimate_timing,
    find_slot_shift,
    slot_blocks,
)
from mozi.sim.source import AliceSource

T = 10_000.0          # nominal period, ticks of 1 ps


def synth(seed=0, dur_s=5.0, rate=1e4, drift=0.0, offset=1_000_000.3, jitter=150.0,
          noise_hz=300.0, first_slot=0):
    """Tags ``(k·T + jitter)(1 + drift) + offset``, plus uniform noise; true slots (-1 = noise)."""
    rng = np.random.default_rng(seed)
    nslots = int(dur_s * 1e12 / T)
    n = rng.poisson(rate * dur_s)
    k = np.sort(rng.choice(nslots, n, replace=False)) + first_slot
    t = (k * T + rng.normal(0, jitter, n)) * (1 + drift) + offset
    nn = rng.poisson(noise_hz * dur_s)
    tn = rng.uniform(first_slot * T, (first_slot + nslots) * T, nn) + offset
    tt = np.concatenate([t, tn])
    order = np.argsort(tt)
    return (np.rint(tt[order]).astype(np.int64),
            np.concatenate([k, -np.ones(nn, np.int64)])[order])


@pytest.mark.parametrize("drift", [0.0, 5e-8, -3.7e-6, 1.2e-4])
def test_period_and_slots_recovered(drift):
    ts, k = synth(seed=1, drift=drift)
    est = estimate_timing(ts, T)
    P = T * (1 + drift)
    slots_in_run = (ts[-1] - ts[0]) / P
    # the period error accumulated over the whole run stays within 4x the statistical limit
    # of a line fit to N arrival times of RMS jitter 150 ps (sigma·sqrt(12/N), ~2 ps here)
    limit = 4 * 150.0 * np.sqrt(12 / np.count_nonzero(k >= 0))
    assert abs(est.period - P) * slots_in_run < limit, (est.period - P)
    assert abs(est.drift - drift) < 1e-9
    assert 140 < est.sigma < 160
    assert est.signal_fraction > 0.9
    sig = k >= 0
    shift = k[sig] - est.slot_of(ts[sig])
    # one integer shift maps every signal tag to its true slot
    assert np.unique(shift).size == 1
    assert abs(est.offset) <= est.period / 2


def test_blocks_program_the_device_to_the_recovered_clock():
    ts, k = synth(seed=2, dur_s=3.0, drift=2e-6)
    est = estimate_timing(ts, T)
    rx = ReceiverDriver(open_device("model"), random_key=bytes(32))
    blocks = slot_blocks(ts, est, frac_bits=rx.frac_bits, window_sigmas=3.0, max_events=5000,
                         max_slots=10**7)
    assert len(blocks) > 5
    assert blocks[0].start == 0 and blocks[-1].stop == ts.size
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))
    for b in blocks[1:]:                      # cuts only where tags are > 2 slots apart
        assert ts[b.start] - ts[b.start - 1] > 2 * est.period
    det = rx.run_blocks(ts, np.ones(ts.size, np.uint8), blocks)
    sig = k >= 0
    expected = est.slot_of(ts[sig])
    got = set(det.slots.tolist())
    inside = np.array([s in got for s in expected.tolist()])
    assert inside.mean() > 0.99              # ±3σ window keeps ~99.7 % of the signal
    c = rx.counters()
    frac = 1 - c["RX_REJECTED"] / c["RX_EVENTS"]
    assert 0.95 < frac < 0.999
    # noise is mostly rejected: the window is ~9 % of the slot
    noise_slots = est.slot_of(ts[~sig])
    assert np.isin(noise_slots, det.slots).mean() < 0.2


def test_window_in_ticks_overrides_sigmas():
    ts, _ = synth(seed=3, dur_s=1.0)
    est = estimate_timing(ts, T)
    b = slot_blocks(ts, est, frac_bits=8, window_ticks=1000.0)[0]
    assert abs((b.window_end - b.window_start) / 256 - 1000) <= 1
    assert abs((b.window_start + b.window_end) / 2 - b.period / 2) <= 1


def test_too_few_or_structureless_tags():
    with pytest.raises(TimingError):
        estimate_timing(np.arange(50) * 12345, T)
    rng = np.random.default_rng(0)
    noise = np.sort(rng.integers(0, 10**12, 20_000))
    with pytest.raises(TimingError):
        estimate_timing(noise, T)
    with pytest.raises(TimingError):
        estimate_timing(np.array([5, 3] * 100), T)


def _detections(src, k, basis_err=0.0, seed=0):
    rng = np.random.default_rng(seed)
    a_basis, a_bit, _ = src.choices(k)
    basis = np.where(rng.random(k.size) < 0.5, a_basis, rng.integers(0, 2, k.size)).astype(
        np.uint8)
    bit = np.where(basis == a_basis, a_bit, rng.integers(0, 2, k.size)).astype(np.uint8)
    flip = rng.random(k.size) < basis_err
    return basis, (bit ^ flip).astype(np.uint8)


@pytest.mark.parametrize("shift,qber", [(-100, 0.02), (3_000, 0.0), (-40_000, 0.2)])
def test_find_slot_shift(shift, qber):
    src = AliceSource(42)
    rng = np.random.default_rng(abs(shift))
    k = np.sort(rng.choice(10**7, 5000, replace=False)) + 10**6       # Alice's slots
    basis, bits = _detections(src, k, qber, seed=1)
    bob_slots = k - shift
    pick = alignment_sample(bob_slots, 512)
    assert pick.size == 512 and np.all(np.diff(pick) == 1)
    res = find_slot_shift(bob_slots[pick], basis[pick], bits[pick], src.choices, center=0,
                          max_shift=1 << 16, slot_range=(10**6, 10**6 + 10**7))
    assert res.shift == shift
    assert res.error_rate < qber + 0.08
    assert res.runner_up_error_rate > 0.3
    assert res.candidates > 1 << 16


def test_find_slot_shift_fails_without_correlation():
    src, other = AliceSource(1), AliceSource(2)
    k = np.arange(10_000, 10_000 + 512 * 50, 50)
    basis, bits = _detections(other, k)
    with pytest.raises(TimingError, match="alignment failed"):
        find_slot_shift(k, basis, bits, src.choices, center=0, max_shift=2000)
    with pytest.raises(TimingError):
        find_slot_shift(k[:8], basis[:8], bits[:8], src.choices, center=0, max_shift=10)
    with pytest.raises(TimingError, match="no slot shift"):
        find_slot_shift(k, basis, bits, src.choices, center=0, max_shift=10,
                        slot_range=(0, 100))


def test_period_too_wide_for_the_register():
    ts, _ = synth(seed=4, dur_s=1.0)
    est = estimate_timing(ts, T)
    with pytest.raises(TimingError, match="SA_PERIOD"):
        slot_blocks(ts, est, frac_bits=24)


@pytest.mark.parametrize("rate,noise_hz,drift", [(500.0, 300.0, 5e-8), (200.0, 300.0, 2e-5)])
def test_low_rate_with_heavy_noise(rate, noise_hz, drift):
    """Edge of a pass: a few hundred detections per second, as many noise clicks."""
    ts, k = synth(seed=3, dur_s=20.0, rate=rate, noise_hz=noise_hz, drift=drift)
    est = estimate_timing(ts, T)
    sig = k >= 0
    assert np.unique(k[sig] - est.slot_of(ts[sig])).size == 1
    assert abs(est.drift - drift) < 1e-10
    assert 130 < est.sigma < 200          # background subtracted from the peak width


def test_find_slot_shift_on_a_sparse_sample():
    """Low rate: the sample spans far more slots than one union window (per-window path)."""
    src = AliceSource(8)
    rng = np.random.default_rng(8)
    k = np.sort(rng.choice(10**9, 300, replace=False)) + 10**6
    basis, bits = _detections(src, k, 0.02, seed=2)
    res = find_slot_shift(k + 777, basis, bits, src.choices, center=0, max_shift=2000)
    assert res.shift == -777 and res.candidates == 4001


def test_blocks_absorb_fixed_point_rounding_of_the_period():
    """With few fractional bits the period is off by up to 1/32 tick per slot: blocks shrink."""
    ts, k = synth(seed=6, dur_s=0.3, drift=3e-6)
    est = estimate_timing(ts, T)
    frac = 4
    blocks = slot_blocks(ts, est, frac_bits=frac)
    err = abs(blocks[0].period / (1 << frac) - est.period)
    assert err > 1e-3                         # the coarse period really is off
    for b in blocks:
        span = (ts[b.stop - 1] - ts[b.start]) / est.period
        assert span * err / 2 <= 0.1 * est.sigma + err
    rx = ReceiverDriver(ModelTransport(frac_bits=frac), random_key=bytes(32))
    det = rx.run_blocks(ts, np.ones(ts.size, np.uint8), blocks)
    sig = k >= 0
    assert np.isin(est.slot_of(ts[sig]), det.slots).mean() > 0.99
