"""halo_ref.attention.bottleneck: timm's BottleneckAttn as halo attention with one block and no
halo; finite differences for every gradient, and timm's own layer on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from timm_helpers import assert_layer_matches_torch

from halo_ref import HaloRefError
from halo_ref.attention.bottleneck import BottleneckAttention
from halo_ref.verification.testing import check_layer_gradients


def layer(**kw):
    args = dict(feat_size=4, num_heads=2, dtype=np.float64, rng=0)
    args.update(kw)
    return BottleneckAttention(8, 8, **args)


@pytest.mark.parametrize(
    "kw",
    [{}, dict(stride=2), dict(qkv_bias=True), dict(scale_pos_embed=True), dict(dim_head=2)],
    ids=["plain", "stride2", "bias", "spe", "dv"],
)
def test_gradients_by_finite_differences(kw):
    m = layer(**kw)
    x = np.random.default_rng(1).standard_normal((2, 8, 4, 4))
    # dx and every parameter (qkv.weight: the rows rearranged back) along a random direction
    errors = check_layer_gradients(m, x, rng=2)
    assert set(errors) == {"x", *m.params}


def test_names_and_shapes_are_timms():
    m = layer(qkv_bias=True, dim_head=2)
    # 2 heads: q 2x2, k 2x2, v 2x4 rows; tables 2*4 - 1 rows of d_qk
    assert {k: v.shape for k, v in m.params.items()} == {
        "qkv.weight": (16, 8, 1, 1),
        "qkv.bias": (16,),
        "pos_embed.height_rel": (7, 2),
        "pos_embed.width_rel": (7, 2),
    }


def test_another_map_size_is_refused():
    m = layer()
    with pytest.raises(HaloRefError, match="built for 4x4 maps"):
        m.forward(np.zeros((1, 8, 8, 8)))  # two blocks of 4 would run silently otherwise
    with pytest.raises(HaloRefError, match="feat_size=5 is odd"):
        layer(feat_size=5, stride=2)


@pytest.mark.torch
@pytest.mark.parametrize(
    "kw",
    [dict(stride=1), dict(stride=2), dict(stride=1, qkv_bias=True, scale_pos_embed=True)],
    ids=["s1", "s2", "bias-spe"],
)
def test_matches_timms_bottleneck_attn(timm, torch, kw):
    """timm's BottleneckAttn with our weights: output, dx and every gradient in float64."""
    from timm.layers.bottleneck_attn import BottleneckAttn

    ours = BottleneckAttention(8, 16, feat_size=6, num_heads=2, dtype=np.float64, rng=3, **kw)
    theirs = BottleneckAttn(8, 16, feat_size=6, num_heads=2, **kw).double()
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.params.items()})
    rng = np.random.default_rng(4)
    assert_layer_matches_torch(torch, ours, theirs, rng.standard_normal((2, 8, 6, 6)), rng)
