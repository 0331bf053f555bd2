"""halo_ref.training.config: recipes fill a configuration, and a resumed run keeps its own."""

from __future__ import annotations

import re

import pytest

from halo_ref import HaloRefError
from halo_ref._checks import flag_names
from halo_ref.training.config import (
    TrainConfig,
    check_config,
    default_out,
    merge_resumed,
    resolve_config,
)
from halo_ref.training.recipes import RECIPES

DIGITS = RECIPES["digits"]


def test_unset_fields_take_the_recipe_and_set_ones_stay():
    cfg = resolve_config(TrainConfig(dataset="digits", lr=0.5), DIGITS)
    assert cfg.lr == 0.5 and cfg.epochs == DIGITS.epochs
    assert (cfg.model, cfg.recipe, cfg.optimizer, cfg.crop_pad) == ("micro", "digits", "adamw", 1)
    assert cfg.out.endswith("digits")


@pytest.mark.parametrize(
    "spec, out",
    [("digits", "digits"), ("npz:data/fashion.npz", "fashion"), ("npz:x/", "x")],
)  # fmt: skip
def test_the_default_output_folder_is_named_after_the_dataset(spec, out):
    assert default_out(TrainConfig(dataset=spec)).split("/")[-1] == out


@pytest.mark.parametrize(
    "kw, message",
    [(dict(epochs=0), "epochs must be an integer >= 1, got 0"),
     (dict(lr=-1.0), "lr must be a finite number > 0, got -1.0"),
     (dict(lr=float("inf")), "lr must be a finite number > 0, got inf"),
     (dict(warmup_epochs=float("nan")), "warmup_epochs must be a finite number >= 0, got nan"),
     (dict(clip_grad=-1.0), "clip_grad must be a finite number >= 0"),
     (dict(seed=-1), "seed must be an integer >= 0"),
     (dict(checkpoint_every=-5), "checkpoint_every must be an integer >= 0"),
     (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
     (dict(label_smoothing=1.0), "label_smoothing must be a finite number >= 0 and < 1"),
     (dict(model="nosuch"), "model='nosuch' is not known; choose one of micro, tiny"),
     (dict(dtype="float16"), "dtype='float16' is not known"),
     (dict(optimizer="nesterov", momentum=0.0), "optimizer='nesterov' needs momentum > 0"),
     (dict(out=""), "out='': expected a non-empty path"),
     (dict(crop_pad=-1), "crop_pad must be an integer >= 0"),
     (dict(val_split=1.0), "val_split must be a finite number >= 0 and < 1, got 1.0"),
     (dict(recipe="big"), "recipe='big' is not known; choose one of digits, cifar10"),
     (dict(dataset="mnist"), "--dataset 'mnist' is not known")],
)  # fmt: skip
def test_bad_settings_are_one_line_errors_naming_the_argument(kw, message):
    with pytest.raises(HaloRefError, match=re.escape(message)):
        check_config(TrainConfig(**kw))
    with pytest.raises(HaloRefError, match=re.escape(message)):
        resolve_config(TrainConfig(**kw), DIGITS)


def test_under_the_command_line_the_same_checks_name_the_flags():
    with flag_names(), pytest.raises(HaloRefError, match=re.escape("--warmup-epochs must be a")):
        check_config(TrainConfig(warmup_epochs=float("nan")))
    with flag_names(), pytest.raises(HaloRefError, match="--model nosuch is not known"):
        check_config(TrainConfig(model="nosuch"))


def test_resuming_keeps_the_checkpoints_arithmetic_and_refuses_a_contradiction():
    saved = resolve_config(TrainConfig(dataset="digits", out="a"), DIGITS)
    merged = merge_resumed(TrainConfig(out="b", threads=1, resume=True), vars(saved), "ckpt")
    assert merged.lr == saved.lr and (merged.out, merged.threads) == ("b", 1)
    assert merged.recipe == "digits"
    with pytest.raises(HaloRefError, match=r"resume=True: val_split=0.1 \(checkpoint: 0.0\)"):
        merge_resumed(TrainConfig(val_split=0.1, resume=True), vars(saved), "ckpt")
    with pytest.raises(HaloRefError, match=r"resume=True: epochs=3 \(checkpoint: 20\)"):
        merge_resumed(TrainConfig(epochs=3, resume=True), vars(saved), "ckpt")
