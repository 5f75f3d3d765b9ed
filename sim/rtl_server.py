"""Serve a role top's co-simulation on a Unix socket: ``python -m mozi.sim.rtl_server``.

:class:`mozi.host.rtl_device.RtlTransport` starts this in a child process: the role top is
wrapped in its :class:`~mozi.firmware.sim_port.WidePort`, built with Verilator through
:func:`mozi.sim.cocotb_runner.run_cocotb` (once per design, cached by the hash of its Verilog
under ``build/cocotb/``), and the cocotb module :mod:`mozi.sim.rtl_bridge` connects to the
socket and serves it until the host closes it.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["ROLES", "build_top", "serve"]

#: Role tops the co-simulation can serve.
ROLES = ("receiver", "transmitter")

#: Bytes per beat of the wide simulation port.
BEAT_BYTES = 128


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


def serve(role: str, socket_path: str, run_dir: str, stats: str | None = None) -> None:
    """Build (or reuse) the role top and serve it on ``socket_path`` until closed; the
    simulator's results go to ``run_dir``."""
    from mozi.sim.cocotb_runner import run_cocotb
    env = {"MOZI_RTL_SOCKET": socket_path}
    if stats:
        env["MOZI_RTL_STATS"] = stats
    run_cocotb(build_top(role), "mozi.sim.rtl_bridge", toplevel=f"mozi_{role}", extra_env=env,
               run_dir=run_dir, ports_only=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mozi.sim.rtl_server",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--socket", required=True, help="Unix socket the host listens on")
    parser.add_argument("--run-dir", required=True, help="folder for the simulator's files")
    parser.add_argument("--stats", help="write the simulation's figures here (JSON)")
    args = parser.parse_args(argv)
    serve(args.role, args.socket, args.run_dir, args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
