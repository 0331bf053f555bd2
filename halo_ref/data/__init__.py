"""Files shipped with halo_ref: the handwritten digits of the first `halo-ref train` (loaded by
`halo_ref.training.data.load_digits`), and, for the tutorials, a small HaloNet trained on
CIFAR-10 and a few CIFAR-10 test photographs, so that looking at trained attention needs no
download and no training (credit, licence and how they were made: README.md beside this file).

    model, meta = load_tiny_cifar10()         # eval mode, float32 (stored as float16)
    photos = load_photos()                    # uint8 (N, 32, 32, 3), labels, class names
    x = prepare(photos.images, meta)          # (N, 3, 32, 32) float32, as in training

`python -m halo_ref.data._make_tiny_cifar10` re-makes both files (see its docstring).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from .._checks import HaloRefError, read_npz
from ..models import halonet
from ..training.evaluate import Batcher

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKPOINT = os.path.join(HERE, "tiny_cifar10.npz")
PHOTOS = os.path.join(HERE, "cifar10_photos.npz")
REMAKE = "python -m halo_ref.data._make_tiny_cifar10 (see halo_ref/data/README.md)"


class Photos(NamedTuple):
    """A few CIFAR-10 test photographs."""

    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64
    test_index: np.ndarray  # (N,) their positions in the official test set
    class_names: list[str]


def _read(path):
    name = os.path.basename(path)
    return read_npz(
        path,
        missing=f"{name} is missing from halo_ref/data; re-make it with {REMAKE}",
        not_npz=f"{path} is not an .npz file; re-make it with {REMAKE}",
        unreadable=f"{path} is unreadable ({{error}}); re-make it with {REMAKE}",
    )


def load_photos(path: str = PHOTOS) -> Photos:
    """The bundled CIFAR-10 test photographs (one per class, the first of each in the test set)."""
    z = _read(path)
    return Photos(z["images"], z["labels"], z["test_index"], [str(c) for c in z["class_names"]])


def load_tiny_cifar10(path: str = CHECKPOINT, *, dtype=np.float32, backend=None):
    """The bundled trained model in eval mode, and its metadata (a dict: the model's name, the
    training command and epochs, test accuracy, the normalisation statistics, ...).

    The weights are stored as float16 and cast to `dtype`. The initial values of the position
    tables are in the metadata's companion arrays: `initial_tables(path)`.
    """
    z = _read(path)
    meta = json.loads(str(z["meta"]))
    model = halonet(meta["model"], num_classes=meta["num_classes"], in_chans=3, dtype=dtype,
                    rng=0, backend=backend)  # fmt: skip
    state = {k[len("model/") :]: v for k, v in z.items() if k.startswith("model/")}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: v.shape for k, v in state.items()}
    if expected != got:
        differ = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise HaloRefError(
            f"{path} was made for another {meta['model']!r} model ({differ[0]} differs); the "
            f"model has changed since: re-make the file with {REMAKE}"
        )
    model.load_state_dict({k: v.astype(model.state_dict()[k].dtype) for k, v in state.items()})
    model.eval()
    return model, meta


def initial_tables(path: str = CHECKPOINT) -> dict[str, np.ndarray]:
    """The position tables of the bundled model before training (its initialisation), by name."""
    z = _read(path)
    return {k[len("initial/") :]: v for k, v in z.items() if k.startswith("initial/")}


def prepare(images: np.ndarray, meta: dict, dtype=np.float32) -> np.ndarray:
    """uint8 photos (N, H, W, 3) -> the model's input (N, 3, H, W), normalised as in training."""
    return Batcher(meta["mean"], meta["std"], meta["input_multiple"], dtype)(images)
