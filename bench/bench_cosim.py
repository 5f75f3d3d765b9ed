"""Co-simulation: the role tops under Verilator beside the model backend.

* the receiver top: 20,000 tag events through :class:`~mozi.host.devices.device.ReceiverDriver` on
  ``rtl`` and on ``model`` — clock cycles simulated per second, tag events per second;
* the transmitter top: 3,000 reports through :class:`~mozi.host.devices.device.TransmitterDriver`;
* a session on 30 s of the Micius 2017 pass (120–150 s, the CI test's segment) and on the
  whole pass, with both devices as RTL and on the model — wall time, key bits per second, and
  that the keys are equal (target for the whole pass on rtl: under 10 minutes on 2 cores).
"""

from __future__ import annotations

import time

import numpy as np
from mozi.host.devices.device import ReceiverDriver, TransmitterDriver, open_device
from mozi.host.postprocessing.session import SessionConfig
from mozi.sim import link, model, passes

from bench.common import session_on

TITLE = "Co-simulation: role tops under Verilator (rtl) beside the model backend"
FRAC = 16


def _receiver(spec: str) -> dict:
    rng = np.random.default_rng(1)
    n = 20_000
    ts = np.sort(rng.integers(0, 4 * 10**8, n))
    masks = rng.integers(1, 16, n).astype(np.uint8)
    period = 10_000 << FRAC
    t = open_device(spec, role="receiver")
    rx = ReceiverDriver(t, random_key=bytes(32))
    rx.configure(period=period, offset=0, window_start=period // 5, window_end=4 * period // 5)
    t0 = time.perf_counter()
    rx.process(ts, masks)
    wall = time.perf_counter() - t0
    t.close()
    out = {"events_per_s": round(n / wall)}
    if getattr(t, "stats", None):
        out["cycles_per_s"] = round(t.stats["cycles"] / wall)
        out["cycles_per_event"] = round(t.stats["cycles"] / n, 1)
    return out


def _transmitter(spec: str) -> dict:
    rng = np.random.default_rng(2)
    records = rng.integers(0, 16, 200_000).astype(np.uint8) & 0b1011
    slots = np.unique(rng.integers(0, records.size, 3000))
    basis = rng.integers(0, 2, slots.size).astype(np.uint8)
    t = open_device(spec, role="transmitter")
    tx = TransmitterDriver(t)
    t0 = time.perf_counter()
    out = tx.sift(slots, basis, lambda s: records[s])
    wall = time.perf_counter() - t0
    t.close()
    assert np.array_equal(out.match, model.sift_alice(records, slots, basis)[0])
    fig = {"reports_per_s": round(slots.size / wall)}
    if getattr(t, "stats", None):
        fig["cycles_per_s"] = round(t.stats["cycles"] / wall)
        fig["cycles_per_report"] = round(t.stats["cycles"] / slots.size, 1)
    return fig


def _session(device: str, t_start: float | None, t_stop: float | None) -> dict:
    sim = link.simulate_pass(passes.micius2017(), seed=7, t_start=t_start, t_stop=t_stop)
    res, wall = session_on(sim, SessionConfig(insecure_seed=2017, device=device))
    return {"wall_s": round(wall, 1), "tag_records": int(sim.tags_ps.size),
            "final_key_bits": res.final_key_bits,
            "key_bits_per_s": round(res.final_key_bits / wall, 1),
            "steps_s": res.timings, "key_check_values": res.key_check_values}


def run() -> dict:
    figures = {"receiver_rtl": _receiver("rtl"), "receiver_model": _receiver("model"),
               "transmitter_rtl": _transmitter("rtl"),
               "transmitter_model": _transmitter("model")}
    for name, (start, stop) in (("session_120_150s", (120.0, 150.0)),
                                ("whole_pass", (None, None))):
        runs = {dev: _session(dev, start, stop) for dev in ("model", "rtl")}
        runs["keys_equal"] = runs["model"]["key_check_values"] == runs["rtl"]["key_check_values"]
        figures[name] = runs
    figures["whole_pass_rtl_under_10_min"] = figures["whole_pass"]["rtl"]["wall_s"] < 600
    return figures
