"""Whole-pass session: time to post-process the Micius 2017 pass against the pass duration.

Simulates the full pass (``mozi.sim.link.simulate_pass``, seed 2017, no eavesdropper), then
runs :func:`mozi.host.postprocessing.session.run_session` on the ``model`` device with fresh key
stores and reports the wall-clock time of each step, the total against the pass duration
(real-time factor ``< 1`` means the host keeps up with the satellite), and the session's figures.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mozi.host.keys.keystore import KeyStore, init_link
from mozi.host.postprocessing.session import SessionConfig, run_session
from mozi.sim import link, passes
from mozi.sim.tagfile import TagData

TITLE = "Session: whole Micius 2017 pass, tags to stored key (model device)"


def run() -> dict:
    """Simulate and post-process the whole pass; return the figures."""
    profile = passes.micius2017()
    t0 = time.perf_counter()
    sim = link.simulate_pass(profile, seed=2017)
    sim_s = time.perf_counter() - t0
    tags = TagData(sim.tags_ps, sim.channels, 1, ("H", "V", "D", "A"), {})
    alice = link.AliceFile(sim.alice, sim.metadata())
    duration = float(sim.t_stop_s - sim.t_start_s)
    with tempfile.TemporaryDirectory() as d:
        sa = KeyStore(Path(d) / "alice.db", party="micius")
        sb = KeyStore(Path(d) / "bob.db", party="xinglong")
        init_link("micius2017", sa, sb)
        t0 = time.perf_counter()
        res = run_session(tags, alice, link="micius2017", store_alice=sa, store_bob=sb,
                          config=SessionConfig(insecure_seed=2017))
        wall = time.perf_counter() - t0
        sa.close()
        sb.close()
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
