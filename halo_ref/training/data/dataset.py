"""`Dataset`: what every loader returns, a labelled train/test split of uint8 images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """A labelled train/test split of uint8 images.

    x_train: (N, H, W, C) uint8; y_train: (N,) int64 in [0, num_classes); likewise for the test
    split. `crop_pad` and `flip` are the augmentation that suits the data (digits must not be
    mirrored; photographs may).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    crop_pad: int = 0
    flip: bool = False
    class_names: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.x_train.shape[1:])
