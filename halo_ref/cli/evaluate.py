"""`halo-ref evaluate`: the test accuracy of a saved checkpoint."""

from __future__ import annotations

import sys

from .._checks import COUNT
from ..training.data import DATASETS_HELP
from ..training.evaluate import evaluate_checkpoint


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test accuracy of a checkpoint (checkpoint.npz or best.npz)",
        description="Loads a checkpoint written by `halo-ref train` and prints its loss and "
        "accuracy on the test split of its dataset (or of --dataset).",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint.npz or best.npz")
    p.add_argument("--dataset", help=f"{DATASETS_HELP} (default: the one it was trained on)")
    p.add_argument("--data-dir", help="where CIFAR-10 is (default ~/.cache/halo_ref)")
    p.add_argument("--threads", type=COUNT, help="threads for the Numba kernels (default: all)")
    p.add_argument("--batch-size", type=COUNT, default=256, help="images per batch (default 256)")
    p.add_argument(
        "--flip-average",
        action="store_true",
        help="score the mean of the logits of each image and of its left-right mirror (for "
        "models trained with --flip; twice the work)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    result = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_dir=args.data_dir,
        threads=args.threads,
        batch_size=args.batch_size,
        flip_average=args.flip_average,
    )
    if result["flip_averaged"] and not result["trained_with_flips"]:
        print(
            "note: this model was trained without --flip; its mirror images may not show the "
            "same class",
            file=sys.stderr,
        )
    how = ", flip-averaged" if result["flip_averaged"] else ""
    print(
        f"test accuracy: {100 * result['test_accuracy']:.2f}% "
        f"({result['correct']}/{result['images']}) loss {result['test_loss']:.4f} "
        f"[{result['dataset']}, {result['checkpoint']}, epoch {result['epoch']}{how}]"
    )
    return 0
