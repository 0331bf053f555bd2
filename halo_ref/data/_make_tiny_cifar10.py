"""Re-make the files the tutorials load: tiny_cifar10.npz (a trained model) and
cifar10_photos.npz (ten test photographs). One command, run from the repository root:

    python -m halo_ref.data._make_tiny_cifar10 --dataset npz:PATH/cifar10.npz --epochs 3

--dataset takes what `halo-ref train --dataset` takes (`cifar10` with --data-dir, or an
`npz:` file with x_train, y_train, x_test, y_test in the official split). The script

1. trains the current `tiny` model with `halo-ref train` (the CIFAR-10 recipe, --epochs, --seed,
   --threads; augmentation as the dataset's loader sets it) into --out, or, with --from-run DIR,
   takes a finished run's best.npz instead;
2. evaluates that checkpoint on the 10,000 test images, in float32 and with the weights rounded
   to float16 (the stored precision);
3. writes halo_ref/data/tiny_cifar10.npz: the weights as float16 ("model/<name>"), the position
   tables' initial values ("initial/<name>", float32) and "meta" (JSON: model, epochs, command,
   both accuracies, the normalisation statistics), and halo_ref/data/cifar10_photos.npz: the first
   test image of each class;
4. prints the numbers to copy into halo_ref/data/README.md (a test checks that the README states
   the accuracy stored in the file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys

import numpy as np

from .._atomic import atomic_write
from ..cli.main import main as cli_main
from ..models import halonet
from ..training.checkpoint import load_checkpoint
from ..training.data import load_dataset
from ..training.data.cifar10 import CLASS_NAMES
from ..training.evaluate import Batcher, evaluate
from . import CHECKPOINT, PHOTOS


def _accuracy(model, meta, data):
    batcher = Batcher(meta["mean"], meta["std"], meta["input_multiple"], np.float32)
    return evaluate(model, batcher, data.x_test, data.y_test)[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halo_ref.data._make_tiny_cifar10")
    parser.add_argument("--dataset", required=True, help="cifar10 or npz:PATH (official split)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/tiny_cifar10")
    parser.add_argument("--from-run", default=None, help="use DIR/best.npz instead of training")
    args = parser.parse_args(argv)

    run_dir = args.from_run or args.out
    train_argv = ["train", "--dataset", args.dataset, "--model", "tiny", "--epochs",
                  str(args.epochs), "--seed", str(args.seed), "--out", args.out, "--no-progress"]  # fmt: skip
    if args.data_dir:
        train_argv += ["--data-dir", args.data_dir]
    if args.threads:
        train_argv += ["--threads", str(args.threads)]
    if args.from_run is None and cli_main(train_argv) != 0:
        return 1
    state, _, meta, _ = load_checkpoint(os.path.join(run_dir, "best.npz"))
    cfg = meta["config"]
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    class_names = data.class_names or list(CLASS_NAMES)  # an npz file has none: CIFAR-10's order
    model = halonet(cfg["model"], num_classes=meta["num_classes"], in_chans=3, rng=cfg["seed"])
    initial = {k: v.copy() for k, v in model.state_dict().items() if "pos_embed" in k}
    model.load_state_dict(state)
    acc32 = _accuracy(model, meta, data)
    half = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in state.items()}
    model.load_state_dict({k: v.astype(state[k].dtype) for k, v in half.items()})
    acc16 = _accuracy(model, meta, data)

    # the training run as one command (for --from-run: the command equivalent to its config)
    command = " ".join(["halo-ref", "train", "--dataset", shlex.quote(cfg["dataset"]), "--model",
                        cfg["model"], "--epochs", str(cfg["epochs"]), "--batch-size",
                        str(cfg["batch_size"]), "--lr", str(cfg["lr"]), "--optimizer",
                        cfg["optimizer"], "--weight-decay", str(cfg["weight_decay"]),
                        "--warmup-epochs", str(cfg["warmup_epochs"]), "--label-smoothing",
                        str(cfg["label_smoothing"]), "--seed", str(cfg["seed"])])  # fmt: skip
    info = {
        "model": cfg["model"],
        "num_classes": meta["num_classes"],
        "epochs": cfg["epochs"],
        "best_epoch": meta["epoch"],
        "recipe": {
            k: cfg[k]
            for k in (
                "batch_size",
                "lr",
                "optimizer",
                "weight_decay",
                "warmup_epochs",
                "label_smoothing",
                "seed",
            )
        },  # fmt: skip
        "command": command,
        "test_accuracy_float32": acc32,
        "test_accuracy_float16": acc16,
        "mean": meta["mean"],
        "std": meta["std"],
        "input_multiple": meta["input_multiple"],
        "class_names": class_names,
        "made": datetime.date.today().isoformat(),
    }
    arrays = {f"model/{k}": v for k, v in half.items()}
    arrays.update({f"initial/{k}": v for k, v in initial.items()})
    arrays["meta"] = np.array(json.dumps(info))
    atomic_write(CHECKPOINT, lambda f: np.savez_compressed(f, **arrays))

    first = [int(np.flatnonzero(data.y_test == k)[0]) for k in range(len(class_names))]
    photos = dict(images=data.x_test[first], labels=data.y_test[first].astype(np.int64),
                  test_index=np.array(first), class_names=np.array(class_names))  # fmt: skip
    atomic_write(PHOTOS, lambda f: np.savez_compressed(f, **photos))
    print(json.dumps({k: v for k, v in info.items() if k not in ("mean", "std")}, indent=1))
    print(f"wrote {CHECKPOINT} ({os.path.getsize(CHECKPOINT):,} bytes) and {PHOTOS}")
    print(f"update halo_ref/data/README.md: test accuracy {100 * acc16:.2f}% (float16 weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
