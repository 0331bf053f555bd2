"""`Dataset`: what every loader returns, a labelled train/test split of uint8 images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..._checks import HaloRefError, arg


@dataclass
class Dataset:
    """A labelled train/test split of uint8 images.

    x_train: (N, H, W, C) uint8; y_train: (N,) int64 in [0, num_classes); likewise for the
    evaluation split x_test, y_test: the test images, or (eval_split "val") images held out
    from the training set (`halo_ref.training.data.splits.split_validation`).
    class_names: one name per class, in label order. pixel_max: the largest pixel value the
    source uses (255; 16 for the UCI digits, which count pen strokes), so that a new image can
    be brought to the same scale. notes: what the loader did that a user should hear about
    (images resized or skipped, a cache used), one phrase each.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    pixel_max: int = 255
    eval_split: str = "test"
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.x_train.shape[1:])


def _some(classes) -> str:
    """'3', '3 and 7', or '0, 3, 7, 8 and 5 more': a list of classes for a message."""
    shown = [str(int(c)) for c in classes[:4]]
    if len(classes) > 4:
        return f"{', '.join(shown)} and {len(classes) - 4} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def check_classes(data: Dataset, spec: str) -> list[str]:
    """The labels' notices for a training run, one phrase each, after refusing a training set of
    a single class (`spec` names the dataset in messages).

    The model gets `data.num_classes` outputs whatever the labels hold, so a class without a
    training image is an output that can never be learnt (labels 1..10 make 11 outputs, 0
    untrained), and a class far rarer than the others is most often a stray label (a 10 among
    0..9 makes an 11th output for one image). Neither stops the run, both are said.
    """
    counts = np.bincount(data.y_train, minlength=data.num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise HaloRefError(
            f"{arg('dataset', spec)}: all {len(data.y_train)} training images have label "
            f"{int(present[0])}; a classifier needs images of at least 2 classes"
        )
    notes, k = [], data.num_classes
    absent = np.flatnonzero(counts == 0)
    if len(absent):
        one_based = "; if the labels are 1-based, subtract 1" if list(absent) == [0] else ""
        notes.append(
            f"no training images of class {_some(absent)}: the model's {k} outputs (classes "
            f"0..{k - 1}) include {len(absent)} it cannot learn{one_based}"
        )
    median = float(np.median(counts[present]))
    rare = [int(c) for c in present if counts[c] * 20 < median]  # under 5% of a typical class
    if rare:
        counted = ", ".join(f"class {c}: {counts[c]}" for c in rare[:4])
        notes.append(
            f"few training images ({counted}{', ...' if len(rare) > 4 else ''}) against a median "
            f"of {median:g} per class: stray labels? The model has {k} outputs, classes 0..{k - 1}"
        )
    return notes
