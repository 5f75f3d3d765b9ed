"""``mozi keys``: show what a key store holds (``status``, the default) or every block (``list``).

``status`` prints, per link, the peer, the available and consumed blocks and bits, and how
many of the available bits this party may send with (the rest are the peer's, for messages
this party receives); ``list`` prints one line per key block (ID, link, sender, size, state,
check value, pass, creation time) — never key material. With
``--json`` one JSON document goes to stdout. The store is only read; a missing store is an
error (it is not created).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.host.keys.keystore import DEFAULT_STORE_ENV, KeyStore, default_store_path

HELP = "show the key store: per-link status, or every key block with its metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi keys`` arguments to ``parser``."""
    parser.add_argument("action", nargs="?", choices=("status", "list"), default="status",
                        help="status: per-link totals (default); list: every key block")
    parser.add_argument("--store", type=Path, default=None, metavar="PATH",
                        help=f"key store (default ${DEFAULT_STORE_ENV} or ./mozi-keys.db)")
    parser.add_argument("--link", default=None, help="show only this link")
    parser.add_argument("--state", choices=("available", "consumed"), default=None,
                        help="list only blocks in this state")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _status_text(path: Path, party: str, status: dict) -> str:
    if not status:
        return f"key store {path} ({party}): empty"
    width = max(len("link"), *(len(k) for k in status))
    peer_w = max(len("peer"), *(len(s["peer"]) for s in status.values()))
    lines = [f"key store {path} ({party})",
             f"{'link':<{width}}  {'peer':<{peer_w}}  {'available':>10} {'bits':>13} "
             f"{'to send':>13} {'to receive':>13}  {'consumed':>10} {'bits':>13}"]
    for link, s in status.items():
        lines.append(f"{link:<{width}}  {s['peer']:<{peer_w}}  {s['available_blocks']:>10,} "
                     f"{s['available_bits']:>13,} {s['send_bits']:>13,} "
                     f"{s['receive_bits']:>13,}  {s['consumed_blocks']:>10,} "
                     f"{s['consumed_bits']:>13,}")
    return "\n".join(lines)


def _list_text(path: Path, records) -> str:
    if not records:
        return f"key store {path}: no key blocks"
    width = max(len("link"), *(len(r.link) for r in records))
    s_w = max(len("sender"), *(len(r.sender) for r in records))
    lines = [f"{'key id':<36}  {'link':<{width}}  {'sender':<{s_w}}  {'bits':>8}  "
             f"{'state':<9}  {'check':<8}  {'pass':<16}  created"]
    for r in records:
        lines.append(f"{r.key_id:<36}  {r.link:<{width}}  {r.sender:<{s_w}}  {r.n_bits:>8}  "
                     f"{r.state:<9}  {(r.check_value or '-'):<8}  {(r.pass_id or '-'):<16}  "
                     f"{r.created}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``mozi keys``; returns the exit status."""
    path = args.store if args.store is not None else default_store_path()
    with KeyStore(path, create=False) as store:
        if args.action == "status":
            status = store.status()
            if args.link is not None:
                status = {k: v for k, v in status.items() if k == args.link}
            if args.json:
                total = {k: sum(s[k] for s in status.values())
                         for k in ("available_blocks", "available_bits", "consumed_blocks",
                                   "consumed_bits", "send_bits", "receive_bits")}
                doc = {"store": str(path), "party": store.party, "links": status,
                       "total": total}
            else:
                print(_status_text(path, store.party, status))
                return 0
        else:
            records = store.list(args.link, state=args.state)
            if args.json:
                doc = {"store": str(path), "party": store.party,
                       "keys": [r.to_dict() for r in records]}
            else:
                print(_list_text(path, records))
                return 0
    json.dump(doc, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
    return 0
