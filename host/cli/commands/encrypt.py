"""``mozi encrypt``: encrypt a file (an image) with QKD key from a key store.

``--mode otp`` is a one-time pad with a one-time MAC (refused when the link has too little
key), ``--mode aes-gcm`` AES-256-GCM under one 256-bit QKD key, ``--mode auto`` (default) the
one-time pad when the key suffices. The key blocks used are consumed; the output is written
atomically. See :mod:`mozi.host.crypto.imagecrypt` for the format.

With ``--kms URL --certs DIR --sae SAE_ID --slave SAE_ID`` instead of ``--store``/``--link``
the keys come from the master SAE's KME by ETSI GS QKD 014 ``enc_keys``, and the file names
their key IDs for ``mozi decrypt --kms`` at the slave's KME.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mozi.host.cli.commands.kms import UsageError, add_kms_arguments, kme_client
from mozi.host.crypto.imagecrypt import encrypt_file, encrypt_file_kms
from mozi.host.keys.keystore import KeyStore

HELP = "encrypt a file with QKD key: one-time pad + one-time MAC, or AES-256-GCM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mozi encrypt`` arguments to ``parser``."""
    parser.add_argument("input", type=Path, metavar="IN", help="file to encrypt")
    parser.add_argument("output", type=Path, metavar="OUT", help="ciphertext file to write")
    parser.add_argument("--store", type=Path, metavar="PATH",
                        help="the sender's key store (must exist)")
    parser.add_argument("--link", help="link whose key to use (with --store)")
    add_kms_arguments(parser)
    parser.add_argument("--slave", metavar="SAE_ID",
                        help="with --kms: the SAE that will decrypt the file")
    parser.add_argument("--mode", choices=("auto", "otp", "aes-gcm"), default="auto",
                        help="auto (default): one-time pad if the link has enough key, "
                             "else AES-256-GCM")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``mozi encrypt``; returns the exit status."""
    if args.kms:
        if not args.slave or args.store or args.link:
            raise UsageError("--kms needs --slave (and no --store or --link)")
        with kme_client(args) as kme:
            result = encrypt_file_kms(args.input, args.output, kme, slave=args.slave,
                                      mode=args.mode)
    else:
        if not args.store or not args.link:
            raise UsageError("give --store and --link, or --kms with --certs, --sae, --slave")
        with KeyStore(args.store, create=False) as store:
            result = encrypt_file(args.input, args.output, store, link=args.link,
                                  mode=args.mode)
    if args.json:
        doc = {"input": str(args.input), "output": str(args.output), **result.to_dict()}
        json.dump(doc, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        name = "one-time pad" if result.mode == "otp" else "AES-256-GCM"
        print(f"encrypted {args.input} ({result.plaintext_bytes:,} bytes) -> {args.output} "
              f"with {name}; used {result.key_bits_used:,} key bits, consumed "
              f"{len(result.key_ids)} {'KME key(s)' if args.kms else 'block(s)'} "
              f"({result.key_bits_consumed:,} bits) {'for' if args.kms else 'of link'} "
              f"{result.link!r}")
    return 0
