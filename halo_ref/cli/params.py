"""`halo-ref params`: the paper's H0-H7 table with halo_ref's parameter counts beside it."""

from __future__ import annotations

from .._checks import check_choice
from ..models import CONFIGS, NAMES, PAPER_TABLE, count_params, halonet
from ..verification.adapters import kecam_param_counts


def register(sub) -> None:
    p = sub.add_parser(
        "params",
        help="print the H0-H7 table (paper, table 2) with halo_ref's parameter counts",
        description="Builds each of the paper's HaloNets H0-H7 with 1000 classes and prints the "
        "paper's configuration and parameter count beside halo_ref's count. Also lists the small "
        "models ('micro', 'tiny28', 'tiny', 'tiny64'), and kecam's counts of H0-H7 when torch and "
        "kecam are installed. See docs/models.md for the choices behind the counts.",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated subset, e.g. h0,h1 (default: all of h0..h7 and the small models)",
    )
    p.add_argument(
        "--markdown", action="store_true", help="print a Markdown table (as in docs/models.md)"
    )
    p.add_argument(
        "--no-kecam",
        action="store_true",
        help="leave out kecam's counts (shown when torch and kecam are installed)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    paper_names = [r[0] for r in PAPER_TABLE]
    small = [n for n in NAMES if n not in paper_names]
    names = args.models.split(",") if args.models else paper_names + small
    for n in names:
        check_choice(n, "--models entry", NAMES)
    paper = {r[0]: r for r in PAPER_TABLE}
    kecam = None if args.no_kecam else kecam_param_counts([n for n in names if n in paper])
    head = [
        "model",
        "b",
        "h",
        "rv",
        "rb",
        "l3",
        "df",
        "image",
        "paper",
        "halo_ref",
        "diff",
        "top-1",
    ] + (["kecam"] if kecam else [])
    rows = []
    for n in names:
        cfg = CONFIGS[n]
        classes = 1000 if n in paper else 10
        count = count_params(halonet(n, num_classes=classes))
        if n in paper:
            _, b, h, rv, rb, l3, df, image, params, top1 = paper[n]
            diff = f"{100 * (count / (params * 1e6) - 1):+.1f}%"
            rows.append(
                [n.upper(), b, h, rv, rb, l3, df or "-", image, f"{params}M", f"{count / 1e6:.2f}M"]
                + [diff, top1]
            )
            if kecam:  # equal counts are expected (docs/models.md): say when one is not
                rows[-1].append(
                    f"{kecam[n] / 1e6:.2f}M" + ("" if kecam[n] == count else " (differs)")
                )
        else:
            depths = "/".join(str(s.depth) for s in cfg.stages)
            rows.append(
                [n, "-", "-", "-", "-", depths, "-", cfg.image_size, "-", f"{count / 1e6:.3f}M"]
                + ["-", "-"]
                + (["-"] if kecam else [])
            )
    rows = [[str(c) for c in r] for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print(
        "\nparams: trainable scalars with a 1000-class head (10 for the small models); paper: "
        "table 2 of arXiv 2103.12731; diff: halo_ref relative to the paper's rounded count. For the small "
        "models the l3 column holds the stage depths."
        + (" kecam: keras-cv-attention-models' HaloNetH0..H7 (PyTorch backend)." if kecam else "")
    )
    return 0
