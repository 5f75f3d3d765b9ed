"""Quantum-link simulator speed: a full Micius 2017 pass, the tag file, Alice's generator."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from mozi.sim.eve import InterceptResend
from mozi.sim.link import simulate_pass
from mozi.sim.passes import micius2017
from mozi.sim.source import AliceSource
from mozi.sim.tagfile import read_tags, write_tags

TITLE = "simulator: full 273-s Micius pass on one core"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run() -> dict:
    """Simulate the full pass (plain and intercept-resend) and time the file and generator."""
    profile = micius2017()
    result, seconds = _timed(lambda: simulate_pass(profile, seed=1))
    n = int(result.tags_ps.size)
    _, ir_seconds = _timed(lambda: simulate_pass(profile, seed=1, eve=InterceptResend(1.0)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bob.tags"
        _, w = _timed(lambda: write_tags(path, result.tags_ps, result.channels,
                                         metadata=result.metadata()))
        size = path.stat().st_size
        _, r = _timed(lambda: read_tags(path))
    alice = AliceSource(1)
    count = 10_000_000
    _, rec = _timed(lambda: alice.records(10 ** 10, count))
    slots = np.sort(np.random.default_rng(0).integers(0, 27_400_000_000, 1_000_000))
    _, ch = _timed(lambda: alice.choices(slots))
    return {
        "pass_duration_s": round(profile.duration_s, 1),
        "simulate_s": round(seconds, 2),
        "realtime_factor": round(profile.duration_s / seconds, 1),
        "slots_simulated": result.n_slots,
        "detections": n,
        "detections_per_s": round(n / seconds),
        "sifted_bits": result.totals["sifted_bits"],
        "qber": result.totals["qber"],
        "intercept_resend_simulate_s": round(ir_seconds, 2),
        "tagfile_bytes": size,
        "tagfile_write_mb_per_s": round(size / w / 1e6, 1),
        "tagfile_read_mb_per_s": round(size / r / 1e6, 1),
        "alice_records_per_s": round(count / rec),
        "alice_random_choices_per_s": round(slots.size / ch),
    }
