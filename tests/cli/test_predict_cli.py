"""`halo-ref predict` end to end: a folder run's checkpoint classifies new image files by class
name; --attention draws a new PNG; bad input is one line before any work."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import fake_checkpoint, write_png
from PIL import Image

from halo_ref.cli.main import main


def _two_class_tree(root, size=16):
    """RGB 'left' and 'right' classes: the bright half of the image is the class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 3)):
        for k, c in enumerate(("left", "right")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
                img[:, k * size // 2 : (k + 1) * size // 2] += 200
                Image.fromarray(img).save(root / split / c / f"{i}.png")


def test_a_folder_run_names_the_classes_of_new_images_and_draws_attention(tmp_path, capsys):
    _two_class_tree(tmp_path / "halves")
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{tmp_path / 'halves'}", "--epochs", "1",
            "--batch-size", "8", "--data-dir",
            str(tmp_path / "home"), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    # new images, larger than the training ones: read at 16x16 by the training rule
    right = np.zeros((48, 48, 3), np.uint8)
    right[:, 24:] = 230
    images = [write_png(tmp_path / "right.png", right),
              write_png(tmp_path / "left.jpg.png", right[:, ::-1])]  # fmt: skip
    att = tmp_path / "att.png"
    argv = ["predict", "--checkpoint", str(out / "best.npz"), *images, "--top-k", "2",
            "--attention", str(att), "--query", "3,4", "--query", "15,15"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and lines[3] == images[1]
    # (whether one epoch learnt the halves is not the point: tests/training/test_predict.py
    # checks the probabilities; here, the names kept in the checkpoint and the format)
    shown = sorted(line.split("%  ")[1] for line in lines[1:3])
    assert (
        shown
        == ["left (class 0)", "right (class 1)"]
        == sorted(line.split("%  ")[1] for line in lines[4:6])
    )
    assert lines[6] == f"attention of layer 0 drawn in {att}"
    probs = [float(line.split("%")[0]) for line in lines[1:3] + lines[4:6]]
    assert probs[0] >= probs[1] and probs[2] >= probs[3] and abs(sum(probs[:2]) - 100) < 0.02
    assert Image.open(att).size[0] > 400  # two columns of queries
    # an existing file is never overwritten
    assert main(argv) == 2
    assert "already exists; choose a new file name" in capsys.readouterr().err


BAD = [
    (["x.png"], "checkpoint nope.npz does not exist"),
    (["--attention", "a.txt", "x.png"], "--attention a.txt must name a .png file"),
    (["--query", "1,2", "x.png"], "--layer and --query draw attention; add --attention OUT.png"),
    (["--attention", "a.png", "--query", "1", "x.png"], "--query 1 is not ROW,COL"),
    (["--top-k", "0", "x.png"], "argument --top-k: must be an integer >= 1"),
]  # fmt: skip


@pytest.mark.parametrize("extra, message", BAD, ids=[m for _, m in BAD])
def test_bad_flags_are_one_line_before_any_work(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--checkpoint", "nope.npz", *extra]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("halo-ref: error: ") and err.count("\n") == 1, err
    assert message in err and out == "" and not list(tmp_path.iterdir())


def test_a_bad_image_or_layer_stops_before_any_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = fake_checkpoint(tmp_path / "c.npz", dataset="digits", model="micro",
                           shape=(8, 8, 1), pixel_max=16)  # fmt: skip
    good = write_png(tmp_path / "g.png", np.zeros((8, 8)))
    (tmp_path / "notes.txt").write_text("no picture")
    assert main(["predict", "--checkpoint", ckpt, good, "notes.txt"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "halo-ref: error: notes.txt is not an image Pillow can read\n"
    argv = ["predict", "--checkpoint", ckpt, good, "--attention", "a.png", "--layer", "9"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--layer 9 is not a halo-attention layer of this model" in err
    assert not (tmp_path / "a.png").exists()


# -- timm's pretrained HaloNets ---------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory, timm, io_packages):
    """A JPEG, a random halonet26t of timm's saved as .safetensors, and timm's own logits for
    the JPEG through timm's preprocessing (float32, evaluation mode)."""
    import torch
    from safetensors.torch import save_file

    from halo_ref.imagenet import PRETRAINED_CFG, preprocess

    folder = tmp_path_factory.mktemp("timm")
    photo = folder / "photo.jpg"
    pixels = np.random.default_rng(5).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo, quality=90)
    torch.manual_seed(0)
    theirs = timm.create_model("halonet26t").eval()
    save_file(theirs.state_dict(), folder / "halonet26t.safetensors")
    with torch.no_grad():
        x = torch.from_numpy(preprocess(photo, PRETRAINED_CFG["halonet26t"]))
        logits = theirs(x).numpy()
    return folder, str(photo), logits


def test_timms_weights_predict_timms_top_classes_and_draw_attention(timm_weights, capsys):
    from halo_ref.imagenet import top_k

    folder, photo, logits = timm_weights
    labels = folder / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)))
    att = folder / "att.png"
    argv = ["predict", "--model", "halonet26t", "--weights",
            str(folder / "halonet26t.safetensors"), "--labels", str(labels), photo,
            "--top-k", "3", "--attention", str(att), "--layer", "1"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == photo and lines[4].startswith("attention of layer 1 drawn in")
    # float32 on both sides agree to about 1e-6 of the largest logit (test_pretrained.py); the
    # four largest logits here lie 1.7% of the largest or more apart, so the order is certain
    want = [f"thing {i} (class {i})" for i, _, _ in top_k(logits, 3)]
    assert [line.split("%  ")[1] for line in lines[1:4]] == want
    assert att.exists()


PRETRAINED_BAD = [
    (["--model", "halonet26t"], "--model halonet26t needs --weights FILE"),
    (["--checkpoint", "c.npz", "--weights", "w.safetensors"], "--weights goes with --model"),
    (["--model", "resnet50", "--weights", "w.safetensors"], "argument --model/--timm-model: "
     "invalid choice: 'resnet50'"),
    (["--checkpoint", "c.npz", "--model", "halonet26t"], "not allowed with argument"),
    ([], "one of the arguments --checkpoint --model/--timm-model is required"),
]  # fmt: skip


@pytest.mark.parametrize("extra, message", PRETRAINED_BAD, ids=[m for _, m in PRETRAINED_BAD])
def test_the_two_sources_of_a_model_are_checked_in_one_line(
    extra, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", *extra, "x.png"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("halo-ref: error: ") and err.count("\n") == 1, err
    assert message in err and out == ""
