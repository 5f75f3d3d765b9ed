"""``mozi kms``: key management entities for ETSI GS QKD 014 key delivery.

``mozi kms init DIR [--kme KME_ID ...] [--sae SAE_ID@KME_ID ...] [--host NAME ...]`` makes the
certificates of mutual TLS in a new folder: a CA, a server certificate per KME and a client
certificate per SAE (:mod:`mozi.host.kms.certs`). Without ``--kme``/``--sae`` it makes the
demo's: KMEs ``moscow`` and ``urumqi``, SAEs ``sae-moscow`` and ``sae-urumqi``.
"""

from __future__ import annotations

import argparse
import json
import sys

from mozi.host.kms.certs import DEFAULT_DAYS, DEFAULT_KMES, DEFAULT_SAES, init_pki

HELP = "make the certificates of ETSI GS QKD 014 key delivery (init)"


def _sae(text: str) -> tuple[str, str]:
    sae, sep, kme = text.partition("@")
    if not sep or not sae or not kme:
        raise argparse.ArgumentTypeError(f"expected SAE_ID@KME_ID, not {text!r}")
    return sae, kme


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi kms`` arguments to ``parser``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="make a CA and the KME and SAE certificates",
                          description="Make, in the new folder DIR, a certificate authority, "
                                      "a server certificate per KME and a client certificate "
                                      "per SAE for mutual TLS.")
    init.add_argument("dir", metavar="DIR", help="new (or empty) folder")
    init.add_argument("--kme", action="append", default=None, metavar="KME_ID",
                      help=f"a KME (repeat; default {' '.join(DEFAULT_KMES)})")
    init.add_argument("--sae", action="append", type=_sae, default=None,
                      metavar="SAE_ID@KME_ID", help="an SAE and the KME that serves it "
                      f"(repeat; default {' '.join(f'{s}@{k}' for s, k in DEFAULT_SAES)})")
    init.add_argument("--host", action="append", default=[], metavar="NAME",
                      help="a host name or address the KME certificates are valid for, "
                           "besides localhost and 127.0.0.1 (repeat)")
    init.add_argument("--days", type=int, default=DEFAULT_DAYS,
                      help=f"validity (default {DEFAULT_DAYS})")
    init.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    kmes = args.kme if args.kme is not None else DEFAULT_KMES
    saes = args.sae if args.sae is not None else (DEFAULT_SAES if args.kme is None else ())
    pki = init_pki(args.dir, kmes=kmes, saes=saes, hosts=args.host, days=args.days)
    doc = {"dir": str(pki.root), "ca": str(pki.ca), "kmes": pki.kmes}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"made {pki.root}: CA, {len(pki.kmes)} KME and "
              f"{sum(map(len, pki.kmes.values()))} SAE certificates", file=sys.stderr)
        for kme, saes_of in pki.kmes.items():
            print(f"   KME {kme}: serves {', '.join(saes_of) or 'no SAE'}", file=sys.stderr)
    return 0
