"""Evaluation: a model's loss and accuracy on the test images, and a saved checkpoint's.

`Batcher` turns the stored uint8 images into the model's input (normalised with the training
set's statistics, zero-padded to the model's input multiple), the same way in training and
evaluation.
"""

from __future__ import annotations

import os

import numpy as np

from .._checks import COUNT, HaloRefError, arg
from ..models import halonet
from ..nn.functional import cross_entropy_forward
from .checkpoint import load_checkpoint
from .config import set_threads
from .data import dataset_kind, load_dataset
from .data.augment import normalise, pad_to_multiple


class Batcher:
    """Turns uint8 images into normalised, padded float batches for one model."""

    def __init__(self, mean, std, multiple: int, dtype) -> None:
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.multiple, self.dtype = multiple, np.dtype(dtype)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images: (B, H, W, C) uint8 -> (B, C, H', W') float, H' and W' multiples of the model's."""
        x = normalise(images, self.mean, self.std, self.dtype)  # B, C, H, W
        return pad_to_multiple(x, self.multiple)[0]


def evaluate(
    model, batcher: Batcher, images, labels, *, loss_fns=None, batch_size=256, flip_average=False
):
    """Mean cross-entropy and accuracy of `model` (in eval mode) on uint8 images (N, H, W, C).

    flip_average: score the mean of the logits of each image and of its left-right mirror (a
    test-time augmentation for models trained with flips; twice the work).
    """
    COUNT.check(batch_size, "batch_size")
    fwd = loss_fns[0] if loss_fns else cross_entropy_forward
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]  # B, H, W, C
            logits = model.forward(batcher(chunk))
            if flip_average:  # mirror before padding, so the padding stays where training had it
                logits = 0.5 * (logits + model.forward(batcher(chunk[:, :, ::-1])))
            y = labels[i : i + batch_size]
            loss, _ = fwd(logits, y)
            total_loss += float(loss) * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
    finally:
        model.train()
    n = len(images)
    return total_loss / n, correct / n


def _folder_options(spec: str, cfg: dict, saved_hwc) -> dict:
    """How to read a folder: dataset to score a checkpoint: as its run read it, or, for another
    folder, at the size the model was trained on."""
    if dataset_kind(spec) != "folder":
        return {}
    if spec == cfg["dataset"]:
        keys = ("image_size", "test_split", "skip_bad_images")
        return {k: cfg[k] for k in keys if cfg.get(k) is not None}
    H, W, _ = saved_hwc
    return {"image_size": H} if H == W else {}


def evaluate_checkpoint(
    path: str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    threads: int | None = None,
    batch_size: int = 256,
    flip_average: bool = False,
    model_factory=None,
    loss_fns=None,
) -> dict:
    """Test loss and accuracy of the model saved in checkpoint `path`.

    The images are normalised with the training statistics stored in the checkpoint. `dataset`
    defaults to the one the checkpoint was trained on; another must have the same image size.
    flip_average: as in `evaluate`.
    """
    COUNT.check(batch_size, "batch_size")
    if threads is not None:
        COUNT.check(threads, "threads")
    if os.path.isdir(path):  # the run's folder given for one of its files
        named = arg("path", path, flag="checkpoint")
        inside = [
            n for n in ("best.npz", "checkpoint.npz") if os.path.isfile(os.path.join(path, n))
        ]
        fix = (
            f"pass a file inside it, e.g. {arg('path', os.path.join(path, inside[0]), flag='checkpoint')}"
            if inside else "it holds no best.npz or checkpoint.npz"
        )  # fmt: skip
        raise HaloRefError(f"{named} is a folder, not a checkpoint file; {fix}")
    model_state, _, meta, _ = load_checkpoint(path)
    cfg = meta["config"]
    set_threads(threads)
    spec = dataset or cfg["dataset"]
    saved_hwc = list(meta["dataset_shape"][1:])
    data = load_dataset(spec, data_dir=data_dir or cfg.get("data_dir"),
                        **_folder_options(spec, cfg, saved_hwc))  # fmt: skip
    if list(data.image_shape) != saved_hwc:
        raise HaloRefError(
            f"{path} was trained on {saved_hwc} (H, W, C) images but --dataset {spec} has "
            f"{list(data.image_shape)}"
        )
    if data.num_classes > meta["num_classes"]:
        raise HaloRefError(
            f"--dataset {spec} has {data.num_classes} classes but the model in {path} predicts "
            f"{meta['num_classes']}"
        )
    dtype = np.dtype(cfg["dtype"])
    model = (model_factory or halonet)(
        cfg["model"], num_classes=meta["num_classes"], in_chans=saved_hwc[2], dtype=dtype, rng=0
    )
    model.load_state_dict(model_state)
    batcher = Batcher(meta["mean"], meta["std"], meta["input_multiple"], dtype)
    loss, acc = evaluate(model, batcher, data.x_test, data.y_test, loss_fns=loss_fns,
                         batch_size=batch_size, flip_average=flip_average)  # fmt: skip
    n = len(data.x_test)
    return {
        "flip_averaged": bool(flip_average),
        "trained_with_flips": bool(cfg.get("flip")),
        "test_loss": loss,
        "test_accuracy": acc,
        "correct": round(acc * n),
        "images": n,
        "dataset": spec,
        "checkpoint": path,
        "epoch": meta["epoch"],
    }
