"""`Dataset`: what every loader returns, a labelled train/test split of uint8 images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
