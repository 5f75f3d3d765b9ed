"""``mozi encrypt``: encrypt a file (an image) with QKD key from a key store.

``--mode otp`` is a one-time pad with a one-time MAC (refused when the link has too little
key), ``--mode aes-gcm`` AES-256-GCM under one 256-bit QKD key, ``--mode auto`` (default) the
one-time pad when the key suffices. The key blocks used are consumed; the output is written
atomically. See :mod:`mozi.host.crypto.imagecrypt` for the format.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.host.crypto.imagecrypt import encrypt_file
from mozi.host.keys.keystore import KeyStore

HELP = "encrypt a file with QKD key: one-time pad + one-time MAC, or AES-256-GCM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi encrypt`` arguments to ``parser``."""
    parser.add_argument("input", type=Path, metavar="IN", help="file to encrypt")
    parser.add_argument("output", type=Path, metavar="OUT", help="ciphertext file to write")
    parser.add_argument("--store", type=Path, required=True, metavar="PATH",
                        help="the sender's key store (must exist)")
    parser.add_argument("--link", required=True, help="link whose key to use")
    parser.add_argument("--mode", choices=("auto", "otp", "aes-gcm"), default="auto",
                        help="auto (default): one-time pad if the link has enough key, "
                             "else AES-256-GCM")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``mozi encrypt``; returns the exit status."""
    with KeyStore(args.store, create=False) as store:
        result = encrypt_file(args.input, args.output, store, link=args.link, mode=args.mode)
    if args.json:
        doc = {"input": str(args.input), "output": str(args.output), **result.to_dict()}
        json.dump(doc, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        name = "one-time pad" if result.mode == "otp" else "AES-256-GCM"
        print(f"encrypted {args.input} ({result.plaintext_bytes:,} bytes) -> {args.output} "
              f"with {name}; used {result.key_bits_used:,} key bits, consumed "
              f"{len(result.key_ids)} block(s) ({result.key_bits_consumed:,} bits) of link "
              f"{result.link!r}")
    return 0
