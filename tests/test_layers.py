"""Every layer's hand-written backward against float64 finite differences (hypothesis over
shapes), its forward against PyTorch where torch is installed, and the module contract
(parameters, buffers, state dicts, modes, errors).

Tolerances: gradient checks use `check_gradients`' defaults (rtol 1e-7 on a directional
derivative with eps = 1e-6 in float64; see halo_ref/testing.py for why that bound is both safe
and tight). Comparisons with PyTorch in float64 use 1e-12 relative to the largest entry: both
sides round once per operation over at most a few hundred terms, i.e. ~1e-14, and any real
difference (a wrong index, a biased variance) is at least 1e-3.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import conv_cases, feature_maps

from halo_ref import HaloRefError
from halo_ref import nn as hnn
from halo_ref.nn import functional as L
from halo_ref.verification.testing import (
    GradientCheckError,
    assert_close,
    check_gradients,
    check_layer_gradients,
)

TORCH_RTOL = 1e-12  # float64 vs PyTorch float64: rounding only (see module docstring)


def check_pair(forward, backward, arrays, *, seed=0, grad_index=None):
    """FD-check a functional pair: loss = sum(cotangent * forward(**arrays)[0]).

    backward(dout, cache) returns the gradients in the order of `arrays` (or the subset
    listed in grad_index, by position in the returned tuple).
    """
    rng = np.random.default_rng(seed)
    out, cache = forward(**arrays)
    cot = rng.standard_normal(out.shape)
    grads = backward(cot, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    names = list(arrays)
    if grad_index is None:
        grad_index = {n: i for i, n in enumerate(names)}
    gmap = {n: grads[i] for n, i in grad_index.items()}
    checked = {n: arrays[n] for n in gmap}

    def loss():
        return float(np.sum(cot * forward(**arrays)[0]))

    return check_gradients(loss, checked, gmap, rng=rng)


# -- gradient checks of the functional layers -------------------------------------------------
@contextlib.contextmanager
def kernel(setting, name):
    """Run a block with one implementation of a layer: the Numba kernels or the NumPy formulas
    (setting: the switch in halo_ref.nn.functional, e.g. "SILU_KERNEL")."""
    saved = getattr(L, setting)
    setattr(L, setting, name)
    try:
        yield
    finally:
        setattr(L, setting, saved)


KERNELS = pytest.mark.parametrize("kernel_name", ["numba", "numpy"])


@KERNELS
@given(case=conv_cases())
def test_conv2d_gradients(kernel_name, case):
    """Every kernel size; 1x1 convolutions without padding take the Numba kernels by default."""
    x, w, b = case.arrays()
    arrays = {"x": x, "weight": w, "bias": b} if case.bias else {"x": x, "weight": w}

    def fwd(**a):
        return L.conv2d_forward(a["x"], a["weight"], a.get("bias"), case.stride, case.padding)

    with kernel("CONV_KERNEL", kernel_name):
        check_pair(fwd, L.conv2d_backward, arrays, seed=case.seed)


@given(feature_maps(), st.integers(1, 3), st.sampled_from([1, 2]), st.booleans())
def test_conv1x1_gradients(x, out_ch, stride, bias):
    """The pointwise convolution used by the attention layer's projections."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((out_ch, x.shape[1], 1, 1))
    arrays = {"x": x, "weight": w}
    if bias:
        arrays["bias"] = rng.standard_normal(out_ch)

    def fwd(**a):
        return L.conv1x1_forward(a["x"], a["weight"], a.get("bias"), stride)

    check_pair(fwd, L.conv1x1_backward, arrays)


@KERNELS
@given(x=feature_maps(max_side=5), training=st.booleans())
def test_batchnorm2d_gradients(kernel_name, x, training):
    if training and x.size // x.shape[1] < 2:
        x = np.concatenate([x, x[::-1] * 0.5 + 1.0])  # training needs two values per channel
    C = x.shape[1]
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)

    def fwd(**a):
        # fresh running statistics every call: the loss must not depend on how often it ran
        return L.batchnorm2d_forward(
            a["x"], a["weight"], a["bias"], rm.copy(), rv.copy(), training=training
        )

    with kernel("BATCHNORM_KERNEL", kernel_name):
        check_pair(fwd, L.batchnorm2d_backward, {"x": x, "weight": w, "bias": b})


