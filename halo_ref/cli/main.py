"""The `halo-ref` command line (also `python -m halo_ref`).

Each sub-command lives in its own module exposing `register(subparsers)`, which adds a parser
whose `func` default takes the parsed arguments and returns an exit status.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .._checks import HaloRefError, flag_names
from . import (
    conformance,
    demo,
    evaluate,
    exercises,
    export,
    params,
    predict,
    train,
    vectors,
    verify,
)

# one module per sub-command, in the order of `halo-ref --help`
COMMANDS = (demo, vectors, verify, conformance, train, evaluate, predict, export, params, exercises)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: a bad flag prints `halo-ref: error: ...` and
    where to read more, not the whole usage (train's usage alone is eight lines)."""

    def error(self, message):
        self.exit(2, f"halo-ref: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = Parser(
        prog="halo-ref",
        description="halo_ref: a NumPy + Numba reference implementation of HaloNet.",
    )
    parser.add_argument("--version", action="version", version=f"halo_ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv=None) -> int:
    """Run the CLI; errors in user input print one line and exit with status 2.

    Flags are checked as they are parsed (each numeric one by its `Number` rule); what only the
    work can check (folders, files, data) raises HaloRefError, whose messages name flags here.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a flag refused: already printed
        return int(exc.code or 0)
    try:
        with flag_names():
            return int(args.func(args) or 0)
    except HaloRefError as exc:
        print(f"halo-ref: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("halo-ref: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
