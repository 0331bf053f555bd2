"""`halo-ref conformance`: every known halo attention, property by property, in one table."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from .._checks import HaloRefError
from ..verification.conformance import (
    IMPLEMENTATIONS,
    build_adapters,
    conformance_table,
    render_page,
    render_text,
)


def register(sub) -> None:
    p = sub.add_parser(
        "conformance",
        help="the conformance table: implementations x properties, pass / fail / n.a.",
        description="Runs halo_ref (numba), timm's HaloAttn, lucidrains' halonet-pytorch, kecam, "
        "FlexAttention and halo_ref's PyTorch example on one small configuration per property "
        "(borders, scale_pos_embed, both stride-2 variants, odd blocks, wide halos, maps that "
        "are not a multiple of the block, float64, every gradient) and prints pass with the "
        "worst error, FAIL, or n.a. with the reason. Exit status 1 if any cell fails. Needs "
        "torch, timm and the packages of `pip install -e '.[outside]'`.",
    )
    p.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated implementations (default all): {', '.join(IMPLEMENTATIONS)}",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--markdown", action="store_true", help="print the docs page (docs/conformance.md)"
    )
    out.add_argument(
        "--check",
        metavar="FILE",
        help="regenerate the page and compare it with FILE; exit 1 (with a diff) if they differ",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    names = args.only.split(",") if args.only else list(IMPLEMENTATIONS)
    if args.check and not Path(args.check).is_file():
        raise HaloRefError(f"--check {args.check}: no such file; write it with --markdown first")
    rows = conformance_table(build_adapters(names))
    failed = any(row.failed for row in rows)
    if args.check:
        page = render_page(rows)
        old = Path(args.check).read_text()
        if old == page:
            print(f"{args.check} matches the table")
            return 1 if failed else 0
        sys.stdout.writelines(
            difflib.unified_diff(
                old.splitlines(True), page.splitlines(True), args.check, "halo-ref conformance"
            )
        )
        print(f"\n{args.check} is out of date: halo-ref conformance --markdown > {args.check}")
        return 1
    print(render_page(rows) if args.markdown else render_text(rows), end="")
    return 1 if failed else 0