@KERNELS
@given(x=feature_maps())
def test_relu_silu_gradients(kernel_name, x):
    check_pair(lambda x: L.relu_forward(x), L.relu_backward, {"x": x})
    with kernel("SILU_KERNEL", kernel_name):
        check_pair(lambda x: L.silu_forward(x), L.silu_backward, {"x": x})


@given(conv_cases(max_kernel=3, max_pad=1))
def test_maxpool2d_gradients(case):
    # PyTorch allows padding <= k/2 only, so every window holds a real pixel
    pad = min(case.padding, case.kernel // 2)
    x, _, _ = case.arrays()

    def fwd(x):
        return L.maxpool2d_forward(x, case.kernel, case.stride, pad)

    check_pair(fwd, L.maxpool2d_backward, {"x": x}, seed=case.seed)


@given(feature_maps(even=True))
def test_avgpool2x2_gradients(x):
    check_pair(lambda x: L.avgpool2x2_forward(x), L.avgpool2x2_backward, {"x": x})


@given(feature_maps())
def test_global_avgpool_gradients(x):
    check_pair(lambda x: L.global_avgpool_forward(x), L.global_avgpool_backward, {"x": x})


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.booleans(), st.integers(0, 99))
def test_linear_gradients(B, I, O, bias, seed):
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((B, I)), "weight": rng.standard_normal((O, I))}
    if bias:
        arrays["bias"] = rng.standard_normal(O)

    def fwd(**a):
        return L.linear_forward(a["x"], a["weight"], a.get("bias"))

    check_pair(fwd, L.linear_backward, arrays, seed=seed)


@given(st.integers(1, 5), st.integers(1, 6), st.floats(0.0, 1.0), st.integers(0, 99))
def test_cross_entropy_gradient(B, K, smoothing, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, K)) * 3
    labels = rng.integers(0, K, B)
    _, cache = L.cross_entropy_forward(logits, labels, smoothing)
    check_gradients(
        lambda: L.cross_entropy_forward(logits, labels, smoothing)[0],
        {"logits": logits},
        {"logits": L.cross_entropy_backward(cache)},
        rng=rng,
    )


