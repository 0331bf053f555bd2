"""`halo-ref train`: train a HaloNet on the bundled digits, CIFAR-10 or your own .npz file."""

from __future__ import annotations

import argparse
import os
import sys

from ..models import NAMES as MODELS
from ..training.config import DTYPES, OPTIMIZERS, RULES, TrainConfig, default_out
from ..training.data import DATASETS_HELP
from ..training.loop import train
from ..training.recipes import RECIPES


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a HaloNet (bundled digits by default: no network needed)",
        description="Trains a HaloNet with a progress bar per epoch and writes metrics.jsonl, "
        "checkpoint.npz, best.npz, curves.png and summary.json into --out. Options left unset "
        "take the run's recipe: the dataset's own (digits: model micro, 20 epochs; cifar10: "
        "model tiny, 25 epochs), or for your own images the one for their size (up to 16 px: "
        "micro; 17-28 px: tiny28; 29-32 px: tiny; larger: tiny64); the first line of the run "
        "says which and why. A run killed at any moment continues with --resume and ends with "
        "the same parameters as an uninterrupted run.",
    )
    p.add_argument("--dataset", default="digits", help=f"{DATASETS_HELP} (default digits)")
    p.add_argument(
        "--recipe", choices=tuple(RECIPES),
        help="train with this recipe instead of the one the dataset or its image size picks",
    )  # fmt: skip
    p.add_argument("--model", choices=MODELS, help="(default: recipe)")
    p.add_argument("--epochs", type=RULES["epochs"], help="number of epochs (default: recipe)")
    p.add_argument(
        "--batch-size", type=RULES["batch_size"], help="images per step (default: recipe)"
    )
    p.add_argument("--lr", type=RULES["lr"], help="peak learning rate (default: recipe)")
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS,
        help="adamw, sgd with momentum, or sgd with nesterov momentum (default: recipe)",
    )  # fmt: skip
    p.add_argument(
        "--momentum", type=RULES["momentum"], default=0.9, help="SGD momentum (default 0.9)"
    )
    p.add_argument(
        "--weight-decay", type=RULES["weight_decay"], help="weight decay (default: recipe)"
    )
    p.add_argument(
        "--warmup-epochs",
        type=RULES["warmup_epochs"],
        help="linear warm-up length (default: recipe)",
    )
    p.add_argument(
        "--label-smoothing", type=RULES["label_smoothing"], help="label smoothing (default: recipe)"
    )
    p.add_argument(
        "--clip-grad", type=RULES["clip_grad"], default=5.0,
        help="max global gradient norm, 0: off (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--crop-pad", type=RULES["crop_pad"], metavar="PIXELS",
        help="random crops of the image zero-padded by PIXELS, 0: off (default: recipe; digits "
        "1, cifar10 4, your own images about an eighth of their side)",
    )  # fmt: skip
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction,
        help="random horizontal mirroring (default: recipe; on for cifar10 only: give --flip "
        "when a mirrored image of yours shows the same class)",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=RULES["image_size"], metavar="S",
        help="folder: datasets: bring every image to S x S (scaled to cover it, then "
        "centre-cropped); default: keep the images' size when they all share one, else the "
        "median shorter side, at most 64",
    )  # fmt: skip
    p.add_argument(
        "--test-split", type=RULES["test_split"], metavar="FRACTION",
        help="folder: datasets without a test/ folder: hold out this fraction of each class "
        "as the test set (default 0.2)",
    )  # fmt: skip
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="folder: datasets: leave out (and count) files Pillow cannot read, empty class "
        "folders and test classes missing from train/, instead of stopping",
    )
    p.add_argument(
        "--val-split", type=RULES["val_split"], default=0.0, metavar="FRACTION",
        help="hold out this fraction of the training images (stratified, the same for every "
        "seed) and evaluate on it instead of the test set, which the run then never touches: "
        "for tuning a recipe (default 0: evaluate on the test set)",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=RULES["seed"], default=0, help="seed of weights, order, augmentation"
    )
    p.add_argument(
        "--threads",
        type=RULES["threads"],
        help="threads for the Numba kernels (default: all cores); BLAS runs single-threaded "
        "inside them; idle threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="default float32")
    p.add_argument("--out", help="output folder (default runs/<dataset>)")
    p.add_argument(
        "--data-dir",
        help="where CIFAR-10 is and decoded folders are cached (default ~/.cache/halo_ref)",
    )
    p.add_argument("--download", action="store_true", help="download CIFAR-10 if it is missing")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument(
        "--checkpoint-every", type=RULES["checkpoint_every"], default=0, metavar="STEPS",
        help="also save every STEPS steps within an epoch (default: every 5 minutes)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = TrainConfig(
        dataset=args.dataset,
        recipe=args.recipe,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad,
        crop_pad=args.crop_pad,
        flip=args.flip,
        val_split=args.val_split,
        image_size=args.image_size,
        test_split=args.test_split,
        skip_bad_images=args.skip_bad_images,
        seed=args.seed,
        threads=args.threads,
        dtype=args.dtype,
        out=args.out,
        data_dir=args.data_dir,
        download=args.download,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    try:
        train(cfg, progress=not args.no_progress)
    except KeyboardInterrupt:
        out = cfg.out if cfg.out is not None else default_out(cfg)
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            print(
                f"halo-ref: interrupted; the last checkpoint in {out} is kept: run the same "
                "command with --resume to continue",
                file=sys.stderr,
            )
        else:
            print(
                "halo-ref: interrupted before the first step; nothing was written", file=sys.stderr
            )
        return 130
    return 0
