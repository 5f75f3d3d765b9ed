"""``mozi node``: run the satellite or a ground station as a networked node.

``mozi node station --name moscow --store moscow.db --listen 127.0.0.1:7001 --tags T.tags``
is a long-lived server (:mod:`mozi.host.nodes.station`): it answers the satellite's sessions
and relay announcements until it is stopped (Ctrl-C, SIGTERM), one JSON line per connection
on stdout.

``mozi node satellite --store sat.db --station moscow=127.0.0.1:7001 --pass
moscow=alice.json … [--relay moscow,urumqi]`` runs the satellite's schedule
(:mod:`mozi.host.nodes.satellite`): one session per ``--pass`` with that station, then the
relay, and prints one JSON report. Exit status 0 when every session stored a key (and the
relay completed), 3 when a session aborted, 1 on an error (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

HELP = "run the satellite or a ground station as a networked node (satellite, station)"

EXIT_ABORTED = 3


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def _named(kind):
    def parse(text: str):
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise argparse.ArgumentTypeError(f"expected NAME={kind}, not {text!r}")
        return name, (_address(value) if kind == "HOST:PORT" else value)
    return parse


def _pair(text: str) -> tuple[str, str]:
    first, sep, second = text.partition(",")
    if not sep or not first or not second or first == second:
        raise argparse.ArgumentTypeError(f"expected FIRST,SECOND (two stations), not {text!r}")
    return first, second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi node`` arguments to ``parser``."""
    sub = parser.add_subparsers(dest="role", metavar="ROLE", required=True)
    st = sub.add_parser("station", help="a ground station: serve the satellite's sessions",
                        description="Serve the satellite's QKD sessions and relay "
                                    "announcements until stopped.")
    st.add_argument("--name", required=True, help="the station's party name, e.g. moscow")
    st.add_argument("--store", required=True, help="the station's key store")
    st.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT",
                    help="where to listen (default 127.0.0.1 on a free port, reported)")
    st.add_argument("--tags", action="append", default=[], metavar="FILE",
                    help="the station's detections of a pass (a mozi tag file; repeat)")
    sat = sub.add_parser("satellite", help="the satellite: run its passes, then relay",
                         description="Run one QKD session per --pass with that station, "
                                     "then the relay.")
    sat.add_argument("--store", required=True, help="the satellite's key store")
    sat.add_argument("--station", action="append", type=_named("HOST:PORT"), default=[],
                     metavar="NAME=HOST:PORT", help="where a station listens (repeat)")
    sat.add_argument("--pass", dest="passes", action="append", type=_named("ALICE_FILE"),
                     default=[], metavar="NAME=ALICE_FILE",
                     help="a pass over station NAME, Alice's record of it (repeat)")
    sat.add_argument("--relay", type=_pair, default=None, metavar="FIRST,SECOND",
                     help="afterwards relay FIRST's key to SECOND (e.g. moscow,urumqi)")
    sat.add_argument("--connect-for", type=float, default=30.0, metavar="S",
                     help="keep retrying a station that does not answer for S seconds")
    for p in (st, sat):
        p.add_argument("--device", default="model",
                       help="device backend of this node (model, rtl, serial:PORT)")
        p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                       help="give a connection up after S seconds of silence (default 60)")
        p.add_argument("--reconciliation", choices=("cascade", "ldpc"), default="cascade",
                       help="error correction of this link's sessions (default cascade; both "
                            "nodes must agree)")
        p.add_argument("--key-bases", choices=("z", "zx"), default="z",
                       help="z (default): key from the Z basis; zx: from both bases (both "
                            "nodes must agree)")
        p.add_argument("--alice-share", type=float, default=0.5, metavar="F",
                       help="fraction of each session's key the satellite may send with "
                            "(default 0.5; both nodes must agree; 1 for a pure relay)")


def _config(args):
    from mozi.host.postprocessing.session import SessionConfig
    try:
        return SessionConfig(device=args.device, alice_share=args.alice_share,
                             reconciliation=args.reconciliation, key_bases=args.key_bases)
    except ValueError as exc:
        raise SystemExit(f"mozi node: error: {exc}") from None


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise SystemExit("mozi node: error: --timeout must be positive")
    if args.role == "station":
        return _station(args)
    return _satellite(args)


def _station(args) -> int:
    from mozi.host.nodes.station import Station

    station = Station(name=args.name, store=args.store, tags=args.tags, host=args.listen[0],
                      port=args.listen[1], config=_config(args), timeout=args.timeout)

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await station.serve()
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0


def _satellite(args) -> int:
    from mozi.host.nodes.satellite import Satellite

    sat = Satellite(store=args.store, stations=dict(args.station), config=_config(args),
                    timeout=args.timeout, connect_for=args.connect_for)
    for name, _ in args.passes:
        sat.link_to(name)                       # every station known before anything runs
    if args.relay:
        for name in args.relay:
            sat.link_to(name)

    async def main():
        sessions = [await sat.run_pass(name, path) for name, path in args.passes]
        relay = None
        if args.relay and not any(s["aborted"] for s in sessions):
            relay = await sat.relay(*args.relay)
        return {"satellite": sat.party, "sessions": sessions, "relay": relay}

    doc = asyncio.run(main())
    print(json.dumps(doc, indent=2))
    for s in doc["sessions"]:
        state = f"aborted: {s['abort_reason']}" if s["aborted"] else \
            f"{s['final_key_bits']} key bits"
        print(f"mozi node satellite: {s['station']} ({s['link']}): {state}", file=sys.stderr)
    return EXIT_ABORTED if any(s["aborted"] for s in doc["sessions"]) else 0
