"""halo_ref.training.config: recipes fill a configuration, and a resumed run keeps its own."""

from __future__ import annotations

import pytest

from halo_ref import HaloRefError
from halo_ref.training.config import RECIPES, TrainConfig, merge_resumed, resolve_config


def test_unset_fields_take_the_datasets_recipe_and_set_ones_stay():
    cfg = resolve_config(TrainConfig(dataset="digits", lr=0.5))
    assert cfg.lr == 0.5 and cfg.epochs == RECIPES["digits"]["epochs"]
    assert cfg.model == "micro" and cfg.out.endswith("digits")


@pytest.mark.parametrize(
    "kw, message",
    [(dict(epochs=0), "--epochs must be >= 1"), (dict(lr=-1.0), "--lr must be > 0"),
     (dict(label_smoothing=1.0), "--label-smoothing"), (dict(dtype="float16"), "--dtype")],
)  # fmt: skip
def test_bad_settings_are_one_line_errors_naming_the_flag(kw, message):
    with pytest.raises(HaloRefError, match=message):
        resolve_config(TrainConfig(**kw))


def test_resuming_keeps_the_checkpoints_arithmetic_and_refuses_a_contradiction():
    saved = resolve_config(TrainConfig(dataset="digits", out="a"))
    merged = merge_resumed(TrainConfig(out="b", threads=1, resume=True), vars(saved), "ckpt")
    assert merged.lr == saved.lr and (merged.out, merged.threads) == ("b", 1)
    with pytest.raises(HaloRefError, match=r"--resume: epochs=3 \(checkpoint: 20\)"):
        merge_resumed(TrainConfig(epochs=3, resume=True), vars(saved), "ckpt")
