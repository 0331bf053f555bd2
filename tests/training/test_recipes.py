"""halo_ref.training.recipes: recipes are records, and the user's images get the one for their
size (the table in docs/training.md is this rule)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from halo_ref import HaloRefError
from halo_ref.models import CONFIGS, NAMES, count_params, halonet
from halo_ref.training.config import TrainConfig
from halo_ref.training.recipes import (
    RECIPES,
    Recipe,
    choose_recipe,
    defaults_table,
    recipe_for_images,
)


@pytest.mark.parametrize(
    "shape, recipe, model",
    [((8, 8, 1), "size8", "micro"), ((16, 12, 3), "size8", "micro"),
     ((17, 17, 1), "size28", "tiny28"), ((28, 28, 1), "size28", "tiny28"),
     ((28, 28, 3), "size28", "tiny28"), ((32, 32, 3), "size32", "tiny"),
     ((32, 32, 1), "size32", "tiny"), ((30, 33, 3), "size64", "tiny64"),
     ((64, 64, 3), "size64", "tiny64"), ((224, 224, 3), "size64", "tiny64")],
)  # fmt: skip
def test_the_users_images_get_the_recipe_for_their_size(shape, recipe, model):
    for kind in ("npz", "folder"):
        chosen, why = choose_recipe(kind, shape)
        assert (chosen.name, chosen.model) == (recipe, model)
        assert f"{shape[0]}x{shape[1]}" in why and ("grey" in why) == (shape[2] == 1)
        assert not chosen.flip  # the user's images are never mirrored unless they ask


def test_each_size_recipe_trains_a_model_made_for_that_size_with_crops_of_an_eighth():
    for limit, name in ((16, "size8"), (28, "size28"), (32, "size32"), (64, "size64")):
        recipe = RECIPES[name]
        assert CONFIGS[recipe.model].image_size in (8, limit)  # micro is made for 8x8
        assert recipe.crop_pad == CONFIGS[recipe.model].image_size // 8
        assert recipe_for_images(limit, limit) == name


def test_named_sources_keep_their_own_recipe_and_recipe_overrides_the_rule():
    assert choose_recipe("digits", (8, 8, 1))[0] is RECIPES["digits"]
    cifar, why = choose_recipe("cifar10", (32, 32, 3))
    assert cifar.flip and cifar.crop_pad == 4 and "cifar10" in why
    forced, why = choose_recipe("folder", (32, 32, 3), requested="cifar10")
    assert forced is RECIPES["cifar10"] and why == "--recipe"
    with pytest.raises(HaloRefError, match="recipe='huge' is not known; choose one of digits"):
        choose_recipe("npz", (8, 8, 1), requested="huge")


def test_the_readme_shows_the_table_of_defaults_the_rule_gives():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = defaults_table(lambda name, chans: count_params(halonet(name, in_chans=chans)))
    assert "\n".join(table) in readme


def test_a_recipe_fills_exactly_the_settings_a_config_has():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for recipe in RECIPES.values():
        assert isinstance(recipe, Recipe) and recipe.model in NAMES
        assert set(recipe.settings()) <= fields
        assert set(recipe.settings()) == {f.name for f in dataclasses.fields(Recipe)} - {
            "name",
            "about",
        }
