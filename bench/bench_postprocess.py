"""Host post-processing: Cascade efficiency and speed, residual errors, PA throughput.

Figures (``python -m bench postprocess``):

* ``cascade`` — for QBER 1/2/5 % and 10^5 / 10^6 bits: efficiency ``f = leaked / (n h(Q))``
  (mean and worst over the runs), throughput in Mbit/s of sifted key (wall clock, one core),
  round trips and disclosed bits;
* ``residual`` — the 1,000-trial check at 10^5 bits (QBER cycling 1/2/5 %): keys left wrong
  by Cascade, keys the verification rejected, and keys wrong *despite* passing verification
  (must be 0). The run stops early at a time budget (``MOZI_BENCH_RESIDUAL_SECONDS``,
  default 400 s) and reports how many trials it did;
* ``privacy`` — FFT Toeplitz privacy amplification Mbit/s (input bits) at n = 10^6 with
  m = 10^5 and m = n/2 (best of 7).
"""

from __future__ import annotations

import os
import time

import numpy as np
from mozi.host.postprocessing.cascade import reconcile
from mozi.host.postprocessing.privacy import privacy_amplify
from mozi.host.postprocessing.verification import verify

TITLE = "Post-processing: Cascade, verification, privacy amplification"

QBERS = (0.01, 0.02, 0.05)


def _pair(n: int, qber: float, rng: np.random.Generator):
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


def _cascade_figures() -> dict:
    out = {}
    rng = np.random.default_rng(2026)
    for n, runs in ((100_000, 5), (1_000_000, 2)):
        for q in QBERS:
            effs, secs, msgs, leaks, wrong = [], [], [], [], 0
            for r in range(runs):
                alice, bob = _pair(n, q, rng)
                t0 = time.perf_counter()
                res = reconcile(alice, bob, q, seed=r)
                secs.append(time.perf_counter() - t0)
                effs.append(res.efficiency)
                msgs.append(res.messages)
                leaks.append(res.leaked_bits)
                wrong += not np.array_equal(res.corrected, alice)
            out[f"n={n} qber={q:.2f}"] = {
                "efficiency_mean": round(float(np.mean(effs)), 4),
                "efficiency_max": round(float(np.max(effs)), 4),
                "mbit_per_s": round(n / float(np.median(secs)) / 1e6, 3),
                "seconds_median": round(float(np.median(secs)), 3),
                "messages_mean": round(float(np.mean(msgs)), 1),
                "leaked_bits_mean": round(float(np.mean(leaks)), 1),
                "runs": runs,
                "uncorrected_runs": wrong,
            }
    return out


def _residual_figures(max_trials: int = 1000) -> dict:
    budget = float(os.environ.get("MOZI_BENCH_RESIDUAL_SECONDS", "400"))
    rng = np.random.default_rng(1000)
    n = 100_000
    done = cascade_wrong = rejected = undetected = 0
    residual_bits = 0
    effs = []
    t0 = time.perf_counter()
    for t in range(max_trials):
        if time.perf_counter() - t0 > budget:
            break
        q = QBERS[t % len(QBERS)]
        alice, bob = _pair(n, q, rng)
        res = reconcile(alice, bob, q, seed=t)
        effs.append(res.efficiency)
        wrong = int(np.count_nonzero(res.corrected != alice))
        ok = verify(alice, res.corrected, 1e-15).ok
        done += 1
        cascade_wrong += wrong > 0
        residual_bits += wrong
        rejected += not ok
        undetected += ok and wrong > 0
    return {
        "trials": done,
        "trials_target": max_trials,
        "n": n,
        "qbers": list(QBERS),
        "keys_wrong_after_cascade": cascade_wrong,
        "residual_bit_errors": residual_bits,
        "keys_rejected_by_verification": rejected,
        "keys_wrong_after_verification": undetected,
        "efficiency_max": round(float(np.max(effs)), 4) if effs else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _privacy_figures() -> dict:
    rng = np.random.default_rng(7)
    n = 1_000_000
    key = rng.integers(0, 2, n, dtype=np.uint8)
    out = {}
    for m in (100_000, n // 2):
        seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        best = min(_timed(lambda m=m, seed=seed: privacy_amplify(key, m, seed_bits=seed))
                   for _ in range(7))
        out[f"n={n} m={m}"] = {"mbit_per_s": round(n / best / 1e6, 2),
                               "seconds": round(best, 4)}
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run() -> dict:
    """Run every figure; returns a JSON-serialisable dict."""
    return {
        "cascade": _cascade_figures(),
        "privacy": _privacy_figures(),
        "residual": _residual_figures(),
    }


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))
