"""halo_ref.imagenet: timm's preprocessing in NumPy/Pillow, the class names, the top classes."""

from __future__ import annotations

import numpy as np
import pytest

from halo_ref._checks import HaloRefError
from halo_ref.imagenet import (
    PRETRAINED_CFG,
    center_crop,
    imagenet_class_names,
    preprocess,
    resize_shorter_side,
    top_k,
)

try:
    from PIL import Image
except ImportError:  # the autouse fixture below skips (or, in CI, fails) every test
    Image = None


@pytest.fixture(autouse=True)
def pillow(io_packages):
    """Every test here needs Pillow."""


def _image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_resize_keeps_the_aspect_ratio_with_a_truncated_long_side():
    assert resize_shorter_side(_image(300, 200), 269).size == (403, 269)  # 269*300/200 = 403.5
    assert resize_shorter_side(_image(200, 301), 269).size == (269, 404)  # 404.8 -> 404
    assert resize_shorter_side(_image(269, 500), 269).size == (269, 500)  # unchanged


def test_center_crop_offsets_round_like_torchvision():
    pixels = np.arange(8 * 7 * 3, dtype=np.uint8).reshape(7, 8, 3)
    crop = np.asarray(center_crop(Image.fromarray(pixels), 5))
    # left = round(3 / 2) = 2 (half to even), top = round(2 / 2) = 1
    np.testing.assert_array_equal(crop, pixels[1:6, 2:7])
    with pytest.raises(HaloRefError, match="smaller than"):
        center_crop(Image.fromarray(pixels), 9)


def test_preprocess_normalises_with_the_models_mean_and_std(tmp_path):
    cfg = PRETRAINED_CFG["halonet26t"]
    path = tmp_path / "grey.png"  # lossless: the constant survives the resize exactly
    Image.new("RGB", (320, 240), (128, 64, 255)).save(path)
    x = preprocess(path, cfg)
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32
    expected = (np.array([128, 64, 255]) / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    # float32 arithmetic on one value per channel
    np.testing.assert_allclose(x[0, :, 100, 100], expected, rtol=1e-6)
    assert np.ptp(x[0], axis=(1, 2)).max() < 1e-6
    x2 = preprocess(path, PRETRAINED_CFG["haloregnetz_b"])
    assert x2.shape == (1, 3, 224, 224)
    # float32 rounding of values near 1 (128/255 - 0.5 cancels, so absolute, not relative)
    np.testing.assert_allclose(
        x2[0, :, 0, 0], (np.array([128, 64, 255]) / 255 - 0.5) / 0.5, rtol=0, atol=1e-6
    )
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(HaloRefError, match="cannot read the image"):
        preprocess(tmp_path / "bad.jpg", cfg)


@pytest.mark.torch
def test_class_names_come_from_timms_files(timm):
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    (best, p, name), *_ = top_k(np.eye(1000)[1] * 20, names=names)
    assert best == 1 and name == "goldfish" and p > 0.9


def test_top_k_orders_by_probability():
    logits = np.array([[0.0, 3.0, 1.0, 3.0]])
    (i1, p1, n1), (i2, p2, _), (i3, _, _) = top_k(logits, 3)
    assert (i1, i2, i3) == (1, 3, 2) and n1 == "1"  # ties keep index order
    # softmax of [0, 3, 1, 3]: e^3 / (1 + 2 e^3 + e); float64 rounding only
    assert abs(p1 - np.exp(3) / (1 + 2 * np.exp(3) + np.e)) < 1e-15 and p1 == p2


@pytest.mark.torch
def test_pretrained_configs_are_timms(timm):
    """The stated copies of timm's pretrained_cfg (so that no timm is needed at run time)."""
    from halo_ref.models.timm_byobnet import TIMM_NAMES

    assert set(PRETRAINED_CFG) == set(TIMM_NAMES)
    for name, cfg in PRETRAINED_CFG.items():
        theirs = timm.models.get_pretrained_cfg(name)
        assert theirs.input_size == (3, cfg["input_size"], cfg["input_size"]), name
        assert (theirs.crop_pct, theirs.crop_mode, theirs.interpolation) == (
            cfg["crop_pct"],
            "center",
            cfg["interpolation"],
        ), name
        assert (theirs.mean, theirs.std) == (cfg["mean"], cfg["std"]), name
