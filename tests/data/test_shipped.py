"""The shipped model and photographs load, predict, and are described truthfully."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from halo_ref import backend
from halo_ref._checks import HaloRefError
from halo_ref.data import (
    CHECKPOINT,
    PHOTOS,
    initial_tables,
    load_photos,
    load_tiny_cifar10,
    prepare,
)

README = Path(CHECKPOINT).with_name("README.md")


def test_files_are_small():
    # shipped inside the package: keep them under a megabyte together
    assert Path(CHECKPOINT).stat().st_size + Path(PHOTOS).stat().st_size < 1_000_000


def test_model_loads_in_eval_mode_and_predicts_the_photos():
    model, meta = load_tiny_cifar10(backend="numpy")
    photos = load_photos()
    assert photos.images.shape == (10, 32, 32, 3) and photos.images.dtype == np.uint8
    assert sorted(photos.labels.tolist()) == list(range(10))
    assert photos.class_names == meta["class_names"]
    with backend.use("numpy"):
        logits = model.forward(prepare(photos.images, meta))
    assert logits.shape == (10, 10) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    # deterministic in eval mode (BatchNorm uses its running statistics)
    with backend.use("numpy"):
        again = model.forward(prepare(photos.images, meta))
    np.testing.assert_array_equal(logits, again)


def test_weights_are_float16_and_initial_tables_differ_from_trained():
    with np.load(CHECKPOINT, allow_pickle=False) as z:
        assert all(z[k].dtype == np.float16 for k in z.files if k.startswith("model/") and
                   z[k].dtype.kind == "f")  # fmt: skip
    model, _ = load_tiny_cifar10()
    init = initial_tables()
    assert init and all("pos_embed" in k for k in init)
    trained = model.state_dict()
    assert any(not np.allclose(trained[k], v) for k, v in init.items())


def test_readme_states_the_stored_accuracy_and_epochs():
    _, meta = load_tiny_cifar10()
    text = README.read_text()
    assert f"**{100 * meta['test_accuracy_float16']:.2f}%**" in text
    assert f"{100 * meta['test_accuracy_float32']:.2f}% in float32" in text
    assert f"best epoch: {meta['best_epoch']} of {meta['epochs']}" in text
    assert f"--epochs {meta['epochs']}" in text


def test_a_file_made_for_another_model_is_a_one_line_error(tmp_path):
    path = tmp_path / "old.npz"
    with np.load(CHECKPOINT, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith("height_rel"))
    arrays[key] = arrays[key][:-1]  # as if the model's window had changed
    np.savez(path, **arrays)
    with pytest.raises(HaloRefError, match=r"made for another 'tiny'.*re-make") as info:
        load_tiny_cifar10(str(path))
    assert "\n" not in str(info.value)
    shutil.copy(CHECKPOINT, tmp_path / "meta_ok.npz")
    assert json.loads(str(np.load(tmp_path / "meta_ok.npz")["meta"]))["model"] == "tiny"
    assert re.search("halo_ref.data._make_tiny_cifar10", str(info.value))
