# amaranth: UnusedElaboratable=no
"""Gateware size and speed: the synthesis table and the throughputs it implies.

Runs :func:`bench.synth.synth_report` (every core placed alone on iCE40UP5K and ECP5-85F with
the yowasp tools) and multiplies each core's Fmax by its cycle count. The cycle counts are the
ones the cocotb suites measure and assert clock by clock:

* TimeTagger: one event per clock (``tests/hdl/tb_time_tagger.py``);
* SlotAssigner: ``base_cycles + 3 k`` clocks per event, ``k`` the bit length of the slot gap
  (``tests/hdl/tb_slot_assigner.py`` checks every event);
* BasisDecoder: one event per clock;
* AliceSifter: ``1 + B + R' + E`` clocks per block of ``B`` beats of ``lanes`` records
  (``tests/hdl/tb_alice_sifter.py``), i.e. ``lanes`` slots per clock for sparse reports;
* ToeplitzHasher: :func:`mozi.hdl.toeplitz_hasher.job_cycles` (checked by
  ``tests/hdl/tb_toeplitz_hasher.py``), evaluated at (n, m) = (10^6, 10^5).
"""

from mozi.hdl.slot_assigner import SlotAssigner
from mozi.hdl.toeplitz_hasher import job_cycles

from bench.synth import synth_report

TITLE = "gateware: synthesis (iCE40UP5K, ECP5-85F) and throughput"

TOEPLITZ_N, TOEPLITZ_M = 10**6, 10**5


def _row(results: dict, core: str, device: str) -> dict | None:
    row = results.get(f"{core}@{device}")
    return row if row and "error" not in row else None


def run() -> dict:
    results = synth_report()
    out: dict = {"synth": {k: {f: v for f, v in r.items() if f != "note"}
                           for k, r in results.items()}}
    derived: dict = {}
    for device in ("ice40up5k", "ecp5-85f"):
        row = _row(results, "TimeTagger", device)
        if row:
            derived[f"tagger_events_per_s@{device}"] = row["fmax_mhz"] * 1e6
        row = _row(results, "BasisDecoder", device)
        if row:
            derived[f"decoder_events_per_s@{device}"] = row["fmax_mhz"] * 1e6
        row = _row(results, "SlotAssigner", device)
        if row:
            core = SlotAssigner(period_width=32)
            core._MustUse__silence = True
            period = 1 << core.frac_bits       # a one-tick slot
            # an event in the next slot, and one 1000 slots on (a 100-kHz detection rate at
            # 100 MHz), each displacing the held detection
            for label, gap in (("adjacent_slot", 1), ("gap_1000_slots", 1000)):
                cycles = core.event_cycles(gap * period, from_base=True, load=2)
                derived[f"slot_assigner_events_per_s_{label}@{device}"] = \
                    row["fmax_mhz"] * 1e6 / cycles
    row = _row(results, "AliceSifter", "ecp5-85f")
    if row:
        lanes = row["params"]["lanes"]
        derived["sifter_slots_per_s@ecp5-85f"] = lanes * row["fmax_mhz"] * 1e6
        derived["sifter_target_met"] = derived["sifter_slots_per_s@ecp5-85f"] >= 100e6
    row = _row(results, "ToeplitzHasher", "ecp5-85f")
    if row:
        p = row["params"]
        cycles = job_cycles(TOEPLITZ_N, TOEPLITZ_M, lanes=p["lanes"], tile=p["tile"],
                            karatsuba_base=p.get("karatsuba_base", 8))
        mbps = TOEPLITZ_N / (cycles / (row["fmax_mhz"] * 1e6)) / 1e6
        derived["toeplitz_cycles_1e6x1e5"] = cycles
        derived["toeplitz_input_mbit_per_s_1e6x1e5@ecp5-85f"] = round(mbps, 1)
        derived["toeplitz_target_met"] = mbps >= 100
    row = _row(results, "ReceiverTop", "ice40up5k")
    if row:
        # the top with its link: the tagger's sampling clock and the rest at half its rate
        derived["receiver_fits_up5k"] = row["luts"] <= row["luts_available"]
        for clock, c in row.get("clocks", {}).items():
            derived[f"receiver_{clock}_fmax_mhz@ice40up5k"] = c["fmax"]
        derived["receiver_meets_timing"] = all(
            c["fmax"] >= c["target"] for c in row.get("clocks", {}).values())
        derived["receiver_sample_clock_meets_48mhz"] = \
            row.get("clocks", {}).get("sample_clk", {}).get("fmax", 0) >= 48.0
    out["derived"] = derived
    return out
