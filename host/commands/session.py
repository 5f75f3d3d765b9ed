"""``mozi session``: post-process one link — Bob's time tags and Alice's record into a key.

Reads Bob's detections (the project's tag file or a PicoQuant PTU T2 file) and Alice's record
of what she sent, runs the whole protocol (time-bin recovery, sifting, parameter estimation,
Cascade, verification, privacy amplification) and stores the final key under the same key IDs
in Alice's and Bob's key stores. Both input files are read and checked before a key store is
opened, so a bad input file stores nothing and creates no file.

Exit status: 0 when a key was stored, 1 on a user error (one line on stderr), 3 when the
protocol aborted (QBER above the threshold or no positive finite-key length; nothing stored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from mozi.sim.errors import FileFormatError, MoziError

HELP = "post-process one link: Bob's time tags + Alice's record → a stored secret key"

EXIT_ABORTED = 3
"""Exit status when the protocol aborted and no key was stored."""

_SIDECARS = ("", "-wal", "-shm", "-journal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi session`` arguments to ``parser``."""
    parser.add_argument("bob_tags", metavar="BOB_TAGS",
                        help="Bob's detections: a mozi tag file or a PicoQuant PTU T2 file")
    parser.add_argument("alice", metavar="ALICE_JSON",
                        help="Alice's record of the pass (written by `mozi simulate`)")
    parser.add_argument("--link", required=True, metavar="NAME",
                        help="link name stored with the keys, e.g. sat-moscow")
    parser.add_argument("--store-alice", required=True, metavar="PATH", type=Path,
                        help="Alice's key store (SQLite; created if missing)")
    parser.add_argument("--store-bob", required=True, metavar="PATH", type=Path,
                        help="Bob's key store (SQLite; created if missing)")
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
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the public randomness (default: fresh)")
    parser.add_argument("--device", default="model",
                        help="device backend: model (golden models; default), rtl, serial:PORT")
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
                     f"{len(ids)} key ID(s) in both key stores")
    return lines


def _remove_new_store(path: Path) -> None:
    for suffix in _SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def run(args: argparse.Namespace) -> int:
    """Run ``mozi session``; see the module docstring for the exit status."""
    # imported here, not at module level: the CLI imports every command to build its parser,
    # and the session engine (scipy, the device models) is not needed for `mozi --help`
    from mozi.host.device import open_device
    from mozi.host.keystore import KeyStore
    from mozi.host.session import SessionConfig, run_session

    tags = load_tags(args.bob_tags, args.format, args.channels)
    alice = load_alice(args.alice)

    overrides = {
        "eps_sec": args.eps_sec,
        "eps_cor": args.eps_cor,
        "qber_threshold": args.qber_threshold,
        "seed": args.seed,
        "device": args.device,
    }
    try:
        config = SessionConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise MoziError(f"bad session parameter: {exc}") from None

    # an unavailable device fails here, before a key store is touched or progress is shown
    open_device(config.device).close()

    paths = [args.store_alice, args.store_bob]
    if args.store_alice.resolve() == args.store_bob.resolve():
        raise MoziError("--store-alice and --store-bob must be different files")
    new = [not p.exists() for p in paths]
    stores: list[KeyStore] = []
    ok = False
    try:
        for p in paths:
            stores.append(KeyStore(p))
        result = run_session(tags, alice, link=args.link, store_alice=stores[0],
                             store_bob=stores[1], config=config, progress=True)
        ok = not result.aborted
    finally:
        for store in stores:
            store.close()
        if not ok:      # nothing was stored: leave no key store file we created behind
            for p, was_new in zip(paths, new, strict=True):
                if was_new:
                    _remove_new_store(p)

    doc = result.to_json()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(summary_lines(doc)))
    return 0 if ok else EXIT_ABORTED
