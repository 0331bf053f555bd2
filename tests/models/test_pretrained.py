"""halo_ref.models.pretrained: timm's weights saved the ways timm's users save them, loaded
without a framework, give timm's logits on a JPEG through timm's preprocessing.

Tolerance: float32 on both sides through halonet26t at 256x256 in evaluation mode (measured
about 1e-6 relative to the largest logit; 1e-4 is the issue's float32 bound, and this
well-normalised evaluation meets it, unlike the small-image training cases of
tests/models/test_timm_byobnet.py)."""

from __future__ import annotations

import numpy as np
import pytest
from timm_helpers import randomise_batchnorm

from halo_ref import HaloRefError
from halo_ref.imagenet import PRETRAINED_CFG, preprocess, top_k
from halo_ref.models.pretrained import load_pretrained, read_weights


@pytest.fixture(scope="module")
def saved(tmp_path_factory, timm, io_packages):
    """A JPEG, and a random halonet26t of timm's saved as .safetensors and as .pth, with timm's
    own logits for that JPEG (float32, evaluation mode)."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("pretrained")
    photo = folder / "photo.jpg"
    pixels = np.random.default_rng(3).integers(0, 256, (280, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo, quality=90)
    torch.manual_seed(0)
    theirs = timm.create_model("halonet26t")
    x = preprocess(photo, PRETRAINED_CFG["halonet26t"])
    randomise_batchnorm(torch, theirs, 1, torch.from_numpy(x))
    theirs.eval()
    save_file(theirs.state_dict(), folder / "halonet26t.safetensors")
    torch.save({"state_dict": theirs.state_dict()}, folder / "halonet26t.pth")
    with torch.no_grad():
        logits = theirs(torch.from_numpy(x)).numpy()
    return folder, photo, logits


@pytest.mark.torch
@pytest.mark.parametrize("file", ["halonet26t.safetensors", "halonet26t.pth"])
def test_timms_weights_give_timms_logits(saved, file):
    folder, photo, expected = saved
    model, prep, names = load_pretrained("halonet26t", folder / file)
    assert not model.training and model.dtype == np.float32
    logits = model.forward(prep(photo))
    err = np.abs(logits - expected).max() / np.abs(expected).max()
    assert err < 1e-4, err  # see the module docstring
    ours, theirs = top_k(logits, 5, names), top_k(expected, 5, names)
    assert [i for i, _, _ in ours] == [i for i, _, _ in theirs]
    assert len(names) == 1000 and all(isinstance(n, str) and n for _, _, n in ours)


@pytest.mark.torch
def test_wrong_model_or_labels_are_one_line_errors(saved, tmp_path):
    folder, _, _ = saved
    with pytest.raises(HaloRefError, match="does not hold timm's sehalonet33ts weights: .*missing"):
        load_pretrained("sehalonet33ts", folder / "halonet26t.safetensors")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    with pytest.raises(HaloRefError, match="--labels .* has 2 names but halonet26t has 1000"):
        load_pretrained("halonet26t", folder / "halonet26t.safetensors", labels=labels)
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    names = load_pretrained("halonet26t", folder / "halonet26t.safetensors", labels=labels)[2]
    assert names[7] == "class 7"


def test_weight_files_give_one_line_errors(io_packages, tmp_path):
    with pytest.raises(HaloRefError, match="no such file"):
        read_weights(tmp_path / "missing.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"")
    with pytest.raises(HaloRefError, match="unknown file type '.onnx'"):
        read_weights(tmp_path / "w.onnx")
    (tmp_path / "w.safetensors").write_bytes(b"garbage")
    with pytest.raises(HaloRefError, match="not a readable .safetensors"):
        read_weights(tmp_path / "w.safetensors")
    with pytest.raises(HaloRefError, match="--model"):
        load_pretrained("resnet50", tmp_path / "w.safetensors")
