"""ImageNet as timm's pretrained HaloNets see it: timm's evaluation preprocessing in NumPy and
Pillow, the ImageNet-1k class names, and the top classes of a prediction
(`halo_ref.models.pretrained` puts these together with the network and its weights).

- `PRETRAINED_CFG`: timm 1.0's `pretrained_cfg` of each HaloNet (input size, crop fraction,
  interpolation, mean and std), stated here so that no timm is needed at run time;
- `preprocess(image, cfg)`: timm's `transforms_imagenet_eval` with crop_mode "center": resize
  the shorter side to floor(size / crop_pct) (the other side in proportion, truncated), crop
  the centre size x size, scale to [0, 1], subtract the mean, divide by the std;
- `imagenet_class_names()`: the 1000 class names in timm's class order, read from the copy of
  the ImageNet synsets and WordNet lemmas that timm ships (timm/data/_info, Apache-2.0), or
  None when timm is not installed. halo_ref ships no copy.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from ._checks import HaloRefError
from .training.data.images import pillow

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HALONET_256 = dict(
    input_size=256, crop_pct=0.94, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD
)
# timm 1.0.31's pretrained_cfg of each model (halonet_h1 has no trained weights)
PRETRAINED_CFG = {
    "halonet_h1": {**_HALONET_256, "crop_pct": 0.95},
    "halonet26t": {**_HALONET_256, "crop_pct": 0.95},
    "sehalonet33ts": dict(_HALONET_256),
    "halonet50ts": dict(_HALONET_256),
    "eca_halonext26ts": dict(_HALONET_256),
    "haloregnetz_b": dict(
        input_size=224, crop_pct=0.94, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
    ),
    "halo2botnet50ts_256": {**_HALONET_256, "crop_pct": 0.95},
    "lamhalobotnet50ts_256": {**_HALONET_256, "crop_pct": 0.95},
}
_RESAMPLE = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def resize_shorter_side(image, size: int, interpolation: str = "bicubic"):
    """Resize a PIL image so that its shorter side is `size`; the longer side becomes
    int(size * long / short) (truncated, as torchvision's Resize(int) computes it)."""
    Image, _ = pillow()
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    if new == (w, h):
        return image
    return image.resize(new, getattr(Image.Resampling, _RESAMPLE[interpolation]))


def center_crop(image, size: int):
    """The central size x size crop of a PIL image at least that large; the offsets are
    round((W - size) / 2) and round((H - size) / 2), as in torchvision's CenterCrop."""
    w, h = image.size
    if w < size or h < size:
        raise HaloRefError(f"image {w}x{h} is smaller than the {size}x{size} crop")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(image, cfg: dict) -> np.ndarray:
    """timm's evaluation transform: a path or PIL image -> float32 (1, 3, size, size).

    cfg: input_size, crop_pct, interpolation, mean, std (see `PRETRAINED_CFG`).
    """
    Image, _ = pillow()
    if not hasattr(image, "convert"):
        path = Path(image)
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as exc:
            raise HaloRefError(f"cannot read the image {path} ({exc})") from None
    else:
        image = image.convert("RGB")
    size = int(cfg["input_size"])
    image = resize_shorter_side(image, math.floor(size / cfg["crop_pct"]), cfg["interpolation"])
    image = center_crop(image, size)
    x = np.asarray(image, dtype=np.float32) / 255.0  # H, W, 3 in [0, 1]
    mean = np.asarray(cfg["mean"], np.float32)
    std = np.asarray(cfg["std"], np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # 1, 3, H, W


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet-1k class names in timm's class order (the first lemma of each synset),
    from the files timm ships, or None when timm is not installed."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"
    try:
        synsets = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(
            line.split("\t", 1)
            for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
            if "\t" in line
        )
    except OSError:
        return None
    return [lemmas.get(s, s).split(",")[0].strip() for s in synsets]


def top_k(logits: np.ndarray, k: int = 5, names: list[str] | None = None):
    """The k most probable classes of (1, C) or (C,) logits: [(index, probability, name)]."""
    z = np.asarray(logits, np.float64).reshape(-1)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i]), names[i] if names else str(int(i))) for i in order]
