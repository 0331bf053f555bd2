"""User datasets from an `.npz` file: `x_train`, `y_train`, `x_test`, `y_test`.

Images are uint8, (N, H, W) for grey or (N, H, W, C) for C channels; labels are integers in
[0, K). K is `num_classes` when the file has that key, else the largest label plus one. An
optional `class_names` (K strings, e.g. np.array(["cat", "dog"])) names the classes in the
checkpoint and in `halo-ref predict`; without it they are "0".."K-1". Every problem is reported
in one line naming the key and the fix, before any training starts.
"""

from __future__ import annotations

import os

import numpy as np

from ..._checks import HaloRefError, read_npz
from .dataset import Dataset

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _check_images(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise HaloRefError(
            f"{where}: {key} has dtype {x.dtype}; images must be uint8 in 0..255 "
            f"(rescale and cast with (x * 255).round().astype(np.uint8) if they are floats in 0..1)"
        )
    if x.ndim == 3:
        x = x[..., None]  # N, H, W, 1
    if x.ndim != 4 or x.shape[-1] not in (1, 2, 3, 4):
        raise HaloRefError(
            f"{where}: {key} has shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C <= 4 "
            "(channels last)"
        )
    if x.shape[0] == 0:
        raise HaloRefError(f"{where}: {key} holds no images")
    return x


def _check_labels(y: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise HaloRefError(
            f"{where}: {key} has dtype {y.dtype}; labels must be integers (cast with "
            f"{key}.astype(np.int64) if they are whole numbers)"
        )
    if y.ndim != 1:
        raise HaloRefError(f"{where}: {key} has shape {y.shape}; expected one label per image (N,)")
    if len(y) != n:
        x_key = "x_" + key[2:]
        raise HaloRefError(
            f"{where}: {key} has {len(y)} labels but {x_key} has {n} images; they must match"
        )
    return y.astype(np.int64)


def load_npz(path: str) -> Dataset:
    """Load and validate a user dataset (see the module docstring for the format)."""
    where = f"--dataset npz:{path}"
    save = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    found = read_npz(
        path,
        missing=f"{where}: no such file",
        not_npz=f"{where}: not an .npz file; save one with {save}",
        unreadable=f"{where}: cannot read it as an .npz file ({{error}})",
    )
    missing = [k for k in REQUIRED if k not in found]
    if missing:
        raise HaloRefError(
            f"{where}: missing key(s) {missing} (found {sorted(found)}); save with {save}"
        )
    arrays = {k: found[k] for k in REQUIRED}
    num_classes = int(found["num_classes"]) if "num_classes" in found else None
    x_train = _check_images(arrays["x_train"], "x_train", where)
    x_test = _check_images(arrays["x_test"], "x_test", where)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise HaloRefError(
            f"{where}: train images are {x_train.shape[1:]} (H, W, C) but test images are "
            f"{x_test.shape[1:]}; both splits must have the same size"
        )
    y_train = _check_labels(arrays["y_train"], "y_train", len(x_train), where)
    y_test = _check_labels(arrays["y_test"], "y_test", len(x_test), where)
    top = int(max(y_train.max(), y_test.max()))
    k = num_classes if num_classes is not None else top + 1
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        bad = (y < 0) | (y >= k)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise HaloRefError(
                f"{where}: {key}[{i}] = {int(y[i])} is out of range; labels must be in "
                f"[0, {k}) (0-based class indices)"
            )
    names = [str(i) for i in range(k)]
    if "class_names" in found:
        given = found["class_names"]
        if given.dtype.kind != "U" or given.shape != (k,):
            raise HaloRefError(
                f"{where}: class_names has dtype {given.dtype} and shape {given.shape}; expected "
                f"{k} strings, one per class (np.array(['name 0', 'name 1', ...]))"
            )
        names = [str(n) for n in given]
    return Dataset(
        name=os.path.basename(path),
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_classes=k,
        class_names=names,
    )
