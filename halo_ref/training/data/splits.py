"""Held-out splits carved from labelled images: stratified, and the same for every run.

`--val-split F` holds out a fraction F of the training images to evaluate on while a recipe is
tuned, so that the test set is looked at once, at the end; a folder with no `test/` holds out
its test images the same way (`--test-split`). From each class, round(F x its count) images are
drawn without replacement by a generator with a fixed seed (not the run's `--seed`): every run
and every seed tuned on a split sees the same images, and a resumed run finds the split it
started with. Both parts keep the images' original order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..._checks import HaloRefError
from .dataset import Dataset

# Fixed seeds: the held-out images must not change with --seed. (With 0.1 on CIFAR-10's
# training images, VAL_SPLIT_SEED gives the 45,000 / 5,000 split the tiny recipe was tuned on.)
VAL_SPLIT_SEED = 20240
TEST_SPLIT_SEED = 20241


def stratified_holdout(labels: np.ndarray, num_classes: int, fraction: float, seed: int):
    """A boolean mask (N,) over `labels` (N,) marking round(fraction x count) images of each
    class, drawn by a generator seeded with `seed`, classes in order 0..num_classes-1."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)  # this class's images, in their order
        held[rng.choice(idx, round(fraction * len(idx)), replace=False)] = True
    return held


def _check_fraction(fraction: float, flag: str) -> None:
    if not 0 < fraction < 1:
        raise HaloRefError(f"{flag} must be a fraction in (0, 1), e.g. 0.1; got {fraction}")


def _split(x, y, num_classes, fraction, seed, flag, what):
    held = stratified_holdout(y, num_classes, fraction, seed)
    if held.all() or not held.any():
        raise HaloRefError(
            f"{flag} {fraction} leaves {int((~held).sum())} training and {int(held.sum())} "
            f"{what} images of {len(held)}; choose a fraction that keeps both"
        )
    return (x[~held], y[~held]), (x[held], y[held])


def split_validation(data: Dataset, fraction: float) -> Dataset:
    """The dataset with `fraction` of its training images held out as the evaluation split.

    The returned Dataset's train split is the rest and its evaluation split (`x_test`,
    `y_test`, `eval_split` "val") the held-out images: the real test images are not in it.
    """
    _check_fraction(fraction, "--val-split")
    (xt, yt), (xv, yv) = _split(data.x_train, data.y_train, data.num_classes, fraction,
                                VAL_SPLIT_SEED, "--val-split", "validation")  # fmt: skip
    return dataclasses.replace(data, x_train=xt, y_train=yt, x_test=xv, y_test=yv,
                               eval_split="val")  # fmt: skip


def split_test(x: np.ndarray, y: np.ndarray, num_classes: int, fraction: float):
    """((x_train, y_train), (x_test, y_test)): `fraction` of the images held out as a test set,
    stratified, with `TEST_SPLIT_SEED`."""
    _check_fraction(fraction, "--test-split")
    return _split(x, y, num_classes, fraction, TEST_SPLIT_SEED, "--test-split", "test")
