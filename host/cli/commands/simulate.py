"""``mozi simulate``: simulate a satellite pass into Bob's time tags and Alice's side file.

Writes ``DIR/bob.tags`` (Bob's detections, :mod:`mozi.sim.tagfile`) and ``DIR/alice.json``
(Alice's generator seed and the run's metadata) with ``--out DIR``; prints a per-10-s profile
(sifted key rate and QBER from the simulator's ground truth) as a table, or as one JSON
document with ``--json``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.sim.eve import InterceptResend, PhotonNumberSplitting
from mozi.sim.link import TimingConfig, simulate_pass, write_alice
from mozi.sim.passes import get_pass, pass_names
from mozi.sim.receiver import ReceiverConfig
from mozi.sim.source import ConfigurationError, SourceConfig
from mozi.sim.tagfile import OutputError, write_tags

HELP = "simulate a satellite pass: Bob's time tags + Alice's seed, with a key-rate profile"

BOB_FILE = "bob.tags"
ALICE_FILE = "alice.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi simulate`` arguments to ``parser``."""
    parser.add_argument("--pass", dest="pass_name", default="micius2017", metavar="NAME",
                        help=f"pass to simulate: {', '.join(pass_names())} "
                             "(a station name gives a geometric pass; default micius2017)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of Alice's choices and of the channel (default 1)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help=f"write DIR/{BOB_FILE} and DIR/{ALICE_FILE} (DIR is created)")
    parser.add_argument("--eve", choices=("none", "intercept-resend", "pns"), default="none",
                        help="eavesdropper on the quantum channel (default none)")
    parser.add_argument("--eve-fraction", type=float, default=1.0, metavar="F",
                        help="fraction of pulses intercept-resend attacks (default 1)")
    parser.add_argument("--t-start", type=float, default=None, metavar="S",
                        help="start of the simulated range, seconds into the pass")
    parser.add_argument("--t-stop", type=float, default=None, metavar="S",
                        help="end of the simulated range, seconds into the pass")
    parser.add_argument("--p-z", type=float, default=SourceConfig.p_z, metavar="P",
                        help="probability of the Z basis at Alice (her basis choice) and at "
                             "Bob (his beam splitter's ratio); default %(default)g as in the "
                             "2017 experiment; the key comes from Z, so P > 0.5 sifts more key "
                             "(see make bench: basis)")
    parser.add_argument("--clock-offset-ps", type=float, default=TimingConfig.clock_offset_ps,
                        metavar="PS", help="Bob's clock offset (default %(default)g ps)")
    parser.add_argument("--drift-ppm", type=float, default=TimingConfig.drift_ppm,
                        metavar="PPM", help="Bob's clock drift (default %(default)g ppm)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr")


def _eve(args):
    if args.eve == "intercept-resend":
        return InterceptResend(args.eve_fraction)
    if args.eve == "pns":
        return PhotonNumberSplitting()
    return None


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {out}: "
                          f"{exc.strerror or exc}") from None


def _table(doc: dict) -> str:
    lines = [f"pass {doc['pass']}  seed {doc['seed']}  eve {doc['eve'] or 'none'}",
             f"{'t [s]':>7} {'dist [km]':>9} {'loss [dB]':>9} {'detections':>10} "
             f"{'sifted [kbit/s]':>15} {'QBER':>7}"]
    for row in doc["profile"]:
        q = "—" if row["qber"] is None else f"{100 * row['qber']:.2f}%"
        lines.append(f"{row['t_s']:7.0f} {row['distance_km']:9.1f} {row['loss_db']:9.2f} "
                     f"{row['detections']:10d} {row['sifted_kbps']:15.3f} {q:>7}")
    t = doc["totals"]
    q = "—" if t["qber"] is None else f"{100 * t['qber']:.2f}%"
    lines.append(f"total: {t['detections']} detections, {t['sifted_bits']} sifted bits "
                 f"({t['sifted_kbps']:.3f} kbit/s over {t['duration_s']:g} s), QBER {q}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``mozi simulate``; returns the exit status."""
    profile = get_pass(args.pass_name)
    eve = _eve(args)
    if args.eve != "intercept-resend" and args.eve_fraction != 1.0:
        raise ConfigurationError("--eve-fraction applies only to --eve intercept-resend")
    timing = TimingConfig(clock_offset_ps=args.clock_offset_ps, drift_ppm=args.drift_ppm)
    if args.out is not None:
        _prepare_out(args.out)          # fail before the (long) simulation
    if not 0.0 < args.p_z < 1.0:
        raise ConfigurationError(f"--p-z must lie strictly between 0 and 1, not {args.p_z:g} "
                                 f"(both bases are needed: X bounds the phase error)")
    source, receiver = SourceConfig(p_z=args.p_z), ReceiverConfig(p_z=args.p_z)
    result = simulate_pass(profile, seed=args.seed, timing=timing, eve=eve, source=source,
                           receiver=receiver,
                           t_start=args.t_start, t_stop=args.t_stop,
                           progress=not args.no_progress)
    files = {}
    if args.out is not None:
        bob_meta = result.metadata()
        bob_meta.pop("seed")            # Bob does not know Alice's QRNG output
        write_tags(args.out / BOB_FILE, result.tags_ps, result.channels, metadata=bob_meta)
        try:
            write_alice(args.out / ALICE_FILE, result)
        except OutputError:
            (args.out / BOB_FILE).unlink(missing_ok=True)   # never leave half a pair
            raise
        files = {"bob": str(args.out / BOB_FILE), "alice": str(args.out / ALICE_FILE)}
    doc = {
        "pass": profile.name,
        "seed": args.seed,
        "p_z": args.p_z,
        "eve": eve.to_dict() if eve is not None else None,
        "first_slot": result.first_slot,
        "n_slots": result.n_slots,
        "slot_period_ps": result.slot_period_ps,
        "profile": result.profile,
        "totals": result.totals,
        "files": files,
    }
    if args.json:
        json.dump(doc, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(_table(doc))
        for role, path in files.items():
            print(f"wrote {role}: {path}")
    return 0
