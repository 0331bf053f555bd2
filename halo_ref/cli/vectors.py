"""`halo-ref vectors`: write the golden vectors (inputs, weights, outputs, gradients) to a folder."""

from __future__ import annotations

import time

from .._checks import SEED
from ..verification.vectors import CONFIG_GRID, FORMATS, MANIFEST, PAD_GRID, write_vectors


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
    p.add_argument(
        "--format",
        choices=("npz", "safetensors", "both"),
        default="npz",
        help="npz (NumPy), safetensors (readers for Rust, C++, JavaScript...; needs the "
        "safetensors package) or both, same names, one manifest (default npz)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    formats = FORMATS if args.format == "both" else (args.format,)
    t0 = time.perf_counter()
    manifest = write_vectors(
        args.out, seed=args.seed, configs=CONFIG_GRID + PAD_GRID, formats=formats
    )
    per_dtype = [f for v in manifest["vectors"] for f in v["files"].values()]
    files = [f if fmt == "npz" else f[fmt] for f in per_dtype for fmt in formats]
    total = sum(f["bytes"] for f in files)
    print(
        f"wrote {len(files)} vector files ({len(manifest['vectors'])} configurations x "
        f"{len(per_dtype) // max(1, len(manifest['vectors']))} dtypes x {len(formats)} "
        f"format(s), {total / 1024:.0f} KiB) and {MANIFEST} to {args.out} in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(f"tolerances (max|error| / max|expected|): {manifest['tolerances']}")
    return 0
