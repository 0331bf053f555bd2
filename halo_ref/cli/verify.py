"""`halo-ref verify`: run the golden vectors through another implementation, print a table."""

from __future__ import annotations

from .._checks import Number
from ..verification.adapters import resolve_adapter
from ..verification.vectors import CONFIG_GRID, DTYPES, PAD_GRID, generate_vectors, load_vectors
from ..verification.verify import verify


def register(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check another halo attention implementation against the golden vectors",
        description="Runs every golden vector through an implementation and prints a pass/fail "
        "table per configuration with the errors of the output, dx and the weight gradients. "
        "Exit status 0 iff every applicable vector passes (configurations the implementation "
        "does not have, such as border='mask' for timm, are marked n/a).",
    )
    p.add_argument(
        "--against",
        required=True,
        metavar="IMPL",
        help="timm (timm's HaloAttn), lucidrains (halonet-pytorch), kecam (keras-cv-attention-"
        "models on PyTorch), flex or flex:backward (FlexAttention), torch (halo_ref's PyTorch "
        "example), torch:<planted bug>, or module:name for your own adapter "
        "(see docs/verification.md)",
    )
    p.add_argument(
        "--vectors",
        metavar="DIR",
        help="a folder written by `halo-ref vectors` (default: generate the vectors in memory)",
    )
    p.add_argument(
        "--dtype",
        choices=("float64", "float32", "all"),
        default="all",
        help="which copies of the vectors to run (default all)",
    )
    p.add_argument(
        "--details",
        type=Number(integer=True, ge=0),
        default=3,
        metavar="N",
        help="show the worst entries of the first N failing vectors (default 3)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    dtypes = DTYPES if args.dtype == "all" else (args.dtype,)
    adapter = resolve_adapter(args.against)
    if args.vectors:
        vectors = load_vectors(args.vectors, dtypes=dtypes)
    else:
        vectors = generate_vectors(dtypes=dtypes, configs=CONFIG_GRID + PAD_GRID)
    report = verify(adapter, vectors)
    print(report.render(details=args.details))
    return 0 if report.passed else 1
