"""``mozi decrypt``: authenticate and decrypt a file made by ``mozi encrypt``.

The key IDs in the file's header are looked up in the receiver's key store. The file is
authenticated first; only then is the plaintext written (atomically) and the key blocks
consumed. A tampered file, an unknown or already-used key ID or a truncated file is one
error line, exit status 1, and no output file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.host.crypto.imagecrypt import decrypt_file
from mozi.host.keys.keystore import KeyStore

HELP = "authenticate and decrypt a file made by mozi encrypt (output only if authentic)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi decrypt`` arguments to ``parser``."""
    parser.add_argument("input", type=Path, metavar="IN", help="ciphertext file")
    parser.add_argument("output", type=Path, metavar="OUT", help="plaintext file to write")
    parser.add_argument("--store", type=Path, required=True, metavar="PATH",
                        help="the receiver's key store (must exist)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``mozi decrypt``; returns the exit status."""
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
              f"({result.plaintext_bytes:,} bytes, {name}, {len(result.key_ids)} key block(s) "
              f"of link {result.link!r} consumed)")
    return 0
