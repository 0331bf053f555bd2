"""Weight initialisation and channel rounding, matching timm's choices so that fresh layers
behave alike and widths agree.

All draws come from a `numpy.random.Generator`, so a seed fixes every weight.
"""

from __future__ import annotations

import numpy as np

from .._checks import HaloRefError


def as_generator(rng) -> np.random.Generator:
    """Turn a seed, None or a Generator into a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng < 0:
        raise HaloRefError(f"rng={rng}: a seed must be an integer >= 0 (NumPy's generators)")
    return np.random.default_rng(rng)


def trunc_normal(rng: np.random.Generator, shape, std: float, dtype, *, a=-2.0, b=2.0):
    """Normal(0, std) samples truncated to [a, b] (absolute bounds, as timm's `trunc_normal_`).

    Resamples the (rare) draws outside the bounds, so the result is exactly the truncated law.
    """
    out = rng.standard_normal(shape) * std
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum())) * std
        bad = (out < a) | (out > b)
    return out.astype(dtype)


def uniform_fan_in(rng: np.random.Generator, shape, fan_in: int, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for convolution and linear biases."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """Round `v` to a multiple of `divisor` without losing more than 10% (timm's channel rule).

    The models' widths use it (`halo_ref.models.configs`), and so does `HaloAttention` for the
    query/key width that `qk_ratio` sets; it lives here, below both.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v
