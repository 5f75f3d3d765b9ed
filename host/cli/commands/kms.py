"""``mozi kms``: key management entities for ETSI GS QKD 014 key delivery.

``mozi kms init DIR [--kme KME_ID ...] [--sae SAE_ID@KME_ID ...] [--host NAME ...]`` makes the
certificates of mutual TLS in a new folder: a CA, a server certificate per KME and a client
certificate per SAE (:mod:`mozi.host.kms.certs`). Without ``--kme``/``--sae`` it makes the
demo's: KMEs ``moscow`` and ``urumqi``, SAEs ``sae-moscow`` and ``sae-urumqi``.

``mozi kms serve --store S.db --certs DIR [--kme KME_ID] [--host H] [--port P]`` runs one KME
(:mod:`mozi.host.kms.server`) on the station's key store until SIGTERM / Ctrl-C. Its first
line on stdout is ``{"event": "listening", "port": …}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from mozi.host.kms.certs import DEFAULT_DAYS, DEFAULT_KMES, DEFAULT_SAES, init_pki
from mozi.sim.errors import MoziError

HELP = "ETSI GS QKD 014 key delivery: make the certificates (init), run a KME (serve)"


def _sae(text: str) -> tuple[str, str]:
    sae, sep, kme = text.partition("@")
    if not sep or not sae or not kme:
        raise argparse.ArgumentTypeError(f"expected SAE_ID@KME_ID, not {text!r}")
    return sae, kme


class UsageError(MoziError):
    """Options that do not go together."""


def add_kms_arguments(parser: argparse.ArgumentParser) -> None:
    """``--kms URL --certs DIR --sae SAE_ID``: take keys from a KME (encrypt, decrypt)."""
    parser.add_argument("--kms", metavar="URL", help="the KME to take keys from "
                        "(https://HOST:PORT)")
    parser.add_argument("--certs", type=Path, metavar="DIR",
                        help="with --kms: folder made by 'mozi kms init'")
    parser.add_argument("--sae", metavar="SAE_ID", help="with --kms: this application's SAE "
                        "ID (its client certificate in DIR)")


def kme_client(args: argparse.Namespace):
    """The :class:`~mozi.host.kms.client.KmeClient` that ``--kms/--certs/--sae`` name."""
    from mozi.host.kms.certs import load_pki
    from mozi.host.kms.client import KmeClient

    if not args.certs or not args.sae:
        raise UsageError("--kms needs --certs and --sae")
    if not args.kms.startswith("https://"):
        raise UsageError(f"--kms must be an https:// URL, not {args.kms!r}")
    return KmeClient(args.kms, load_pki(args.certs), args.sae)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0 … 65535, not {text!r}")
    return int(text)


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
    serve = sub.add_parser("serve", help="run one KME over HTTPS with mutual TLS",
                           description="Serve ETSI GS QKD 014 (status, enc_keys, dec_keys) "
                                       "from a station's key store to the SAEs the "
                                       "certificate folder names for this KME.")
    serve.add_argument("--store", type=Path, required=True, metavar="PATH",
                       help="the station's key store (must exist)")
    serve.add_argument("--certs", type=Path, required=True, metavar="DIR",
                       help="folder made by 'mozi kms init'")
    serve.add_argument("--kme", default=None, metavar="KME_ID",
                       help="this KME's ID in DIR (default: the store's party)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on "
                       "(default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port (default: any free one)")


def run(args: argparse.Namespace) -> int:
    if args.action == "serve":
        return _serve(args)
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


def _serve(args: argparse.Namespace) -> int:
    from mozi.host.kms.certs import load_pki
    from mozi.host.kms.server import Kme

    kme = Kme(args.store, load_pki(args.certs), args.kme)
    server = kme.server(args.host, args.port)
    print(json.dumps({"event": "listening", "kme": kme.kme_id, "host": args.host,
                      "port": server.port}), flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        kme.close()
    return 0
