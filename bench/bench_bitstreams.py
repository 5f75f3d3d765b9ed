"""Board bitstreams: each board × role built with the yowasp tools (cached by design hash).

A row per build: whether it fits, its logic and block-RAM use against the device's, and
each clock's Fmax against its constraint. A design that does not fit is a row too, with the
utilisation nextpnr reported before it gave up. The full rows are in ``bench/bitstreams.json``.
"""

from __future__ import annotations

from mozi.boards.build import BuildFailed, build, build_name

TITLE = "board bitstreams (make bitstream)"

BUILDS = (("icebreaker", "receiver", "oscillator"), ("icebreaker", "transmitter", "oscillator"),
          ("ulx3s", "receiver", "oscillator"), ("ulx3s", "transmitter", "oscillator"),
          ("icebreaker", "receiver", "external"), ("ulx3s", "receiver", "external"))
#: The device's logic cells and block RAMs, as nextpnr names them.
LOGIC = ("ICESTORM_LC", "TRELLIS_COMB")
RAM = ("ICESTORM_RAM", "DP16KD")


def _summary(row: dict) -> dict:
    util, avail = row["utilisation"], row["available"]
    out = {"fits": row["fits"]}
    for label, names in (("logic", LOGIC), ("block_ram", RAM)):
        for n in names:
            if n in util:
                out[label] = f"{util[n]} / {avail[n]} {n}"
    for net, c in sorted(row.get("clocks", {}).items()):
        out[f"fmax_mhz {net}"] = f"{c['fmax']} (target {c['target']})"
    if "clocks" in row:
        out["meets_timing"] = all(c["fmax"] >= c["target"] for c in row["clocks"].values())
    if "reason" in row:
        out["failure"] = row["reason"]
    return out


def run() -> dict:
    figures = {}
    for board, role, reference in BUILDS:
        name = build_name(board, role, reference)
        try:
            row = build(board, role, reference=reference)
        except BuildFailed as e:
            row = e.row
        figures[name] = _summary(row)
    return figures
