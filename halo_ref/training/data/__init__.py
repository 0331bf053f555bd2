"""Datasets for training: the bundled UCI digits, CIFAR-10, and the user's own `.npz` files.

Every loader returns a `Dataset` (`halo_ref.training.data.dataset`): uint8 images (N, H, W, C)
and integer labels (N,) for a train and a test split. Turning images into normalised float
batches, and augmenting them, is the job of `halo_ref.training.data.augment`; keeping the raw
uint8 images here keeps datasets small in memory.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

from ..._checks import HaloRefError
from .cifar10 import load_cifar10
from .dataset import Dataset
from .npz import load_npz
from .splits import split_validation

DATASETS_HELP = "digits (bundled, no network), cifar10, or npz:PATH"


def load_digits() -> Dataset:
    """The bundled UCI optical handwritten digits: 1,438 train and 359 test 8x8 images, 10 classes.

    Pixel values are the original counts 0..16 (see halo_ref/training/data/README.md for the source,
    licence and how the fixed, stratified split was made).
    """
    ref = resources.files("halo_ref.training.data").joinpath("digits.npz")
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(
        name="digits",
        x_train=arrays["x_train"][..., None],  # N, 8, 8, 1
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][..., None],
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
        class_names=[str(k) for k in range(10)],
        pixel_max=16,
    )


def default_data_dir() -> str:
    """The per-user cache folder for downloaded data: $HALO_REF_DATA, else ~/.cache/halo_ref."""
    env = os.environ.get("HALO_REF_DATA")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "halo_ref")


def dataset_kind(spec: str) -> str:
    """The source a `--dataset` value names: "digits", "cifar10" or "npz" (the recipe rule and
    the default output folder follow it); an unknown value is a one-line error."""
    if isinstance(spec, str):
        if spec in ("digits", "cifar10"):
            return spec
        if spec.startswith("npz:"):
            return "npz"
    raise HaloRefError(f"--dataset {spec!r} is not known; use {DATASETS_HELP}")


def load_dataset(spec: str, *, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Load a dataset by its command-line name: "digits", "cifar10" or "npz:PATH"."""
    if not isinstance(spec, str) or not spec:
        raise HaloRefError(f"--dataset must be one of {DATASETS_HELP}; got {spec!r}")
    if spec == "digits":
        return load_digits()
    if spec == "cifar10":
        return load_cifar10(data_dir or default_data_dir(), download=download)
    if spec.startswith("npz:"):
        return load_npz(spec[4:])
    raise HaloRefError(f"--dataset {spec!r} is not known; use {DATASETS_HELP}")


__all__ = [
    "DATASETS_HELP",
    "Dataset",
    "dataset_kind",
    "default_data_dir",
    "load_dataset",
    "load_digits",
    "split_validation",
]
