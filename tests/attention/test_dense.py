"""Halo attention equals masked global attention, and both equal the per-pixel definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import core_cases, layer_cases

from halo_ref import HaloAttention
from halo_ref.attention.core import halo_attention_backward, halo_attention_forward
from halo_ref.attention.dense import (
    dense_halo_attention_backward,
    dense_halo_attention_forward,
    halo_attention_loops,
    halo_neighbourhood,
)
from halo_ref.nn.functional import avgpool2x2_forward

# Blocked and dense attention sum the same terms in different orders and groupings; in float64
# that leaves relative differences of a few 1e-16 per operation. 1e-12 is the bound.
RTOL64 = 1e-12


def assert_close64(actual, expected, name="array"):
    """|actual - expected| <= 1e-12 * max(max |expected|, 1), elementwise.

    Inputs are O(1) random numbers, so every term of every sum is O(1). Some exact results are 0
    (with one key column in the window, the width-table gradient is a sum of softmax gradients,
    which cancel exactly), and then only round-off of O(1) terms is left: the floor of 1 keeps
    the check meaningful there instead of comparing 1e-18 with 7e-18.
    """
    assert actual.shape == expected.shape, name
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL64 * scale, err_msg=name)


GRAD_NAMES = ("dq_map", "dkv_map", "dheight_rel", "dwidth_rel")


@given(core_cases())
def test_core_equals_dense_oracle_outputs_and_gradients(case):
    q, kv, rh, rw = case.arrays()
    out, cache = halo_attention_forward(q, kv, rh, rw, **case.kwargs())
    ref, ref_cache = dense_halo_attention_forward(q, kv, rh, rw, **case.kwargs())
    assert_close64(out, ref, "out")
    dout = np.random.default_rng(case.seed + 7).standard_normal(out.shape)
    grads = halo_attention_backward(dout, cache)
    ref_grads = dense_halo_attention_backward(dout, ref_cache)
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close64(g, r, name)


@settings(max_examples=10)
@given(core_cases(max_block=4, max_halo=3, max_blocks=2))
def test_core_equals_per_pixel_definition(case):
    q, kv, rh, rw = case.arrays()
    out, _ = halo_attention_forward(q, kv, rh, rw, **case.kwargs())
    assert_close64(out, halo_attention_loops(q, kv, rh, rw, **case.kwargs()))


@given(layer_cases())
def test_layer_equals_projections_plus_dense_oracle(case):
    """The whole layer (stride 2, avg_down, bias included) against an oracle-built layer."""
    layer = HaloAttention(
        case.dim, case.dim_out, dtype=np.float64, rng=case.seed, **case.layer_kwargs()
    )
    x = case.input()
    q, kv = layer.project(x)
    rel = layer.params["pos_embed.height_rel"], layer.params["pos_embed.width_rel"]
    ref, _ = dense_halo_attention_forward(q, kv, *rel, **layer.core_kwargs())
    if layer.pool:
        ref, _ = avgpool2x2_forward(ref)
    out = layer.forward(x)
    assert out.shape == (case.batch, case.dim_out, case.H // case.stride, case.W // case.stride)
    assert_close64(out, ref)


def test_mask_border_differs_from_zeros_only_near_the_border():
    """Zero-padded keys take softmax weight; masking them changes exactly the border blocks."""
    rng = np.random.default_rng(3)
    kw = dict(num_heads=1, block_size=2, halo_size=1, scale=1.0)
    q = rng.standard_normal((1, 2, 8, 8))
    kv = rng.standard_normal((1, 4, 8, 8))
    rh, rw = rng.standard_normal((2, 7, 2))
    zeros, _ = halo_attention_forward(q, kv, rh, rw, border="zeros", **kw)
    masked, _ = halo_attention_forward(q, kv, rh, rw, border="mask", **kw)
    changed = np.abs(zeros - masked).max(axis=(0, 1)) > 1e-9
    border = np.ones((8, 8), bool)
    border[2:6, 2:6] = False  # interior blocks' windows stay inside the image
    np.testing.assert_array_equal(changed, border)


@pytest.mark.parametrize("border", ["zeros", "mask"])
def test_neighbourhood_keeps_exactly_one_window_per_query(border):
    H, W, b, h = 6, 8, 2, 1  # the middle blocks have windows wholly inside
    mask, idx_h, idx_w = halo_neighbourhood(H, W, b, h, border=border)
    kept = np.isfinite(mask).sum(axis=1)
    if border == "zeros":
        assert (kept == (b + 2 * h) ** 2).all()
    else:
        assert kept.min() == 3 * 3 and kept.max() == (b + 2 * h) ** 2  # a corner block sees 3 x 3
    assert idx_h.min() >= 0 and idx_h.max() <= 2 * (b + 2 * h) - 2
