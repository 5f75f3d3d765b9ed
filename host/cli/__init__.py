"""The ``mozi`` command line.

Each subcommand lives in ``mozi.host.cli.commands.<name>`` and provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Errors derived from ``MoziError`` — and
``OSError`` from a file the user named that the system refuses — become one line on stderr and
exit status 1, bad arguments one line and exit status 2; ``--json`` output goes to stdout,
progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mozi.sim.errors import MoziError

COMMANDS = ("simulate", "link", "session", "node", "demo", "keys", "encrypt", "decrypt", "kms")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mozi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mozi.host.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mozi.host.cli.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MoziError as exc:
        print(f"mozi {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:          # a file the user named cannot be used (name too long, …)
        where = f" ({str(exc.filename)[:200]})" if exc.filename else ""
        print(f"mozi {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mozi {args.command}: interrupted", file=sys.stderr)
        return 130

