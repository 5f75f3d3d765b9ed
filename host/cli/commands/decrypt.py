"""``mozi decrypt``: authenticate and decrypt a file made by ``mozi encrypt``.

The key IDs in the file's header are looked up in the receiver's key store. The file is
authenticated first; only then is the plaintext written (atomically) and the key blocks
consumed. A tampered file, an unknown or already-used key ID or a truncated file is one
error line, exit status 1, and no output file.

With ``--kms URL --certs DIR --sae SAE_ID`` instead of ``--store`` the keys are fetched from
the slave SAE's KME by ETSI GS QKD 014 ``dec_keys`` (a KME hands each out once, so a tampered
file uses its keys up all the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.host.cli.commands.kms import UsageError, add_kms_arguments, kme_client
from mozi.host.crypto.imagecrypt import decrypt_file, decrypt_file_kms
from mozi.host.keys.keystore import KeyStore

HELP = "authenticate and decrypt a file made by mozi encrypt (output only if authentic)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi decrypt`` arguments to ``parser``."""
    parser.add_argument("input", type=Path, metavar="IN", help="ciphertext file")
    parser.add_argument("output", type=Path, metavar="OUT", help="plaintext file to write")
    parser.add_argument("--store", type=Path, metavar="PATH",
                        help="the receiver's key store (must exist)")
    add_kms_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``mozi decrypt``; returns the exit status."""
    if args.kms:
        if args.store:
            raise UsageError("give --store or --kms, not both")
        with kme_client(args) as kme:
            result = decrypt_file_kms(args.input, args.output, kme)
    else:
        if not args.store:
            raise UsageError("give --store, or --kms with --certs and --sae")
        with KeyStore(args.store, create=False) as store:
            result = decrypt_file(args.input, args.output, store)
    if args.json:
        doc = {"input": str(args.input), "output": str(args.output), "authenticated": True,
               **result.to_dict()}
        json.dump(doc, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        name = "one-time pad" if result.mode == "otp" else "AES-256-GCM"
        print(f"authenticated and decrypted {args.input} -> {args.output} "
              f"({result.plaintext_bytes:,} bytes, {name}, {len(result.key_ids)} "
              f"{'KME key(s) for' if args.kms else 'key block(s) of link'} {result.link!r} "
              f"consumed)")
    return 0
