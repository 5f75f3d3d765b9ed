"""Serve a role top's co-simulation on a Unix socket: ``python -m mozi.sim.rtl_server``.

:class:`mozi.host.devices.rtl.RtlTransport` starts this in a child process. The role top,
wrapped in its :class:`~mozi.firmware.sim_port.WidePort`, is converted to Verilog and verilated
together with the C++ harness ``sim/rtl_bridge.cpp`` into one executable (built once per design
and harness, cached by their hash under ``build/rtl/``); this process then becomes that
executable, which connects to the socket and serves it until the host closes it. The clock
loop runs in C++: a cocotb bridge, with a VPI callback per clock edge and Python on every
beat, ran the same tops 2.4 times slower.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["BEAT_BYTES", "ROLES", "build_binary", "build_top", "serve"]

#: Role tops the co-simulation can serve.
ROLES = ("receiver", "transmitter")

#: Bytes per beat of the wide simulation port.
BEAT_BYTES = 128

HARNESS = Path(__file__).with_name("rtl_bridge.cpp")


def build_top(role: str):
    """The role top wrapped in its wide simulation port."""
    from mozi.firmware.sim_port import WidePort
    if role == "receiver":
        from mozi.firmware.receiver import Receiver
        return WidePort(Receiver(), BEAT_BYTES)
    if role == "transmitter":
        from mozi.firmware.transmitter import Transmitter
        return WidePort(Transmitter(), BEAT_BYTES)
    raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def build_binary(role: str) -> Path:
    """The co-simulation executable of a role top (built on first use, then cached)."""
    from amaranth.back import verilog
    from mozi.sim.verilator_build import (
        BUILD_ARGS,
        MAKE_VARS,
        cached_build,
        make_flags,
        verilator_path,
    )
    toplevel = f"mozi_{role}"
    text = verilog.convert(build_top(role), name=toplevel, emit_src=False)
    harness = HARNESS.read_text()
    key = "\n".join([text, harness, MAKE_VARS, *BUILD_ARGS])
    with cached_build("rtl", toplevel, key) as (folder, fresh):
        binary = folder / toplevel
        if fresh:
            (folder / f"{toplevel}.v").write_text(text)
            (folder / "rtl_bridge.cpp").write_text(harness)
            command = [verilator_path(), "--cc", "--exe", "--build", "-j", "2",
                       *BUILD_ARGS, "--top-module", toplevel, "--prefix", "Vtop",
                       "-Mdir", str(folder / "obj"), "-o", str(binary),
                       f"{toplevel}.v", "rtl_bridge.cpp"]
            with make_flags(), open(folder / "build.log", "w") as log:
                done = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
            if done.returncode != 0 or not binary.is_file():
                lines = (folder / "build.log").read_text(errors="replace").splitlines()
                errors = [ln for ln in lines if "rror" in ln] or lines or ["no output"]
                raise RuntimeError(f"building the {role} co-simulation failed: "
                                   f"{errors[-1].strip()[:300]} (see {folder / 'build.log'})")
    return binary


def serve(role: str, socket_path: str, stats: str | None = None) -> None:
    """Build (or reuse) the role top's executable and become it, serving ``socket_path``."""
    binary = build_binary(role)
    args = [str(binary), socket_path] + ([stats] if stats else [])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mozi.sim.rtl_server",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--socket", required=True, help="Unix socket the host listens on")
    parser.add_argument("--stats", help="write the simulation's figures here (JSON)")
    args = parser.parse_args(argv)
    try:
        serve(args.role, args.socket, args.stats)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
