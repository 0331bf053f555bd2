"""halo_ref.training.data.splits: held-out splits are stratified, disjoint and fixed."""

from __future__ import annotations

import numpy as np
import pytest

from halo_ref import HaloRefError
from halo_ref.training.data import Dataset
from halo_ref.training.data.splits import (
    VAL_SPLIT_SEED,
    split_test,
    split_validation,
    stratified_holdout,
)


def _toy():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [40, 20, 60])  # unequal classes
    rng.shuffle(y)
    x = np.arange(len(y), dtype=np.uint8).reshape(-1, 1, 1, 1)  # each image's pixel: its index
    test = np.zeros((5, 1, 1, 1), np.uint8)
    return Dataset("toy", x, y, test, np.zeros(5, np.int64), num_classes=3, class_names=list("abc"))


def test_validation_split_is_stratified_disjoint_in_order_and_the_same_every_time():
    data = _toy()
    a, b = split_validation(data, 0.25), split_validation(data, 0.25)
    assert np.array_equal(a.x_test, b.x_test) and a.eval_split == "val"
    held, kept = a.x_test.ravel(), a.x_train.ravel()
    assert np.bincount(a.y_test, minlength=3).tolist() == [10, 5, 15]  # 25% of each class
    assert len(np.intersect1d(held, kept)) == 0 and len(held) + len(kept) == len(data.y_train)
    assert np.array_equal(data.y_train[held], a.y_test)
    assert np.array_equal(data.y_train[kept], a.y_train)
    assert (np.diff(held.astype(int)) > 0).all()  # original order kept
    assert a.class_names == list("abc") and data.eval_split == "test"  # the input is unchanged


def test_the_validation_draw_is_one_choice_per_class_with_the_fixed_seed():
    """The same draw as the script that carved CIFAR-10's 45,000 / 5,000 tuning split: per
    class in label order, rng.choice(indices, round(fraction x count)) with seed 20240."""
    y = np.repeat(np.arange(4), 50)
    rng = np.random.default_rng(VAL_SPLIT_SEED)
    expected = np.concatenate([rng.choice(np.flatnonzero(y == k), 5, replace=False)
                               for k in range(4)])  # fmt: skip
    assert np.array_equal(np.flatnonzero(stratified_holdout(y, 4, 0.1, VAL_SPLIT_SEED)),
                          np.sort(expected))  # fmt: skip


def test_test_split_uses_its_own_seed():
    y = np.repeat(np.arange(2), 50)
    x = np.arange(100, dtype=np.uint8)
    (_, _), (x_test, y_test) = split_test(x, y, 2, 0.2)
    assert np.bincount(y_test).tolist() == [10, 10]
    assert not np.array_equal(x_test, x[stratified_holdout(y, 2, 0.2, VAL_SPLIT_SEED)])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_a_fraction_outside_zero_one_is_a_one_line_error(fraction):
    with pytest.raises(HaloRefError, match=r"--val-split must be a fraction in \(0, 1\)"):
        split_validation(_toy(), fraction)


def test_a_split_that_leaves_nothing_on_one_side_names_the_counts():
    with pytest.raises(HaloRefError, match="--val-split 0.005 leaves 120 training and 0 valid"):
        split_validation(_toy(), 0.005)
