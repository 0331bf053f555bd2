"""halo_ref against timm's `HaloAttn` with the same weights: outputs, dx and weight gradients.

Runs wherever torch and timm are installed (and must run in CI: see tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from halo_ref import HaloAttention
from halo_ref.verification.torch_side import timm_halo_attn_from

pytestmark = pytest.mark.torch

CONFIGS = [
    # block, halo, stride, avg_down, qkv_bias, scale_pos_embed, dim_head, H, W
    (4, 1, 1, False, False, False, None, 8, 8),
    (4, 0, 1, False, True, False, None, 8, 12),
    (2, 3, 1, False, False, True, None, 6, 4),  # halo > block
    (8, 3, 1, False, False, False, None, 16, 16),  # timm's defaults
    (8, 2, 2, False, True, False, None, 16, 8),  # queries subsampled
    (4, 2, 2, True, False, True, None, 8, 8),  # avg_down: full-resolution attention + pool
    (3, 1, 2, False, False, False, None, 6, 12),  # odd block: pooled
    (6, 2, 2, False, True, True, 5, 12, 6),  # explicit dim_head
]
IDS = [f"b{c[0]}-h{c[1]}-s{c[2]}{'-avg' if c[3] else ''}{'-bias' if c[4] else ''}"
       f"{'-spe' if c[5] else ''}{'-dh' if c[6] else ''}" for c in CONFIGS]  # fmt: skip

# float64: both sides compute the same sums in different orders (timm uses unfold and a
# pad-and-reshape trick for the relative logits); 1e-10 leaves room for accumulated round-off.
# float32: a few ulps of 6e-8 per operation over sums of ~100 terms stay well below 1e-5.
TOLERANCES = {np.float64: 1e-10, np.float32: 1e-5}


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_matches_timm(config, dtype, torch, timm_halo_attn):
    b, h, stride, avg_down, bias, spe, dim_head, H, W = config
    layer = HaloAttention(
        12, 16, num_heads=4, dim_head=dim_head, block_size=b, halo_size=h, stride=stride,
        avg_down=avg_down, qkv_bias=bias, scale_pos_embed=spe, dtype=dtype, rng=b * 10 + h,
    )  # fmt: skip
    module = timm_halo_attn_from(layer)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, H, W)).astype(dtype)
    x_t = torch.tensor(x, requires_grad=True)
    out_t = module(x_t)
    dout = rng.standard_normal(tuple(out_t.shape)).astype(dtype)
    out_t.backward(torch.from_numpy(dout))

    out = layer.forward(x)
    dx = layer.backward(dout)
    tol = TOLERANCES[dtype]
    assert rel(out, out_t.detach().numpy()) <= tol
    assert rel(dx, x_t.grad.numpy()) <= tol
    timm_grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    assert set(timm_grads) == set(layer.grads)
    for key, g in timm_grads.items():
        assert rel(layer.grads[key], g) <= tol, key


def test_timm_weights_load_into_halo_ref(torch, timm_halo_attn):
    """A fresh timm module's state dict (tensors) loads directly, and forwards agree."""
    module = timm_halo_attn.HaloAttn(16, 16, num_heads=2, block_size=4, halo_size=2).double()
    layer = HaloAttention(16, 16, num_heads=2, block_size=4, halo_size=2, dtype=np.float64)
    layer.load_state_dict(module.state_dict())
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8))
    expected = module(torch.from_numpy(x)).detach().numpy()
    assert rel(layer.forward(x), expected) <= 1e-10  # float64, as above
