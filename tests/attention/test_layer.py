"""HaloAttention's public contract: shapes, dtypes, state dicts, initialisation, errors, and its
gradients by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import layer_cases

from halo_ref import HaloAttention, HaloRefError
from halo_ref.attention.layer import downsampling
from halo_ref.nn.init import make_divisible
from halo_ref.verification.testing import GradientCheckError, check_gradients, check_layer_gradients


def small(**kw):
    args = dict(num_heads=2, block_size=4, halo_size=1, rng=0)
    args.update(kw)
    return HaloAttention(8, 8, **args)


def test_dimensions_follow_timm_rules():
    layer = HaloAttention(64, 128, num_heads=8, block_size=8, halo_size=3)
    assert (layer.dim_head_qk, layer.dim_head_v, layer.win_size) == (16, 16, 14)
    assert layer.scale == 16**-0.5
    assert layer.params["kv.weight"].shape == (8 * 32, 64, 1, 1)
    assert layer.params["pos_embed.height_rel"].shape == (27, 16)
    # qk_ratio rounds the total q/k width to a multiple of 8 before splitting by heads
    assert HaloAttention(64, 64, num_heads=4, qk_ratio=0.5).dim_head_qk == 8
    assert HaloAttention(64, 64, num_heads=4, dim_head=5).dim_head_qk == 5
    assert make_divisible(20) == 24 and make_divisible(12) == 16 and make_divisible(3) == 8


@pytest.mark.parametrize(
    "kw, pool, query_stride",
    [
        (dict(stride=1), False, 1),
        (dict(stride=2), False, 2),
        (dict(stride=2, avg_down=True), True, 1),
        (dict(stride=2, block_size=3), True, 1),
    ],
)
def test_stride_paths_and_output_shape(kw, pool, query_stride):
    layer = small(**kw)
    assert (layer.pool, layer.query_stride) == (pool, query_stride)
    assert downsampling(layer.stride, layer.block_size, layer.avg_down) == (pool, query_stride)
    b = layer.block_size
    x = np.random.default_rng(0).standard_normal((2, 8, 4 * b, 2 * b)).astype(np.float32)
    out = layer.forward(x)
    assert out.shape == (2, 8, 4 * b // layer.stride, 2 * b // layer.stride)
    assert layer.backward(np.ones_like(out)).shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_honoured_end_to_end(dtype):
    layer = small(dtype=dtype, qkv_bias=True, stride=2)
    assert all(p.dtype == dtype for p in layer.params.values())
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(dtype)
    out = layer.forward(x)
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dtype and dx.dtype == dtype
    assert all(g.dtype == dtype for g in layer.grads.values())
    assert set(layer.grads) == set(layer.params)


def test_initialisation_is_seeded_and_scaled_like_timm():
    a, b = HaloAttention(256, num_heads=8, rng=1), HaloAttention(256, num_heads=8, rng=1)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    # std dim**-0.5 for projections, d_qk**-0.5 for the tables (65k and 864 samples: 5% slack)
    assert abs(a.params["kv.weight"].std() / 256**-0.5 - 1) < 0.05
    assert abs(a.params["pos_embed.width_rel"].std() / a.scale - 1) < 0.1
    assert not np.array_equal(a.params["q.weight"], HaloAttention(256, rng=2).params["q.weight"])


def test_state_dict_round_trip_and_copies():
    a, b = small(qkv_bias=True, rng=0), small(qkv_bias=True, rng=1)
    state = a.state_dict()
    assert sorted(state) == ["kv.bias", "kv.weight", "pos_embed.height_rel",
                             "pos_embed.width_rel", "q.bias", "q.weight"]  # fmt: skip
    state["q.weight"] += 1  # a copy: the layer is unchanged
    assert not np.array_equal(state["q.weight"], a.params["q.weight"])
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_load_state_dict_accepts_lists_and_casts_to_the_layer_dtype():
    a = small(dtype=np.float64)
    b = small(dtype=np.float32, rng=5)
    b.load_state_dict({k: v.tolist() for k, v in a.state_dict().items()})
    assert b.params["q.weight"].dtype == np.float32
    np.testing.assert_array_equal(b.params["q.weight"], a.params["q.weight"].astype(np.float32))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("q.weight"), r"missing key\(s\) \['q.weight'\]"),
        (lambda s: s.update(extra=np.zeros(1)), r"unexpected key\(s\) \['extra'\]"),
        (lambda s: s.update({"kv.weight": np.zeros((3, 8, 1, 1))}), "'kv.weight' has shape"),
        (lambda s: s["pos_embed.width_rel"].__setitem__((0, 0), np.nan), "NaN or inf"),
        (lambda s: s.update({"q.weight": np.full((8, 8, 1, 1), "a")}), "expected numbers"),
    ],
)
def test_load_state_dict_is_strict_and_atomic(edit, message):
    layer = small()
    before = layer.state_dict()
    state = small(rng=9).state_dict()
    edit(state)
    with pytest.raises(HaloRefError, match=message):
        layer.load_state_dict(state)
    for key, value in before.items():  # nothing was half-loaded
        np.testing.assert_array_equal(layer.params[key], value)


def x32(*shape):
    return np.zeros(shape, dtype=np.float32)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: x32(8, 8, 8), r"must be 4-D \(B, C, H, W\).*add a batch axis with x\[None\]"),
        # a 5-D input was once told to add a batch axis too
        (
            lambda: x32(2, 1, 8, 8, 8),
            r"got shape \(2, 1, 8, 8, 8\); merge the leading axes into "
            r"the batch with x.reshape\(-1, \*x.shape\[-3:\]\)$",
        ),
        (lambda: x32(1, 3, 8, 8), "has 3 channels .* expects 8"),
        (lambda: x32(1, 8, 6, 8), "H=6 is not a multiple of block_size=4"),
        (lambda: x32(1, 8, 8, 10), "W=10 is not a multiple of block_size=4; pad or crop"),
        (lambda: np.zeros((1, 8, 8, 8), np.int64), "has dtype int64 .*; cast with x.astype"),
        (lambda: np.zeros((1, 8, 8, 8)), "has dtype float64 but the layer is float32"),
        (lambda: [[1.0]], "must be a NumPy array"),
        (lambda: np.full((1, 8, 8, 8), np.nan, np.float32), "NaN or inf"),
    ],
)
def test_bad_input_gets_a_one_line_error(make_input, message):
    with pytest.raises(HaloRefError, match=message) as info:
        small().forward(make_input())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_empty_batch_is_the_same_clear_error_on_both_backends(backend):
    # once a ZeroDivisionError from the Numba kernels and a reshape ValueError from NumPy's
    with pytest.raises(HaloRefError, match=r"^HaloAttention.forward: x holds no images \(shape "
                       r"\(0, 8, 8, 8\)\); pass a batch of at least one$"):  # fmt: skip
        small(backend=backend).forward(x32(0, 8, 8, 8))


def test_stride_must_divide_the_map():
    layer = HaloAttention(4, 4, num_heads=1, block_size=3, halo_size=1, stride=2, rng=0)
    with pytest.raises(HaloRefError, match="H=3 is not a multiple of stride=2"):
        layer.forward(x32(1, 4, 3, 6))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(stride=3), "stride=3 is not supported"),
        (dict(halo_size=-1), "halo_size must be >= 0"),
        (dict(block_size=0), "block_size must be >= 1"),
        (dict(num_heads=3), "dim_out=8 is not divisible by num_heads=3"),
        (dict(border="reflect"), "border='reflect' is not supported"),
        (dict(dtype=np.int32), "dtype=int32 is not supported"),
        (dict(backend="cuda"), "backend='cuda' is not supported"),
        (dict(block_size=2.5), "block_size must be an integer"),
        (dict(qk_ratio=0), "qk_ratio must be a finite number > 0, got 0"),
        (dict(qk_ratio=-1.0), "qk_ratio must be a finite number > 0, got -1.0"),
        (dict(qk_ratio=float("nan")), "qk_ratio must be a finite number > 0, got nan"),
        (dict(rng=-1), "rng=-1: a seed must be an integer >= 0"),
    ],
)
def test_bad_arguments_get_a_one_line_error(kw, message):
    with pytest.raises(HaloRefError, match=message):
        small(**kw)


def test_backward_errors():
    layer = small()
    with pytest.raises(HaloRefError, match="call forward before backward"):
        layer.backward(x32(1, 8, 8, 8))
    layer.forward(x32(1, 8, 8, 8))
    with pytest.raises(HaloRefError, match=r"dout must have the output's shape \(1, 8, 8, 8\)"):
        layer.backward(x32(1, 8, 4, 4))
    with pytest.raises(HaloRefError, match="dout has dtype float64"):
        layer.backward(np.zeros((1, 8, 8, 8)))


# -- gradients -------------------------------------------------------------------------------------
@settings(max_examples=15)
@given(layer_cases())
def test_layer_gradients_match_finite_differences(case):
    layer = HaloAttention(
        case.dim, case.dim_out, dtype=np.float64, rng=case.seed, **case.layer_kwargs()
    )
    # dx and every parameter along a random direction; rel. error <= 1e-7 (see
    # halo_ref.verification.testing)
    errors = check_layer_gradients(layer, case.input(), rng=case.seed)
    assert set(errors) == {"x", *layer.params}


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


def test_checker_refuses_float32():
    layer = HaloAttention(2, 2, num_heads=1, block_size=2, halo_size=1, rng=0)
    with pytest.raises(TypeError, match="float64"):
        check_gradients(lambda: 0.0, layer.params, layer.params)
