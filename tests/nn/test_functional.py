"""halo_ref.nn.functional: every pair's hand-written backward against float64 finite differences
(hypothesis over shapes), on both implementations of the contract where there are two (the
NumPy formulas and their Numba kernels, through `halo_ref.backend`), and its forward against
PyTorch where torch is installed.

Tolerances: gradient checks use `check_gradients`' defaults (rtol 1e-7 on a directional
derivative with eps = 1e-6 in float64; see halo_ref/verification/testing.py for why that bound
is both safe and tight). Comparisons with PyTorch in float64 use 1e-12 relative to the largest
entry: both sides round once per operation over at most a few hundred terms, i.e. ~1e-14, and
any real difference (a wrong index, a biased variance) is at least 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import conv_cases, feature_maps

from halo_ref import HaloRefError, backend
from halo_ref.nn import functional as L
from halo_ref.verification.testing import GradientCheckError, assert_close, check_gradients

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


# -- gradient checks ------------------------------------------------------------------------------
# The pairs with a Numba kernel run on each backend: "numpy" (this module's formulas) and
# "numba" (halo_ref.nn.kernels, under the same contract).
BACKENDS = pytest.mark.parametrize("on", [backend.NUMPY, backend.NUMBA], ids=["numpy", "numba"])


@BACKENDS
@given(case=conv_cases())
def test_conv2d_gradients(on, case):
    """Every kernel size; a 1x1 kernel without padding takes the 1x1 path."""
    x, w, b = case.arrays()
    arrays = {"x": x, "weight": w, "bias": b} if case.bias else {"x": x, "weight": w}

    def fwd(**a):
        return on.conv2d_forward(a["x"], a["weight"], a.get("bias"), case.stride, case.padding)

    check_pair(fwd, on.conv2d_backward, arrays, seed=case.seed)


@given(case=conv_cases())
def test_conv2d_formula_gradients_for_every_kernel_size(case):
    """The im2col formula itself, 1x1 kernels included (the backends take their 1x1 path)."""
    x, w, b = case.arrays()
    arrays = {"x": x, "weight": w, "bias": b} if case.bias else {"x": x, "weight": w}

    def fwd(**a):
        return L.conv2d_forward(a["x"], a["weight"], a.get("bias"), case.stride, case.padding)

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


@BACKENDS
@given(x=feature_maps(max_side=5), training=st.booleans())
def test_batchnorm2d_gradients(on, x, training):
    if training and x.size // x.shape[1] < 2:
        x = np.concatenate([x, x[::-1] * 0.5 + 1.0])  # training needs two values per channel
    C = x.shape[1]
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)

    def fwd(**a):
        # fresh running statistics every call: the loss must not depend on how often it ran
        return on.batchnorm2d_forward(
            a["x"], a["weight"], a["bias"], rm.copy(), rv.copy(), training=training
        )

    check_pair(fwd, on.batchnorm2d_backward, {"x": x, "weight": w, "bias": b})


@BACKENDS
@given(x=feature_maps())
def test_relu_silu_gradients(on, x):
    check_pair(lambda x: L.relu_forward(x), L.relu_backward, {"x": x})
    check_pair(lambda x: on.silu_forward(x), on.silu_backward, {"x": x})


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


# -- the layers of timm's HaloNets: grouped convolution, squeeze-and-excitation, ECA ------------
@pytest.mark.parametrize(
    "kernel,stride,padding,groups", [(3, 1, 1, 2), (3, 2, 1, 4), (3, 1, 0, 3), (1, 2, 0, 2)]
)
def test_grouped_conv2d_gradients(kernel, stride, padding, groups):
    """Both paths of a group: im2col (3x3) and the 1x1 product (1x1, strided)."""
    rng = np.random.default_rng(groups)
    C, O = 2 * groups, 3 * groups
    check_pair(
        lambda x, weight, bias: L.grouped_conv2d_forward(x, weight, bias, stride, padding, groups),
        L.grouped_conv2d_backward,
        dict(
            x=rng.standard_normal((2, C, 5, 6)),
            weight=rng.standard_normal((O, 2, kernel, kernel)),
            bias=rng.standard_normal(O),
        ),
    )


def test_grouped_conv2d_is_a_block_diagonal_conv():
    """groups = 2 is a dense convolution whose weight is zero between different groups."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 6, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    dense = np.zeros((4, 6, 3, 3))
    dense[:2, :3], dense[2:, 3:] = w[:2], w[2:]
    out, _ = L.grouped_conv2d_forward(x, w, None, 1, 1, groups=2)
    expected, _ = L.conv2d_forward(x, dense, None, 1, 1)
    # the same 27 products per output; the dense sum adds 27 exact zeros: rounding only
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_squeeze_excite_gradients():
    rng = np.random.default_rng(1)
    check_pair(
        L.squeeze_excite_forward,
        L.squeeze_excite_backward,
        dict(
            x=rng.standard_normal((2, 6, 3, 4)),
            w1=rng.standard_normal((3, 6, 1, 1)),
            b1=rng.standard_normal(3),
            w2=rng.standard_normal((6, 3, 1, 1)),
            b2=rng.standard_normal(6),
        ),
    )


@pytest.mark.parametrize("channels", [5, 64, 256])
def test_eca_gradients(channels):
    """k = 3, 3 and 5: the channels near both ends read the zero padding."""
    rng = np.random.default_rng(channels)
    k = L.eca_kernel_size(channels)
    check_pair(
        L.eca_forward,
        L.eca_backward,
        dict(x=rng.standard_normal((2, channels, 3, 2)), weight=rng.standard_normal((1, 1, k))),
    )


def test_eca_kernel_sizes_follow_the_paper():
    # k = the odd number at or above int((log2 C + 1) / 2), at least 3 (ECA-Net, eq. 12)
    sizes = [L.eca_kernel_size(c) for c in (16, 64, 128, 256, 512, 1024)]
    assert sizes == [3, 3, 5, 5, 5, 5]
