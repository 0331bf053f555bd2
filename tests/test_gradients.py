"""Finite-difference checks of every hand-written backward of the halo attention layer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import core_cases, layer_cases

from halo_ref import HaloAttention
from halo_ref.attention import halo_attention_backward, halo_attention_forward
from halo_ref.verification.testing import GradientCheckError, check_gradients, check_layer_gradients


@settings(max_examples=15)
@given(layer_cases())
def test_layer_gradients_match_finite_differences(case):
    layer = HaloAttention(
        case.dim, case.dim_out, dtype=np.float64, rng=case.seed, **case.layer_kwargs()
    )
    # dx and every parameter along a random direction; rel. error <= 1e-7 (see halo_ref.verification.testing)
    errors = check_layer_gradients(layer, case.input(), rng=case.seed)
    assert set(errors) == {"x", *layer.params}


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


class _WrongBackward(HaloAttention):
    """A layer whose backward forgets the position-table term of dq (a plausible slip)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self._grads["pos_embed.width_rel"] = self._grads["pos_embed.width_rel"] * 1.001
        return dx


def test_checker_catches_a_wrong_parameter_gradient():
    layer = _WrongBackward(4, 4, num_heads=2, block_size=2, halo_size=1, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4))
    with pytest.raises(GradientCheckError, match="pos_embed.width_rel"):
        check_layer_gradients(layer, x, rng=0)


def test_checker_catches_a_wrong_input_gradient(monkeypatch):
    import halo_ref.attention.core as attention

    # a softmax backward that forgets the "- sum(dp * p)" term
    monkeypatch.setattr(attention, "softmax_backward", lambda dp, p: p * dp)
    layer = HaloAttention(
        4, 4, num_heads=2, block_size=2, halo_size=1, dtype=np.float64, rng=1, backend="numpy"
    )
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 4))
    with pytest.raises(GradientCheckError, match="x:"):
        check_layer_gradients(layer, x, rng=1)


def test_checker_refuses_float32():
    layer = HaloAttention(2, 2, num_heads=1, block_size=2, halo_size=1, rng=0)
    with pytest.raises(TypeError, match="float64"):
        check_gradients(lambda: 0.0, layer.params, layer.params)
