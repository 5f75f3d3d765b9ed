"""``mozi link``: the lasting authentication key of a link between two parties.

``mozi link init LINK PARTY=STORE PARTY=STORE`` draws a fresh pre-shared key from the OS CSPRNG
and installs the same key in both parties' key stores (created, mode 0600, if missing) — the
one step a link needs before its first ``mozi session``. Carry each store to its party's
machine; afterwards every session refills the key from fresh QKD key.

``mozi link status [--store PATH] [--link L]`` shows, per link, the pads left in each
direction, the next sequence numbers and the lifetime use, replenishment and rejected frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.host.crypto.auth import DEFAULT_AUTH_KEY_BITS, DEFAULT_TAG_BITS
from mozi.host.keys.keystore import DEFAULT_STORE_ENV, KeyStore, default_store_path, init_link
from mozi.sim.errors import MoziError

HELP = "create (init) or show (status) the lasting authentication key of a link"


def _party_store(text: str) -> tuple[str, Path]:
    party, sep, path = text.partition("=")
    if not sep or not party or not path:
        raise argparse.ArgumentTypeError(f"expected PARTY=STORE, not {text!r}")
    return party, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi link`` arguments to ``parser``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="install a fresh matching pre-shared key in two stores",
                          description="Install a fresh matching pre-shared authentication "
                                      "key for LINK in the key stores of its two parties.")
    init.add_argument("link", metavar="LINK", help="link name, e.g. sat-moscow")
    init.add_argument("parties", nargs=2, type=_party_store, metavar="PARTY=STORE",
                      help="a party's name and its key store (created if missing); the "
                           "first one named sends in direction 0")
    init.add_argument("--bits", type=int, default=DEFAULT_AUTH_KEY_BITS, metavar="N",
                      help=f"size of the pre-shared key (default {DEFAULT_AUTH_KEY_BITS}: "
                           f"the hash key and 1024 pads per direction)")
    init.add_argument("--tag-bits", type=int, default=DEFAULT_TAG_BITS, metavar="T",
                      help=f"tag length, a multiple of 8 in [64, 128] "
                           f"(default {DEFAULT_TAG_BITS})")
    init.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    status = sub.add_parser("status", help="show the authentication keys of a store",
                            description="Show the authentication keys of a key store.")
    status.add_argument("--store", type=Path, default=None, metavar="PATH",
                        help=f"key store (default ${DEFAULT_STORE_ENV} or ./mozi-keys.db)")
    status.add_argument("--link", default=None, help="show only this link")
    status.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _init(args: argparse.Namespace) -> int:
    (name_a, path_a), (name_b, path_b) = args.parties
    if path_a.resolve() == path_b.resolve():
        raise MoziError("the two parties need different key stores")
    if name_a == name_b:
        raise MoziError("the two parties need different names")
    try:
        with KeyStore(path_a, party=name_a) as a, KeyStore(path_b, party=name_b) as b:
            pads = init_link(args.link, a, b, key_bits=args.bits, tag_bits=args.tag_bits)
    except ValueError as exc:
        raise MoziError(str(exc)) from None
    doc = {"link": args.link, "parties": {name_a: str(path_a), name_b: str(path_b)},
           "key_bits": args.bits, "tag_bits": args.tag_bits, "pads_per_direction": pads}
    if args.json:
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"link {args.link}: {name_a} ({path_a}) and {name_b} ({path_b}) share a fresh "
              f"{args.bits:,}-bit authentication key ({pads:,} tags of {args.tag_bits} bits "
              f"per direction)")
    return 0


def _status(args: argparse.Namespace) -> int:
    path = args.store if args.store is not None else default_store_path()
    with KeyStore(path, create=False) as store:
        party, status = store.party, store.auth_status()
    if args.link is not None:
        status = {k: v for k, v in status.items() if k == args.link}
    if args.json:
        json.dump({"store": str(path), "party": party, "links": status}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if not status:
        print(f"key store {path} ({party}): no authentication keys")
        return 0
    print(f"key store {path} ({party})")
    for link, s in status.items():
        t = s["tag_bits"]
        mine, theirs = s["role"], 1 - s["role"]
        print(f"{link}: with {s['peer']}, {t}-bit tags; to send {s['pad_bits'][mine] // t:,} "
              f"pads (next {s['next_seq'][mine]:,}), to receive {s['pad_bits'][theirs] // t:,} "
              f"(next {s['next_seq'][theirs]:,}); used {s['used_bits']:,} bits, added "
              f"{s['added_bits']:,}, rejected frames {s['failures']:,}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``mozi link``; returns the exit status."""
    return _init(args) if args.action == "init" else _status(args)
