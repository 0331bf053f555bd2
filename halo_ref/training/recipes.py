"""Training recipes: named records of a model and the settings that train it, and the rule that
picks one for a dataset.

A recipe is data, not a code path: `Recipe` holds every setting a run takes from it (the model,
the schedule, the optimiser, the regularisation and the augmentation), and `RECIPES` names
them. Two data sources have recipes of their own ("digits", "cifar10"); the user's images
(`npz:`, `folder:`) get the recipe for their size, `recipe_for_images`: the model must fit the
image (an 8x8 model wastes a 28x28 image, a 32x32 model pads it), and the schedule follows
the model. Options given on the command line override single fields; `--recipe NAME` picks
another record whole.

Augmentation defaults, per data source (the recipe states them, `--crop-pad` and `--flip`
override): digits shift by up to 1 pixel and are never mirrored (a mirrored digit is another
symbol, or none); CIFAR-10 takes the standard random 32x32 crop of a 4-pixel padding and
mirrors; the user's images are shifted by up to an eighth of their side and are not mirrored
unless `--flip` says that a mirrored image shows the same class (true for photographs of
objects, false for text, digits, and anything with a handedness).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._checks import HaloRefError, arg


@dataclass(frozen=True)
class Recipe:
    """A model and the settings that train it (the fields of `TrainConfig` it fills)."""

    name: str
    model: str
    epochs: int
    batch_size: int
    optimizer: str  # "adamw", "sgd" or "nesterov"
    lr: float  # peak learning rate, after `warmup_epochs` of linear warm-up, then cosine to 0
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    crop_pad: int  # random crops of the image zero-padded by this many pixels (0: none)
    flip: bool  # random horizontal mirroring
    about: str  # what the recipe is for, for the run's first line and the docs

    def settings(self) -> dict:
        """The fields a `TrainConfig` takes from this recipe."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("name", "about")}  # fmt: skip


_DIGITS = Recipe(
    name="digits", model="micro", epochs=20, batch_size=64, optimizer="adamw", lr=4e-3,
    weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.1, crop_pad=1, flip=False,
    about="the bundled 8x8 digits",
)  # fmt: skip
_CIFAR10 = Recipe(
    name="cifar10", model="tiny", epochs=25, batch_size=128, optimizer="adamw", lr=2e-3,
    weight_decay=0.05, warmup_epochs=2.0, label_smoothing=0.1, crop_pad=4, flip=True,
    about="CIFAR-10, 32x32 colour photographs",
)  # fmt: skip

RECIPES: dict[str, Recipe] = {
    "digits": _DIGITS,
    "cifar10": _CIFAR10,
    # The user's images, by size. Each one follows the recipe of the data its model was made
    # for, with the augmentation made safe for unknown data (no mirroring) and scaled to the
    # image (a crop padding of about an eighth of the side).
    "size8": dataclasses.replace(_DIGITS, name="size8", about="images of at most 16x16 pixels"),
    "size28": Recipe(
        name="size28", model="tiny28", epochs=15, batch_size=128, optimizer="adamw", lr=2e-3,
        weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.1, crop_pad=3, flip=False,
        about="images of 17x17 to 28x28 pixels",
    ),
    "size32": dataclasses.replace(
        _CIFAR10, name="size32", flip=False, about="images of 29x29 to 32x32 pixels"
    ),
    "size64": dataclasses.replace(
        _CIFAR10, name="size64", model="tiny64", epochs=20, crop_pad=8, flip=False,
        about="images larger than 32x32 pixels (made for 64x64)",
    ),
}  # fmt: skip

# The rule for the user's images: the largest side picks the first row it fits.
SIZE_RULE = ((16, "size8"), (28, "size28"), (32, "size32"), (None, "size64"))


def recipe_for_images(height: int, width: int) -> str:
    """The name of the recipe for the user's images of height x width pixels (`SIZE_RULE`)."""
    side = max(height, width)
    for limit, name in SIZE_RULE:
        if limit is None or side <= limit:
            return name
    raise AssertionError("SIZE_RULE ends with a catch-all row")  # pragma: no cover


def choose_recipe(kind: str, image_shape, requested: str | None = None) -> tuple[Recipe, str]:
    """The recipe of a run and why it was chosen, as a phrase for the run's first line.

    kind: "digits", "cifar10", "npz" or "folder" (the `--dataset` source); image_shape: (H, W, C)
    of the images as the model sees them; requested: `--recipe`, or None for the rule.
    """
    if requested is not None:
        if requested not in RECIPES:
            raise HaloRefError(
                f"{arg('recipe', requested)} is not known; choose one of {', '.join(RECIPES)}"
            )
        return RECIPES[requested], "--recipe"
    H, W, C = image_shape
    if kind in ("digits", "cifar10"):
        return RECIPES[kind], f"the {kind} recipe"
    name = recipe_for_images(H, W)
    colour = "grey" if C == 1 else f"{C}-channel"
    return RECIPES[name], f"{H}x{W} {colour} images: {RECIPES[name].about}"


# The inputs the documentation's table of defaults shows: (height, width, channels, label).
TABLE_INPUTS = ((8, 8, 1, "8x8 grey"), (28, 28, 1, "28x28 grey"), (32, 32, 3, "32x32 RGB"),
                (64, 64, 3, "64x64 RGB"))  # fmt: skip


def defaults_table(count_params) -> list[str]:
    """The Markdown table of what the user's images get (README and docs/your_data.md show it;
    a test keeps them equal). count_params(model name, in_chans) -> parameters, 10 classes."""
    rows = [
        "| images | recipe | model (parameters) | epochs | batch | optimiser, peak lr | "
        "warm-up | label smoothing | crop-pad | flip |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h, w, c, label in TABLE_INPUTS:
        r = RECIPES[recipe_for_images(h, w)]
        rows.append(
            f"| {label} | {r.name} | {r.model} ({count_params(r.model, c):,}) | {r.epochs} | "
            f"{r.batch_size} | {r.optimizer} {r.lr:g} | {r.warmup_epochs:g} | "
            f"{r.label_smoothing:g} | {r.crop_pad} | {'on' if r.flip else 'off'} |"
        )
    return rows
