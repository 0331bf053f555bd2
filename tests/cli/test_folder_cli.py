"""`halo-ref train --dataset folder:PATH` end to end, and the folder and recipe flags refused
in one line before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from halo_ref.cli.main import main
from halo_ref.training.checkpoint import load_checkpoint


def _grey_tree(root, n_train=8, n_test=2, size=28):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(("shirt", "boot")):
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size), dtype=np.uint8)
                img[:, k * size // 2 : (k + 1) * size // 2] += 150  # the class: a bright half
                Image.fromarray(img).save(root / split / c / f"{i}.png")


def test_train_on_a_folder_of_28x28_grey_images_picks_tiny28_and_keeps_the_class_names(
    tmp_path, capsys
):
    _grey_tree(tmp_path / "clothes")
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{tmp_path / 'clothes'}", "--epochs", "1",
            "--batch-size", "8", "--data-dir", str(tmp_path / "home"), "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training 'tiny28' (190,130 parameters) on folder:")
    assert "recipe 'size28' (28x28 grey images: images of 17x17 to 28x28 pixels)" in lines[0]
    assert "crop-pad 3, no flips" in lines[0] and "evaluated on the 4 test images" in lines[0]
    assert lines[1] == "note: decoded 20 grey images of 28x28 in " + lines[1].split(" in ")[-1]
    _, _, meta, _ = load_checkpoint(str(out / "best.npz"))
    assert meta["class_names"] == ["boot", "shirt"] and meta["in_chans"] == 1
    assert meta["dataset_shape"] == [16, 28, 28, 1]
    # evaluate reads the folder as the run did (the decoded images come from the cache)
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"),
                 "--data-dir", str(tmp_path / "home")]) == 0  # fmt: skip
    line = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert f"{100 * summary['test_accuracy']:.2f}%" in line
    # --flip-average scores each image with its mirror; here a mirror shows the other class
    # (the bright half moves) and the run had no flips, which the note says
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--flip-average",
                 "--data-dir", str(tmp_path / "home")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out.rstrip().endswith(", epoch 1, flip-averaged]"), captured.out
    assert "this model was trained without --flip" in captured.err


BAD = [
    (["--val-split", "1"], "argument --val-split: must be a finite number >= 0 and < 1"),
    (["--image-size", "0"], "argument --image-size: must be an integer >= 1"),
    (["--test-split", "0"], "argument --test-split: must be a finite number > 0 and < 1"),
    (["--crop-pad", "-1"], "argument --crop-pad: must be an integer >= 0"),
    (["--recipe", "nosuch"], "argument --recipe: invalid choice: 'nosuch'"),
    (["--image-size", "16"], "--image-size 16 applies to folder: datasets only; drop it for digits"),
    (["--dataset", "folder:"], "--dataset 'folder:' is not known"),
]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message", BAD, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_bad_folder_and_recipe_flags_are_one_line_before_any_work(
    extra, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *extra]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("halo-ref: error: ") and err.count("\n") == 1, err
    assert message in err and out == "" and not list(tmp_path.iterdir())


def test_bad_data_is_one_line_naming_the_file_and_the_flag_and_leaves_no_run_folder(
    tmp_path, capsys, monkeypatch
):
    _grey_tree(tmp_path / "clothes")
    (tmp_path / "clothes" / "train" / "boot" / "notes.txt").write_text("these are boots")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "folder:clothes", "--data-dir", "home", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "halo-ref: error: --dataset folder:clothes: train/boot/notes.txt is not an image Pillow "
        "can read; remove"
    )
    assert err.rstrip().endswith("remove or replace it, or pass --skip-bad-images to leave such "
                                 "files out")  # fmt: skip
    assert not (tmp_path / "runs").exists()
