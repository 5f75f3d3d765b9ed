"""Whole-pass session: time to post-process the Micius 2017 pass against the pass duration.

Simulates the full pass (``mozi.sim.link.simulate_pass``, seed 2017, no eavesdropper), then
runs :func:`mozi.host.postprocessing.session.run_session` on the ``model`` device with fresh key
stores and reports the wall-clock time of each step, the total against the pass duration
(real-time factor ``< 1`` means the host keeps up with the satellite), and the session's figures.
"""

from __future__ import annotations

import time

from mozi.host.postprocessing.session import SessionConfig
from mozi.sim import link, passes

from bench.common import session_on

TITLE = "Session: whole Micius 2017 pass, tags to stored key (model device)"


def run() -> dict:
    """Simulate and post-process the whole pass; return the figures."""
    profile = passes.micius2017()
    t0 = time.perf_counter()
    sim = link.simulate_pass(profile, seed=2017)
    sim_s = time.perf_counter() - t0
    duration = float(sim.t_stop_s - sim.t_start_s)
    res, wall = session_on(sim, SessionConfig(insecure_seed=2017))
    return {
        "pass_duration_s": round(duration, 1),
        "tag_records": int(sim.tags_ps.size),
        "simulation_s": round(sim_s, 2),
        "postprocess_s": round(wall, 2),
        "realtime_factor": round(wall / duration, 4),
        "steps_s": res.timings,
        "detections": res.detections,
        "in_window_fraction": round(res.in_window_fraction or 0.0, 5),
        "sifted_bits": res.sifted_bits,
        "qber_z": res.qber_z,
        "qber_x": res.qber_x,
        "ec_efficiency": res.ec_efficiency,
        "final_key_bits": res.final_key_bits,
        "aborted": res.aborted,
        "abort_reason": res.abort_reason,
        "auth_bits_consumed": res.auth_bits_consumed,
        "auth_bits_replenished": res.auth_bits_replenished,
    }
