"""Pretrained timm HaloNets without a framework: a weight file, timm's network in halo_ref, timm's
preprocessing and the ImageNet class names, put together by `load_pretrained`.

    from halo_ref.models.pretrained import load_pretrained
    from halo_ref.imagenet import top_k

    model, preprocess, names = load_pretrained("halonet26t", "halonet26t.safetensors")
    logits = model.forward(preprocess("cat.jpg"))          # (1, 1000)
    for index, p, name in top_k(logits, 5, names): ...

Weight files: `.safetensors` (the `safetensors` package, no framework), or PyTorch's `.pth`,
`.pt` and `.bin` when PyTorch is installed (read with `weights_only=True`, so no pickled code
runs); either holds timm's state dict, keys and shapes unchanged. How to get timm's trained
weights is in docs/models.md: halo_ref never downloads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._checks import HaloRefError, check_choice
from ..imagenet import PRETRAINED_CFG, imagenet_class_names, preprocess
from .timm_byobnet import TIMM_NAMES, TimmHaloNet, timm_halonet

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class Pretrained(NamedTuple):
    """What `load_pretrained` returns (unpacks as a triple)."""

    model: TimmHaloNet  # in evaluation mode, float32 unless asked otherwise
    preprocess: Callable  # image path or PIL image -> float32 (1, 3, size, size)
    class_names: list[str] | None  # 1000 names in timm's class order, or None (no list found)


def read_weights(path) -> dict[str, np.ndarray]:
    """A state dict (name -> NumPy array) from a `.safetensors` file, or from a PyTorch `.pth`,
    `.pt` or `.bin` file when PyTorch is installed. A checkpoint that wraps its state dict under
    "state_dict" or "model" (as training scripts save them) is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise HaloRefError(f"--weights {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise HaloRefError(
            f"--weights {path}: unknown file type {suffix!r}; use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise HaloRefError(
                f"--weights {path}: reading .safetensors needs `pip install safetensors`"
            ) from None
        try:
            return load_file(path)
        except Exception as exc:  # the reader's own error types
            raise HaloRefError(
                f"--weights {path} is not a readable .safetensors file ({exc})"
            ) from None
    # PyTorch's own format: only PyTorch reads it (optional; imported here, where it is asked for)
    try:
        import torch
    except ImportError:
        raise HaloRefError(
            f"--weights {path}: PyTorch files need torch (pip install torch==2.13.0), or convert "
            "them once to .safetensors (docs/models.md)"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, unpickling or version errors
        raise HaloRefError(f"--weights {path} is not a readable PyTorch file ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise HaloRefError(f"--weights {path} holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _check_keys(model, state, path, name):
    """One line naming what does not fit, instead of load_state_dict's list of every key.

    BatchNorm's `num_batches_tracked` counters may be absent (some exports drop them; an
    evaluation never reads them): they are filled with zeros."""
    own = model.state_dict()
    state = dict(state)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = np.zeros((), np.int64)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(np.shape(state[k])) != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} of another shape (e.g. {k!r}: {tuple(np.shape(state[k]))}, "
                f"expected {own[k].shape})"
            )
        raise HaloRefError(
            f"--weights {path} does not hold timm's {name} weights: {'; '.join(parts)}; "
            "choose the matching --model"
        )
    return state


def read_class_names(path) -> list[str]:
    """One class name per line (blank lines kept out), e.g. a list of the 1000 ImageNet names."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise HaloRefError(f"--labels {path}: cannot read it ({exc.strerror})") from None
    return names


def load_pretrained(name, weights_path, *, labels=None, dtype=np.float32, backend=None):
    """timm's HaloNet `name` with the weights of `weights_path`, ready to classify images.

    name: one of `halo_ref.models.timm_byobnet.TIMM_NAMES` (e.g. "halonet26t");
    weights_path: a .safetensors (or, with PyTorch, .pth/.pt/.bin) file of timm's state dict;
    labels: a text file of class names, one a line (default: the ImageNet-1k names that timm
    ships, when timm is installed; otherwise None); dtype: np.float32 (timm's) or np.float64;
    backend: as for `halo_ref.models.halonet`.

    Returns `Pretrained(model, preprocess, class_names)`: the model in evaluation mode,
    `preprocess(image)` -> float32 (1, 3, size, size) with the model's own timm preprocessing
    (`halo_ref.imagenet.PRETRAINED_CFG`), and the class names or None. Every error is one line
    (`HaloRefError`), raised before any weight is copied.
    """
    check_choice(name, "--model", TIMM_NAMES)
    state = read_weights(weights_path)
    model = timm_halonet(name, dtype=dtype, backend=backend)
    model.load_state_dict(_check_keys(model, state, weights_path, name))
    model.eval()
    names = read_class_names(labels) if labels is not None else imagenet_class_names()
    if names is not None and len(names) != model.num_classes:
        source = f"--labels {labels}" if labels is not None else "timm's ImageNet class list"
        raise HaloRefError(
            f"{source} has {len(names)} names but {name} has {model.num_classes} classes"
        )
    return Pretrained(model, functools.partial(preprocess, cfg=PRETRAINED_CFG[name]), names)
