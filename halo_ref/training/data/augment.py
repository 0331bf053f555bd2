"""From uint8 images to normalised float batches, and the augmentations used while training.

Normalisation subtracts the training set's per-channel mean and divides by its standard
deviation, so every channel enters the network with mean 0 and variance 1. Augmentation
(random crop from a zero-padded image, horizontal flip) draws from a NumPy Generator that the
caller owns, so a run is reproducible from its seed and can be resumed mid-epoch from the
generator's saved state.
"""

from __future__ import annotations

import numpy as np


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images x: (N, H, W, C) -> (C,), (C,)."""
    xf = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = xf.mean(axis=0)
    std = xf.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)  # a constant channel is centred, not divided by 0


def normalise(x: np.ndarray, mean, std, dtype=np.float32) -> np.ndarray:
    """uint8 images x: (N, H, W, C) -> float (N, C, H, W) with per-channel mean 0, std 1."""
    out = (x.astype(np.float64) - mean) / std  # N, H, W, C
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=dtype)  # N, C, H, W


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad normalised x: (N, C, H, W) so that H and W are multiples of `multiple`.

    The padding is split between both sides (the extra pixel, if odd, goes bottom/right), so
    the image stays centred. Zero is the mean after normalisation. Returns the padded array
    and the padded (H, W).
    """
    H, W = x.shape[2:]
    Hp, Wp = padded_size(H, multiple), padded_size(W, multiple)
    if (Hp, Wp) == (H, W):
        return x, (H, W)
    top, left = (Hp - H) // 2, (Wp - W) // 2
    pad = ((0, 0), (0, 0), (top, Hp - H - top), (left, Wp - W - left))
    return np.pad(x, pad), (Hp, Wp)


def augment(x: np.ndarray, rng: np.random.Generator, *, crop_pad: int, flip: bool) -> np.ndarray:
    """Random crop after zero-padding by `crop_pad`, then a random horizontal flip per image.

    x: (B, C, H, W) normalised; returns a new (B, C, H, W) array. Draws, in this order, B crop
    offsets in y, B in x, then B coin flips (only those that are enabled), so the same
    generator state gives the same batch.
    """
    B, C, H, W = x.shape
    out = x
    if crop_pad > 0:
        p = crop_pad
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # B, C, H+2p, W+2p
        dy = rng.integers(0, 2 * p + 1, size=B)
        dx = rng.integers(0, 2 * p + 1, size=B)
        out = np.empty_like(x)
        for i in range(B):
            out[i] = padded[i, :, dy[i] : dy[i] + H, dx[i] : dx[i] + W]
    if flip:
        mirror = rng.random(B) < 0.5
        out = out.copy() if out is x else out
        out[mirror] = out[mirror, :, :, ::-1]
    return out
