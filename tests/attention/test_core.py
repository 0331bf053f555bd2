"""halo_ref.attention.core, the NumPy page: finite-difference checks of its two hand-written
backwards (the core on projected maps, and the layer's projections plus the core), and a check
that the checker sees a plausible slip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import core_cases, layer_cases

import halo_ref.attention.core as core
from halo_ref import HaloAttention
from halo_ref.attention.core import (
    halo_attention_backward,
    halo_attention_forward,
    halo_layer_backward,
    halo_layer_forward,
)
from halo_ref.verification.testing import GradientCheckError, check_gradients, check_layer_gradients


@settings(max_examples=15)
@given(core_cases())
def test_core_gradients_match_finite_differences(case):
    q, kv, rh, rw = case.arrays()
    rng = np.random.default_rng(case.seed)
    out, cache = halo_attention_forward(q, kv, rh, rw, **case.kwargs())
    cot = rng.standard_normal(out.shape)
    dq, dkv, drh, drw = halo_attention_backward(cot, cache)

    def loss():
        return float(np.sum(cot * halo_attention_forward(q, kv, rh, rw, **case.kwargs())[0]))

    check_gradients(
        loss, {"q": q, "kv": kv, "rh": rh, "rw": rw}, {"q": dq, "kv": dkv, "rh": drh, "rw": drw}
    )


@settings(max_examples=10)
@given(layer_cases())
def test_layer_pipeline_gradients_match_finite_differences(case):
    """halo_layer_forward / _backward: dx and every parameter's gradient by timm's name."""
    layer = HaloAttention(
        case.dim, case.dim_out, dtype=np.float64, rng=case.seed, **case.layer_kwargs()
    )
    params, x = layer.params, case.input()
    kwargs = layer.core_kwargs()
    out, cache = halo_layer_forward(x, params, **kwargs)
    cot = np.random.default_rng(case.seed).standard_normal(out.shape)
    dx, grads = halo_layer_backward(cot, cache)
    assert set(grads) == set(params)

    def loss():
        return float(np.sum(cot * halo_layer_forward(x, params, **kwargs)[0]))

    check_gradients(loss, {"x": x, **params}, {"x": dx, **grads})


def test_checker_catches_a_wrong_input_gradient(monkeypatch):
    # a softmax backward that forgets the "- sum(dp * p)" term
    monkeypatch.setattr(core, "softmax_backward", lambda dp, p: p * dp)
    layer = HaloAttention(
        4, 4, num_heads=2, block_size=2, halo_size=1, dtype=np.float64, rng=1, backend="numpy"
    )
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 4))
    with pytest.raises(GradientCheckError, match="x:"):
        check_layer_gradients(layer, x, rng=1)
