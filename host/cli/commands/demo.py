"""``mozi demo``: the China–Russia experiment replayed in software.

Simulates a Micius pass over Zvenigorod (Moscow) and one over Nanshan (Urumqi), runs a QKD
session on each, relays a shared Moscow–Urumqi key through the satellite, encrypts the two
sample images at Moscow and decrypts them at Urumqi (see :mod:`mozi.host.demo`). Writes the key
stores, the images, a report (``report.png``, ``report.md``, ``report.html``) and
``demo.json`` into ``--out``. With ``--network`` the same scenario runs between real node
processes and KMEs on loopback (:func:`mozi.host.demo.run_network_demo`). Exit status 0
when both images came out bit-exact, 3 when the scenario ran but did not get that far (a
session aborted or an image failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mozi.sim.errors import MoziError

HELP = "replay the Micius China–Russia relay experiment in software (with a report)"

EXIT_INCOMPLETE = 3
"""Exit status when the scenario ran but no image made it across bit-exact."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi demo`` arguments to ``parser``."""
    from mozi.host.demo import DEFAULT_SEED

    parser.add_argument("--out", type=Path, default=Path("demo-output"), metavar="DIR",
                        help="output folder (default demo-output; created if missing)")
    parser.add_argument("--quick", action="store_true",
                        help="process only a short slice of each pass around its culmination")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"scenario seed (default {DEFAULT_SEED}); the demo is a replay: "
                             f"its keys follow from the seed and are marked "
                             f"insecure_reproducible")
    parser.add_argument("--network", action="store_true",
                        help="run the satellite and the stations as node processes on "
                             "loopback and move the images through the stations' ETSI "
                             "GS QKD 014 KMEs (keys from the CSPRNG: not reproducible)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars or status lines on stderr")


def _summary(doc: dict) -> str:
    lines = []
    for d in doc["links"]:
        if d.get("aborted"):
            lines.append(f"{d['link']:<11} ABORTED: {d.get('abort_reason')}")
            continue
        eff = d.get("ec_efficiency")
        lines.append(
            f"{d['link']:<11} sifted {d['sifted_bits']:>10,} bits  QBER Z "
            f"{100 * d['qber_z']:.2f} % X {100 * d['qber_x']:.2f} %  "
            f"f {'n/a' if eff is None else f'{eff:.3f}'}  "
            f"secret key {d['final_key_bits']:>9,} bits")
    lines.append(f"relay       Moscow and Urumqi share {doc['relay_key_bits']:,} bits")
    for im in doc["images"]:
        verdict = "identical" if im["decrypted_identical"] else \
            f"FAILED{': ' + im['error'] if im.get('error') else ''}"
        lines.append(f"image       {im['name']} ({im['bytes']:,} bytes, {im['mode']}): "
                     f"{im['from']} -> {im['to']}, {verdict}")
    lines.append(f"report      {doc['out']}/{doc['outputs']['html']} "
                 f"({doc['wall_time_s']:.0f} s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``mozi demo``; see the module docstring for the exit status."""
    from mozi.host.crypto.randomness import warn_insecure
    from mozi.host.demo import DemoConfig, json_text, run_demo, run_network_demo

    if args.seed < 0:
        raise MoziError(f"--seed must be a non-negative integer, not {args.seed}")
    config = DemoConfig(seed=args.seed, quick=args.quick)
    if args.network:
        doc = run_network_demo(args.out, config, progress=not args.no_progress)
    else:
        doc = run_demo(args.out, config, progress=not args.no_progress,
                       on_start=lambda: warn_insecure("the demo", config.seed))
    doc["out"] = str(args.out)
    if args.json:
        sys.stdout.write(json_text(doc))
    else:
        print(_summary(doc))
    return 0 if doc["ok"] else EXIT_INCOMPLETE