def test_cross_entropy_values():
    """Hand-computed: uniform logits give log K; smoothing 1 gives the uniform target."""
    logits = np.zeros((2, 4))
    loss, _ = L.cross_entropy_forward(logits, np.array([0, 3]))
    assert abs(loss - np.log(4)) < 1e-15  # exact up to one rounding
    logits = np.array([[2.0, 0.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    loss, _ = L.cross_entropy_forward(logits, np.array([0]), 0.3)
    target = np.array([0.7 + 0.1, 0.1, 0.1])
    assert abs(loss - -(target * np.log(p)).sum()) < 1e-14  # a few roundings of O(1) values


def test_gradient_check_catches_a_wrong_backward():
    """The checks above can fail: a conv backward with the kernel flipped is rejected."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 3, 3))

    def wrong_backward(dout, cache):
        dx, dw, db = L.conv2d_backward(dout, cache)
        return dx, dw[:, :, ::-1, ::-1], db

    with pytest.raises(GradientCheckError):
        check_pair(
            lambda x, weight: L.conv2d_forward(x, weight, None, 1, 1),
            wrong_backward,
            {"x": x, "weight": w},
        )


# -- forwards against PyTorch (float64) -------------------------------------------------------
@pytest.mark.torch
@given(case=conv_cases())
def test_conv2d_matches_torch(torch, case):
    x, w, b = case.arrays()
    out, _ = L.conv2d_forward(x, w, b if case.bias else None, case.stride, case.padding)
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(w),
        torch.from_numpy(b) if case.bias else None,
        stride=case.stride,
        padding=case.padding,
    )
    assert_close(out, ref.numpy(), rtol=TORCH_RTOL, name="conv2d")


@pytest.mark.torch
@given(case=conv_cases(max_kernel=3, max_pad=1))
def test_maxpool2d_matches_torch(torch, case):
    pad = min(case.padding, case.kernel // 2)
    x, _, _ = case.arrays()
    out, _ = L.maxpool2d_forward(x, case.kernel, case.stride, pad)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), case.kernel, case.stride, pad)
    assert_close(out, ref.numpy(), rtol=0.0, name="maxpool2d")  # a max is exact


@pytest.mark.torch
@KERNELS
@given(x=feature_maps(max_side=5))
def test_batchnorm2d_matches_torch_with_running_stats(torch, kernel_name, x):
    x = np.concatenate([x, x * 0.5 - 1.0])  # at least two values per channel
    C = x.shape[1]
    mine2, ref2 = hnn.BatchNorm2d(C, dtype=np.float64), torch.nn.BatchNorm2d(C).double()
    with kernel("BATCHNORM_KERNEL", kernel_name):
        _compare_bn(torch, mine2, ref2, x)


def _compare_bn(torch, mine2, ref2, x):
    for step in range(3):
        xs = x * (1 + step) + step
        a = mine2.forward(xs)
        b = ref2(torch.from_numpy(xs)).detach().numpy()
        assert_close(a, b, rtol=TORCH_RTOL, name=f"bn train step {step}")
    for key, val in ref2.state_dict().items():
        assert_close(mine2.state_dict()[key], val.numpy(), rtol=TORCH_RTOL, name=key)
    mine2.eval()
    ref2.eval()
    assert_close(
        mine2.forward(x), ref2(torch.from_numpy(x)).detach().numpy(), rtol=TORCH_RTOL, name="eval"
    )


@pytest.mark.torch
def test_silu_linear_cross_entropy_match_torch(torch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 4, 4)) * 4
    assert_close(
        L.silu_forward(x)[0],
        torch.nn.functional.silu(torch.from_numpy(x)).numpy(),
        rtol=TORCH_RTOL,
        name="silu",
    )
    h, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    ref = torch.nn.functional.linear(*(torch.from_numpy(a) for a in (h, w, b))).numpy()
    assert_close(L.linear_forward(h, w, b)[0], ref, rtol=TORCH_RTOL, name="linear")
    logits, labels = rng.standard_normal((6, 7)) * 3, rng.integers(0, 7, 6)
    for eps in (0.0, 0.1, 1.0):
        loss, _ = L.cross_entropy_forward(logits, labels, eps)
        ref = torch.nn.functional.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=eps
        ).item()
        assert abs(loss - ref) <= TORCH_RTOL * abs(ref), (eps, loss, ref)


# -- modules ----------------------------------------------------------------------------------
@given(conv_cases(max_kernel=3, max_pad=1))
def test_conv2d_module_gradients(case):
    k = case.kernel
    layer = hnn.Conv2d(
        case.in_ch,
        case.out_ch,
        k,
        stride=case.stride,
        padding=case.padding,
        bias=case.bias,
        dtype=np.float64,
        rng=case.seed,
    )
    x, _, _ = case.arrays()
    check_layer_gradients(layer, x, rng=case.seed)
    assert set(layer.grads) == set(layer.params)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_module_gradients(training):
    layer = hnn.BatchNorm2d(3, dtype=np.float64)
    rng = np.random.default_rng(5)
    layer.params["weight"][...] = rng.standard_normal(3)
    layer.params["bias"][...] = rng.standard_normal(3)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, 3)
    layer.train(training)
    check_layer_gradients(layer, rng.standard_normal((2, 3, 3, 4)), rng=5)


def test_batchnorm2d_running_statistics_follow_pytorch_convention():
    """running = 0.9 * running + 0.1 * batch, with the unbiased variance, counted per call."""
    bn = hnn.BatchNorm2d(1, dtype=np.float64)
    x = np.array([1.0, 2.0, 3.0, 6.0]).reshape(4, 1, 1, 1)  # mean 3, unbiased variance 14/3
    bn.forward(x)
    assert np.allclose(bn.buffers["running_mean"], 0.9 * 0 + 0.1 * 3, rtol=1e-15, atol=0)
    assert np.allclose(bn.buffers["running_var"], 0.9 * 1 + 0.1 * 14 / 3, rtol=1e-15, atol=0)
    assert int(bn.buffers["num_batches_tracked"]) == 1
    bn.eval()
    before = bn.state_dict()
    bn.forward(x)
    after = bn.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # eval leaves them alone


def test_sequential_chains_forward_and_backward():
    rng = np.random.default_rng(6)
    seq = hnn.Sequential(
        hnn.ConvBnAct(2, 3, 3, act="silu", dtype=np.float64, rng=rng),
        hnn.MaxPool2d(2),
        hnn.ConvBnAct(3, 4, 1, stride=2, act="relu", dtype=np.float64, rng=rng),
        hnn.GlobalAvgPool(),
        hnn.Linear(4, 3, dtype=np.float64, rng=rng),
    )
    for p in seq.params.values():  # BN's weight 1 / bias 0 would hide mistakes
        p[...] = p + 0.3 * rng.standard_normal(p.shape)
    check_layer_gradients(seq, rng.standard_normal((3, 2, 8, 8)), rng=6)
    assert sorted(seq.grads) == sorted(seq.params)
    assert "0.bn.running_mean" in seq.state_dict() and "0.bn.running_mean" not in seq.params
    assert "0.conv.weight" in seq.params and "0.conv.bias" not in seq.params


def test_state_dict_includes_buffers_and_loads_strictly():
    a = hnn.ConvBnAct(2, 3, 3, dtype=np.float32, rng=0)
    b = hnn.ConvBnAct(2, 3, 3, dtype=np.float32, rng=1)
    a.forward(np.ones((2, 2, 4, 4), np.float32))  # moves the running statistics
    state = a.state_dict()
    assert sorted(state) == [
        "bn.bias",
        "bn.num_batches_tracked",
        "bn.running_mean",
        "bn.running_var",
        "bn.weight",
        "conv.weight",
    ]
    b.load_state_dict(state)
    assert all(np.array_equal(b.state_dict()[k], v) for k, v in state.items())
    missing = {k: v for k, v in state.items() if k != "bn.running_var"}
    with pytest.raises(HaloRefError, match="missing key.*bn.running_var"):
        b.load_state_dict(missing)
    with pytest.raises(HaloRefError, match="unexpected key"):
        b.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(HaloRefError, match="shape"):
        b.load_state_dict({**state, "bn.running_mean": np.zeros(4)})


# -- bad input: one-line errors ----------------------------------------------------------------
def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def test_cross_entropy_rejects_bad_labels():
    logits = np.zeros((3, 4))
    with pytest.raises(HaloRefError, match=r"label 4 is out of range for 4 classes") as e:
        L.cross_entropy_forward(logits, np.array([0, 4, 1]))
    one_line(e)
    with pytest.raises(HaloRefError, match="label -1 is out of range"):
        L.cross_entropy_forward(logits, np.array([0, -1, 1]))
    with pytest.raises(HaloRefError, match="integers") as e:
        L.cross_entropy_forward(logits, np.array([0.0, 1.0, 2.0]))
    one_line(e)
    with pytest.raises(HaloRefError, match="shape"):
        L.cross_entropy_forward(logits, np.eye(4)[:3].astype(int))
    with pytest.raises(HaloRefError, match="label_smoothing"):
        L.cross_entropy_forward(logits, np.array([0, 1, 2]), 1.5)


def test_layers_reject_bad_input():
    conv = hnn.Conv2d(3, 4, 3, padding=1, rng=0)
    with pytest.raises(HaloRefError, match="2 channels.*expected 3") as e:
        conv.forward(np.zeros((1, 2, 5, 5), np.float32))
    one_line(e)
    with pytest.raises(HaloRefError, match="dtype float64"):
        conv.forward(np.zeros((1, 3, 5, 5)))
    with pytest.raises(HaloRefError, match="4-D"):
        conv.forward(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(HaloRefError, match="call forward before backward"):
        hnn.Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(HaloRefError, match="batch of 2 or more") as e:
        hnn.BatchNorm2d(2).forward(np.zeros((1, 2, 1, 1), np.float32))
    one_line(e)
    with pytest.raises(HaloRefError, match="act="):
        hnn.ConvBnAct(1, 1, act="gelu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm2d_kernels_agree(dtype):
    """The Numba kernels and the NumPy formulas: same outputs, gradients, running statistics.

    Tolerance: 1e-5 (float32) / 1e-12 (float64) relative to the largest entry; the two sum in
    different orders (the kernel in float64), so they differ by rounding only.
    """
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 5, 6, 7)) * 3 + 2).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    results = []
    for name in ("numpy", "numba"):
        rm, rv = np.zeros(5, dtype), np.ones(5, dtype)
        with kernel("BATCHNORM_KERNEL", name):
            out, cache = L.batchnorm2d_forward(x, w, b, rm, rv, training=True)
            results.append((out, *L.batchnorm2d_backward(g, cache), rm, rv))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, a, c in zip(("out", "dx", "dw", "db", "rm", "rv"), *results, strict=True):
        assert a.dtype == dtype, name
        assert_close(a, c, rtol=rtol, name=name)
