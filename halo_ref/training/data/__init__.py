"""Datasets for training: the bundled UCI digits, CIFAR-10, and the user's own images (an
`.npz` file, or a folder of class folders).

Every loader returns a `Dataset` (`halo_ref.training.data.dataset`): uint8 images (N, H, W, C)
and integer labels (N,) for a train and a test split. Turning images into normalised float
batches, and augmenting them, is the job of `halo_ref.training.data.augment`; keeping the raw
uint8 images here keeps datasets small in memory.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

from ..._checks import HaloRefError, arg
from .cifar10 import load_cifar10
from .dataset import Dataset
from .folder import load_folder
from .npz import load_npz
from .splits import split_validation

DATASETS_HELP = (
    "digits (bundled, no network), cifar10, npz:PATH, or folder:PATH (a folder of class "
    "folders, or a .tar/.tar.gz/.zip of one)"
)


def load_digits() -> Dataset:
    """The bundled UCI optical handwritten digits: 1,438 train and 359 test 8x8 images, 10 classes.

    Pixel values are the original counts 0..16 (see halo_ref/data/README.md for the source,
    licence and how the fixed, stratified split was made).
    """
    ref = resources.files("halo_ref").joinpath("data", "digits.npz")
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
    """The source a `--dataset` value names: "digits", "cifar10", "npz" or "folder" (the recipe
    rule and the default output folder follow it); an unknown value is a one-line error."""
    if isinstance(spec, str):
        if spec in ("digits", "cifar10"):
            return spec
        for kind in ("npz", "folder"):
            if spec.startswith(kind + ":") and len(spec) > len(kind) + 1:
                return kind
    raise HaloRefError(f"--dataset {spec!r} is not known; use {DATASETS_HELP}")


def load_dataset(
    spec: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    test_split: float | None = None,
    skip_bad_images: bool = False,
    cache: bool = True,
    progress: bool = False,
) -> Dataset:
    """Load a dataset by its command-line name: "digits", "cifar10", "npz:PATH" or
    "folder:PATH". data_dir: where CIFAR-10 is downloaded and decoded folders are cached
    (default `default_data_dir()`); image_size, test_split, skip_bad_images, cache: the folder
    loader's options (`halo_ref.training.data.folder.load_folder`)."""
    kind = dataset_kind(spec)
    if kind != "folder":
        for name, value in (("image_size", image_size), ("test_split", test_split),
                            ("skip_bad_images", skip_bad_images or None)):  # fmt: skip
            if value is not None:
                raise HaloRefError(
                    f"{arg(name, value)} applies to folder: datasets only; drop it for {spec}"
                )
    if kind == "digits":
        return load_digits()
    if kind == "cifar10":
        return load_cifar10(data_dir or default_data_dir(), download=download)
    if kind == "npz":
        return load_npz(spec[4:])
    cache_dir = os.path.join(data_dir or default_data_dir(), "folders") if cache else None
    return load_folder(spec[7:], image_size=image_size, test_split=test_split,
                       skip_bad_images=skip_bad_images, cache_dir=cache_dir, progress=progress)  # fmt: skip


__all__ = [
    "DATASETS_HELP",
    "Dataset",
    "dataset_kind",
    "default_data_dir",
    "load_dataset",
    "load_digits",
    "split_validation",
]
