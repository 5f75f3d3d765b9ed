"""``mozi session``: post-process one link — Bob's time tags and Alice's record into a key.

Reads Bob's detections (the project's tag file or a PicoQuant PTU T2 file) and Alice's record
of what she sent, runs the whole protocol (time-bin recovery, sifting, parameter estimation,
Cascade, verification, privacy amplification) and stores the final key under the same key IDs
in Alice's and Bob's key stores. The two stores must exist and share the link's
authentication key (``mozi link init LINK alice=A.db bob=B.db``); the session consumes and
refills it. Both input files are read and checked before a key store is opened, so a bad input
file stores nothing.

Every random choice comes from the OS CSPRNG. ``--insecure-seed N`` replays a session exactly
(simulation, tests): it prints a warning and marks the result and the keys
``insecure_reproducible``.

Exit status: 0 when a key was stored, 1 on a user error (one line on stderr), 3 when the
protocol aborted (QBER above the threshold, no positive finite-key length, a failed
verification or authentication; nothing stored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from mozi.sim.errors import FileFormatError, MoziError

HELP = "post-process one link: Bob's time tags + Alice's record → a stored secret key"

EXIT_ABORTED = 3
"""Exit status when the protocol aborted and no key was stored."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi session`` arguments to ``parser``."""
    parser.add_argument("bob_tags", metavar="BOB_TAGS",
                        help="Bob's detections: a mozi tag file or a PicoQuant PTU T2 file")
    parser.add_argument("alice", metavar="ALICE_JSON",
                        help="Alice's record of the pass (written by `mozi simulate`)")
    parser.add_argument("--link", required=True, metavar="NAME",
                        help="link name stored with the keys, e.g. sat-moscow")
    parser.add_argument("--store-alice", required=True, metavar="PATH", type=Path,
                        help="Alice's key store (made by `mozi link init`)")
    parser.add_argument("--store-bob", required=True, metavar="PATH", type=Path,
                        help="Bob's key store (made by `mozi link init`)")
    parser.add_argument("--format", choices=("auto", "mozi", "ptu"), default="auto",
                        help="format of BOB_TAGS (default: auto-detect from its first bytes)")
    parser.add_argument("--channels", metavar="MAP", default=None,
                        help="PTU input → detector map, default 0:H,1:V,2:D,3:A")
    parser.add_argument("--eps-sec", type=float, default=None, metavar="EPS",
                        help="secrecy parameter ε_sec (default 1e-10)")
    parser.add_argument("--eps-cor", type=float, default=None, metavar="EPS",
                        help="correctness parameter ε_cor (default 1e-15)")
    parser.add_argument("--qber-threshold", type=float, default=None, metavar="Q",
                        help="abort above this QBER, as a fraction (default 0.11)")
    parser.add_argument("--alice-share", type=float, default=None, metavar="F",
                        help="fraction of the key Alice may send with (default 0.5; Bob gets "
                             "the rest)")
    parser.add_argument("--reconciliation", choices=("cascade", "ldpc"), default=None,
                        help="error correction: cascade (default; f ≈ 1.03, many round trips)"
                             " or ldpc (blind syndrome decoding, 1–3 round trips)")
    parser.add_argument("--key-bases", choices=("z", "zx"), default=None,
                        help="z (default): key from Z, the X bits disclosed as the test; zx: "
                             "key from both bases, each tested by the other's corrected errors")
    parser.add_argument("--insecure-seed", type=int, default=None, metavar="N",
                        help="replay mode for simulation and tests: every random choice, the "
                             "secret ones included, follows from N; the keys are marked "
                             "insecure_reproducible")
    parser.add_argument("--device", default="model",
                        help="device backend of both parties: model (golden models; default), "
                             "rtl (the firmware under Verilator), serial:PORT (a board)")
    parser.add_argument("--alice-device", default=None, metavar="DEVICE",
                        help="Alice's (the transmitter's) device instead of --device")
    parser.add_argument("--bob-device", default=None, metavar="DEVICE",
                        help="Bob's (the receiver's) device instead of --device")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout")


