"""A training run's configuration: the recipe that fills it, the rules for resuming, threads.

`TrainConfig` holds everything that defines a run; fields left as None take the values of the
run's recipe (`halo_ref.training.recipes`), which is chosen once the data is loaded, since the
user's images get the recipe for their size. `check_config` refuses bad explicit settings
before any work; `resolve_config` fills the rest from the recipe. A resumed run takes its
checkpoint's configuration and refuses explicit settings that contradict it
(`FIXED_ON_RESUME`, `merge_resumed`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numba

from .._blas import set_blas_threads
from .._checks import COUNT, POSITIVE, SEED, HaloRefError, Number, arg
from ..models import NAMES as MODELS
from .data import dataset_kind
from .recipes import RECIPES, Recipe

# The rule of every numeric setting (None, "take the recipe's", is always allowed). The command
# line parses its flags with the same rules (`halo_ref.cli.train`).
RULES = {
    "epochs": COUNT, "batch_size": COUNT, "lr": POSITIVE, "momentum": Number(ge=0, lt=1),
    "weight_decay": Number(ge=0), "warmup_epochs": Number(ge=0),
    "label_smoothing": Number(ge=0, lt=1), "clip_grad": Number(ge=0),
    "crop_pad": Number(integer=True, ge=0), "seed": SEED, "threads": COUNT,
    "checkpoint_every": Number(integer=True, ge=0), "checkpoint_seconds": POSITIVE,
    "eval_batch_size": COUNT, "val_split": Number(ge=0, lt=1), "image_size": COUNT,
    "test_split": Number(gt=0, lt=1),
}  # fmt: skip
OPTIMIZERS = ("adamw", "sgd", "nesterov")
DTYPES = ("float32", "float64")

# Settings that decide the arithmetic of a run: a resumed run must use the checkpoint's values.
FIXED_ON_RESUME = (
    "dataset", "recipe", "model", "epochs", "batch_size", "lr", "optimizer", "momentum",
    "weight_decay", "warmup_epochs", "label_smoothing", "clip_grad", "seed", "dtype", "crop_pad",
    "flip", "val_split", "image_size", "test_split", "skip_bad_images",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Everything that defines a training run (None: take the recipe's value)."""

    dataset: str = "digits"
    recipe: str | None = None  # None: the dataset's recipe, or the one for its image size
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_grad: float = 5.0
    crop_pad: int | None = None
    flip: bool | None = None
    val_split: float = 0.0  # > 0: evaluate on this fraction of the training images, held out
    image_size: int | None = None  # folder: bring every image to S x S (None: keep one size)
    test_split: float | None = None  # folder without test/: the held-out fraction (None: 0.2)
    skip_bad_images: bool = False  # folder: leave unreadable files and bad folders out
    seed: int = 0
    threads: int | None = None
    dtype: str = "float32"
    out: str | None = None
    data_dir: str | None = None
    download: bool = False
    resume: bool = False
    checkpoint_every: int = 0  # also save every N steps within an epoch (0: by time only)
    checkpoint_seconds: float = 300.0  # ... and whenever this long has passed since the last save
    eval_batch_size: int = 256


def default_out(cfg: TrainConfig) -> str:
    """The output folder when --out is not given: runs/<dataset name>."""
    kind = dataset_kind(cfg.dataset)
    if kind in ("digits", "cifar10"):
        return os.path.join("runs", kind)
    path = cfg.dataset.split(":", 1)[1].rstrip("/\\")
    stem = os.path.basename(path)
    for ext in (".tar.gz", ".tgz", ".tar", ".zip", ".npz"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return os.path.join("runs", stem or kind)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Raise a one-line HaloRefError for the first bad setting (None fields are not checked:
    the recipe fills them); returns `cfg`. Nothing is read or written."""
    for name, rule in RULES.items():
        if getattr(cfg, name) is not None:
            rule.check(getattr(cfg, name), name)
    choices = (("recipe", tuple(RECIPES)), ("model", MODELS), ("optimizer", OPTIMIZERS),
               ("dtype", DTYPES))  # fmt: skip
    for name, allowed in choices:
        value = getattr(cfg, name)
        if value is not None and value not in allowed:
            raise HaloRefError(
                f"{arg(name, value)} is not known; choose one of {', '.join(allowed)}"
            )
    if cfg.optimizer == "nesterov" and cfg.momentum == 0:
        raise HaloRefError(
            f"{arg('optimizer', 'nesterov')} needs {arg('momentum')} > 0; raise it or use "
            f"{arg('optimizer', 'sgd')}"
        )
    for name in ("dataset", "out", "data_dir"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, (str, os.PathLike)) and str(value)):
            raise HaloRefError(f"{arg(name, value)}: expected a non-empty path or name")
    dataset_kind(cfg.dataset)  # an unknown dataset is a one-line error
    return cfg


def resolve_config(cfg: TrainConfig, recipe: Recipe) -> TrainConfig:
    """`cfg` with its None fields filled from `recipe` (and `recipe` named in it), and the
    default output folder; explicit settings are checked first (`check_config`)."""
    check_config(cfg)
    filled = {k: v for k, v in recipe.settings().items() if getattr(cfg, k) is None}
    return dataclasses.replace(
        cfg, **filled, recipe=recipe.name, out=cfg.out if cfg.out is not None else default_out(cfg)
    )


def merge_resumed(cfg: TrainConfig, saved: dict, path: str) -> TrainConfig:
    """The checkpoint's configuration, refusing explicit settings that contradict it."""
    clash = [
        f"{arg(k, getattr(cfg, k))} (checkpoint: {saved[k]!r})"
        for k in FIXED_ON_RESUME
        if getattr(cfg, k) is not None and k in saved and getattr(cfg, k) != saved[k]
        and not (k in ("momentum", "clip_grad", "seed", "dataset", "dtype", "val_split",
                       "skip_bad_images")
                 and getattr(cfg, k) == getattr(TrainConfig, k))
    ]  # fmt: skip
    if clash:
        raise HaloRefError(
            f"{arg('resume', True)}: {', '.join(clash)} differ from {path}; drop these settings "
            f"to resume the run as it was, or start a new run in another folder ({arg('out')})"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in known}
    keep = ("out", "threads", "data_dir", "download", "resume", "checkpoint_every",
            "checkpoint_seconds", "eval_batch_size")  # fmt: skip
    merged.update({k: getattr(cfg, k) for k in keep})
    return TrainConfig(**merged)


def set_threads(n: int | None) -> int:
    """Give the Numba kernels n threads (None: leave Numba's setting, all cores unless
    `numba.set_num_threads` was called) and OpenBLAS one; returns the number of threads the
    kernels will use.

    Numba cannot start more threads than its pool (NUMBA_NUM_THREADS, by default the cores it
    found), so a larger n is capped: the caller compares the result with n to say so.
    halo_ref parallelises in Numba's threads, and its kernels call BLAS from inside them; BLAS
    threads of its own would nest inside Numba's and oversubscribe the cores. Measured on 2
    cores: a training step of the tiny HaloNet at batch 64 took 0.49 s with 2 OpenBLAS threads
    and 0.24 s with 1. Changes this process only (set once, at the start of a run).
    """
    if n is not None:
        COUNT.check(n, "threads")
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    set_blas_threads(1)
    return numba.get_num_threads()


def threads_note(asked: int | None, used: int) -> str | None:
    """The notice for a thread count that was capped, or None."""
    if asked is None or asked <= used:
        return None
    return (
        f"{arg('threads', asked)} is more than the {used} threads Numba can start here "
        f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, by default the cores it found); "
        f"using {used}"
    )
