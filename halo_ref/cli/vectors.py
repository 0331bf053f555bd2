"""`halo-ref vectors`: write the golden vectors (inputs, weights, outputs, gradients) to a folder."""

from __future__ import annotations

import time

from .._checks import SEED
from ..verification.vectors import MANIFEST, write_vectors


def register(sub) -> None:
    p = sub.add_parser(
        "vectors",
        help="write golden test vectors (.npz + manifest.json) for other implementations",
        description="Writes one .npz per configuration of the documented grid, in float64 and "
        "float32, with the input, the weights under timm's names, the output, an upstream "
        "gradient and every gradient, plus manifest.json (configurations, shapes, SHA-256, "
        "tolerances). The same seed gives the same files byte for byte. Format: "
        "docs/verification.md.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    t0 = time.perf_counter()
    manifest = write_vectors(args.out, seed=args.seed)
    files = [f for v in manifest["vectors"] for f in v["files"].values()]
    total = sum(f["bytes"] for f in files)
    print(
        f"wrote {len(files)} vector files ({len(manifest['vectors'])} configurations x "
        f"{len(files) // max(1, len(manifest['vectors']))} dtypes, {total / 1024:.0f} KiB) and "
        f"{MANIFEST} to {args.out} in {time.perf_counter() - t0:.1f} s"
    )
    print(f"tolerances (max|error| / max|expected|): {manifest['tolerances']}")
    return 0