def load_tags(path: str | os.PathLike[str], fmt: str = "auto", channels: str | None = None):
    """Read Bob's time tags from a mozi tag file or a PicoQuant PTU T2 file.

    Parameters
    ----------
    path : path-like
        The tag file.
    fmt : {"auto", "mozi", "ptu"}
        File format; ``"auto"`` picks PTU when the file starts with the PTU magic bytes.
    channels : str or None
        Channel map for PTU files (see :func:`mozi.host.ptu.parse_channel_map`).

    Returns
    -------
    TagData

    Raises
    ------
    FileFormatError
        The file is missing, truncated or corrupt, or ``channels`` is given for a mozi file.
    """
    from mozi.host import ptu
    from mozi.sim import tagfile

    if fmt not in ("auto", "mozi", "ptu"):
        raise FileFormatError(f"unknown tag file format {fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such tag file")
    if fmt == "ptu" or (fmt == "auto" and ptu.is_ptu(path)):
        return ptu.read_ptu(path, channels)
    if fmt == "auto":
        with open(path, "rb") as f:
            head = f.read(len(tagfile.MAGIC))
        if not tagfile.MAGIC.startswith(head[:len(tagfile.MAGIC)]) or not head:
            raise FileFormatError(f"{path}: neither a Mozi tag file nor a PicoQuant PTU file "
                                  f"(unknown magic bytes)")
    if channels is not None:
        raise FileFormatError("--channels applies only to PTU files; mozi tag files name "
                              "their channels")
    try:
        return tagfile.read_tags(path)
    except MoziError:
        raise
    except (tagfile.TagFileError, OSError, ValueError) as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def load_alice(path: str | os.PathLike[str]):
    """Read Alice's record (``mozi.sim.link.read_alice``), turning I/O errors into one line."""
    from mozi.sim import link

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such Alice file")
    try:
        return link.read_alice(path)
    except MoziError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise FileFormatError(f"{path}: not a readable Alice record ({exc})") from None


def _fmt_pct(x: Any) -> str:
    return "n/a" if x is None else f"{100.0 * float(x):.2f} %"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """Human-readable summary of one session document (``SessionResult.to_json()``)."""
    lines = [f"link {doc.get('link')}: {doc.get('detections', 0):,} detections, "
             f"{_fmt_pct(doc.get('in_window_fraction'))} inside the slot window"]
    lines.append(f"  sifted {doc.get('sifted_bits', 0):,} bits; QBER Z "
                 f"{_fmt_pct(doc.get('qber_z'))}, X {_fmt_pct(doc.get('qber_x'))}")
    if doc.get("ec_leaked_bits") is not None:
        eff = doc.get("ec_efficiency")
        eff_s = "n/a" if eff is None else f"{float(eff):.3f}"
        lines.append(f"  error correction disclosed {doc['ec_leaked_bits']:,} bits "
                     f"(efficiency f = {eff_s}); verification "
                     f"{'ok' if doc.get('verification_ok') else 'FAILED'}")
    if doc.get("aborted"):
        lines.append(f"  ABORTED: {doc.get('abort_reason') or 'protocol abort'}; "
                     f"no key stored")
    else:
        ids = doc.get("key_ids") or []
        lines.append(f"  secret key {doc.get('final_key_bits', 0):,} bits stored under "
                     f"{len(ids)} key ID(s) in both key stores; authentication used "
                     f"{doc.get('auth_bits_consumed', 0):,} bits and was refilled with "
                     f"{doc.get('auth_bits_replenished', 0):,}")
        if doc.get("insecure_reproducible"):
            lines.append("  INSECURE: reproducible from its seed; do not use this key")
    return lines


def _open_store(path: Path, role: str, link: str):
    from mozi.host.keys.keystore import KeyStore

    if not path.is_file():
        raise MoziError(f"no key store at {path}; make the link's two stores with "
                        f"`mozi link init {link} alice=STORE bob=STORE` ({role}'s store)")
    return KeyStore(path, create=False)


def run(args: argparse.Namespace) -> int:
    """Run ``mozi session``; see the module docstring for the exit status."""
    # imported here, not at module level: the CLI imports every command to build its parser,
    # and the session engine (scipy, the device models) is not needed for `mozi --help`
    from mozi.host.crypto.randomness import warn_insecure
    from mozi.host.devices.device import check_device
    from mozi.host.postprocessing.session import SessionConfig, run_session

    for name in ("eps_sec", "eps_cor", "qber_threshold", "alice_share"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise MoziError(f"bad session parameter: --{name.replace('_', '-')} must be a "
                            f"finite number")
    tags = load_tags(args.bob_tags, args.format, args.channels)
    alice = load_alice(args.alice)

    overrides = {
        "eps_sec": args.eps_sec,
        "eps_cor": args.eps_cor,
        "qber_threshold": args.qber_threshold,
        "insecure_seed": args.insecure_seed,
        "alice_share": args.alice_share,
        "reconciliation": args.reconciliation,
        "key_bases": args.key_bases,
        "device": args.device,
        "alice_device": args.alice_device,
        "bob_device": args.bob_device,
    }
    try:
        config = SessionConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise MoziError(f"bad session parameter: {exc}") from None

    # an unavailable device fails here, before a key store is touched or progress is shown
    check_device(config.bob_device or config.device, "receiver")
    check_device(config.alice_device or config.device, "transmitter")

    if args.store_alice.resolve() == args.store_bob.resolve():
        raise MoziError("--store-alice and --store-bob must be different files")
    if config.insecure_seed is not None:
        warn_insecure("this session", config.insecure_seed)
    with _open_store(args.store_alice, "Alice", args.link) as store_a, \
            _open_store(args.store_bob, "Bob", args.link) as store_b:
        result = run_session(tags, alice, link=args.link, store_alice=store_a,
                             store_bob=store_b, config=config, progress=True)

    doc = result.to_json()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(summary_lines(doc)))
    return EXIT_ABORTED if result.aborted else 0
