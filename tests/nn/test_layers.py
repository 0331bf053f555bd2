"""halo_ref.nn.layers and halo_ref.nn.module: the layers as modules (parameters, buffers, state
dicts, modes, errors), their gradients by finite differences, and BatchNorm's running
statistics against PyTorch.

Tolerances: as tests/nn/test_functional.py (check_gradients' defaults; 1e-12 against PyTorch in
float64, rounding only).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from strategies import conv_cases, feature_maps

from halo_ref import HaloRefError, backend
from halo_ref.nn import layers as hnn
from halo_ref.verification.testing import assert_close, check_layer_gradients

TORCH_RTOL = 1e-12  # float64 vs PyTorch float64: rounding only


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.torch
@pytest.mark.parametrize("on", ["numpy", "numba"])
@given(x=feature_maps(max_side=5))
def test_batchnorm2d_matches_torch_with_running_stats(torch, on, x):
    x = np.concatenate([x, x * 0.5 - 1.0])  # at least two values per channel
    C = x.shape[1]
    mine2, ref2 = hnn.BatchNorm2d(C, dtype=np.float64), torch.nn.BatchNorm2d(C).double()
    with backend.use(on):
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
def test_layers_reject_bad_input():
    conv = hnn.Conv2d(3, 4, 3, padding=1, rng=0)
    with pytest.raises(HaloRefError, match="2 channels.*expects 3") as e:
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
def test_batchnorm2d_on_both_backends_agrees(dtype):
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
        on = backend.resolve(name)
        out, cache = on.batchnorm2d_forward(x, w, b, rm, rv, training=True)
        results.append((out, *on.batchnorm2d_backward(g, cache), rm, rv))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, a, c in zip(("out", "dx", "dw", "db", "rm", "rv"), *results, strict=True):
        assert a.dtype == dtype, name
        assert_close(a, c, rtol=rtol, name=name)


# -- the layers of timm's HaloNets -----------------------------------------------------------------
TIMM_LAYERS = {
    "grouped conv": (
        lambda: hnn.GroupedConv2d(4, 6, 3, groups=2, padding=1, dtype=np.float64, rng=0),
        (2, 4, 4, 4),
    ),
    "squeeze-excite": (lambda: hnn.SqueezeExcite(8, 4, dtype=np.float64, rng=0), (2, 8, 3, 3)),
    "eca": (lambda: hnn.EfficientChannelAttention(8, dtype=np.float64, rng=0), (2, 8, 3, 3)),
    "bn + silu": (lambda: hnn.BatchNormAct2d(4, act="silu", dtype=np.float64), (3, 4, 3, 3)),
    "grouped ConvBnAct": (
        lambda: hnn.ConvBnAct(4, 8, 3, stride=2, groups=4, dtype=np.float64, rng=0),
        (2, 4, 5, 5),
    ),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", TIMM_LAYERS)
def test_timm_layer_modules_gradients(name, training):
    make, shape = TIMM_LAYERS[name]
    layer = make()
    layer.train(training)
    check_layer_gradients(layer, np.random.default_rng(3).standard_normal(shape), rng=4)
    assert set(layer.grads) == set(layer.params)


def test_grouped_conv_rejects_groups_that_do_not_divide():
    with pytest.raises(HaloRefError, match="groups=4 must divide in_channels=6") as e:
        hnn.GroupedConv2d(6, 8, 3, groups=4)
    one_line(e)
    conv = hnn.GroupedConv2d(4, 8, 3, groups=2, padding=1)
    with pytest.raises(HaloRefError, match="2 channels.*expects 4"):
        conv.forward(np.zeros((1, 2, 5, 5), np.float32))
    assert conv.params["weight"].shape == (8, 2, 3, 3) and "groups=2" in repr(conv)


@pytest.mark.torch
def test_timm_layer_modules_match_timm(timm, torch):
    """timm's SEModule, EcaModule, BatchNormAct2d and torch's grouped Conv2d on the same random
    weights: outputs, dx and every parameter gradient (float64, TORCH_RTOL)."""
    from timm.layers import BatchNormAct2d, EcaModule, SEModule

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 5, 5))
    cases = [
        (SEModule(32, rd_channels=8), hnn.SqueezeExcite(32, 8, dtype=np.float64, rng=0)),
        (EcaModule(32), hnn.EfficientChannelAttention(32, dtype=np.float64, rng=0)),
        (
            BatchNormAct2d(32, act_layer="silu"),
            hnn.BatchNormAct2d(32, act="silu", dtype=np.float64),
        ),
        (
            torch.nn.Conv2d(32, 16, 3, stride=2, padding=1, groups=4, bias=False),
            hnn.GroupedConv2d(
                32, 16, 3, groups=4, stride=2, padding=1, bias=False, dtype=np.float64, rng=0
            ),
        ),
    ]
    for theirs, ours in cases:
        theirs = theirs.double()
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_()
        ours.load_state_dict(theirs.state_dict())
        xt = torch.tensor(x, requires_grad=True)
        out = theirs(xt)
        dout = rng.standard_normal(tuple(out.shape))
        out.backward(torch.tensor(dout))
        name = type(theirs).__name__
        assert_close(ours.forward(x), out.detach().numpy(), rtol=TORCH_RTOL, name=name)
        assert_close(ours.backward(dout), xt.grad.numpy(), rtol=TORCH_RTOL, name=f"{name} dx")
        for k, p in theirs.named_parameters():
            assert_close(ours.grads[k], p.grad.numpy(), rtol=TORCH_RTOL, name=f"{name} {k}")
