"""The lambda layer (timm's LambdaLayer with a local position lambda): its functional pair and
module by finite differences, and the module against timm's on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from timm_helpers import assert_layer_matches_torch

from halo_ref import HaloRefError
from halo_ref.nn.functional import lambda_backward, lambda_forward
from halo_ref.nn.layers import LambdaLayer
from halo_ref.verification.testing import check_forward_backward, check_layer_gradients


def test_functional_pair_by_finite_differences():
    rng = np.random.default_rng(0)
    B, heads, K, V, H, W, r = 2, 2, 3, 2, 5, 4, 3
    inputs = dict(
        q_map=rng.standard_normal((B, heads * K, H, W)),
        k_map=rng.standard_normal((B, K, H, W)),
        v_map=rng.standard_normal((B, V, H, W)),
        conv_weight=rng.standard_normal((K, 1, r, r)),
        conv_bias=rng.standard_normal(K),
    )
    # every input, the softmax's keys and the convolution's kernel included (rel. <= 1e-7)
    errors = check_forward_backward(lambda_forward, lambda_backward, inputs, rng=1)
    assert set(errors) == set(inputs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stride", [1, 2])
def test_module_by_finite_differences(stride, training):
    layer = LambdaLayer(6, 8, num_heads=2, dim_head=3, r=3, stride=stride, dtype=np.float64, rng=0)
    layer.train(training)
    x = np.random.default_rng(1).standard_normal((2, 6, 4, 6))
    errors = check_layer_gradients(layer, x, rng=2)
    assert set(errors) == {"x", *layer.params}


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(HaloRefError, match="r=4 must be odd"):
        LambdaLayer(8, r=4)
    with pytest.raises(HaloRefError, match="not divisible by num_heads"):
        LambdaLayer(6, num_heads=4)


@pytest.mark.torch
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_timms_lambda_layer(timm, torch, stride, training):
    """timm's LambdaLayer with our weights and random BatchNorm statistics: output, dx and
    every parameter gradient in float64 (rounding only; a wrong channel order errs by O(1))."""
    from timm.layers.lambda_layer import LambdaLayer as TimmLambda

    ours = LambdaLayer(8, 8, num_heads=2, dim_head=4, r=5, stride=stride, dtype=np.float64, rng=3)
    rng = np.random.default_rng(4)
    for name in ("norm_q", "norm_v"):  # non-trivial BatchNorm in both modes
        bn = ours.children()[name]
        for key, lo in (("weight", 0.5), ("bias", -0.5), ("running_mean", -0.5)):
            bn.params.get(key, bn.buffers.get(key))[...] = rng.uniform(lo, lo + 1, bn.num_features)
        bn.buffers["running_var"][...] = rng.uniform(0.5, 1.5, bn.num_features)
    theirs = TimmLambda(8, 8, num_heads=2, dim_head=4, r=5, stride=stride).double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    ours.train(training)
    theirs.train(training)
    assert_layer_matches_torch(torch, ours, theirs, rng.standard_normal((2, 8, 6, 6)), rng)
