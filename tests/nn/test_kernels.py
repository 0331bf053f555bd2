"""halo_ref.nn.kernels (BatchNorm, SiLU, the sum of two branches, convolutions) against the NumPy
formulas of halo_ref.nn.functional, whose contract they share, and their determinism.

The gradient checks of tests/nn/test_functional.py run on both implementations; this module
adds what finite differences cannot see: float32 accuracy at extreme inputs, agreement of the
two implementations in float32, and bit-identical results for any thread count.

Tolerances: float64 1e-12 relative to the largest entry (the two implementations sum in
different orders; rounding only, ~1e-15 per term over at most a few hundred terms); float32
1e-5 (the same argument at float32's 6e-8 unit round-off).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from halo_ref import backend
from halo_ref.nn import functional as L
from halo_ref.nn import kernels as K
from halo_ref.verification.testing import assert_close

RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def exact_silu(x):
    """x * sigmoid(x) in float64, written so that no exp overflows."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return x * np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def test_silu_kernel_accurate_at_extreme_inputs(numba_warm):
    """float32: within 4 ulp of the exact value (the fast exp is within 4 ulp; a division and a
    product add one rounding each) where x > -87; below, exp(x) is flushed to 0 like the
    softmax's (the exact |SiLU| there is under 1e-35); no overflow where exp(-x) would exceed
    float32 (x < -88); infinities and signed zeros as the formula says; NaN stays NaN."""
    x = np.concatenate([np.linspace(-120, 120, 4001), [-1e30, -88.8, -1e-30, 0.0, -0.0, 1e30]])
    x = np.concatenate([x, [np.inf, -np.inf, np.nan]]).astype(np.float32)
    out, cache = K.silu_forward(x)
    finite = np.isfinite(x)
    assert np.isfinite(out[finite]).all()
    normal = finite & (x > -87)
    exact = exact_silu(x[normal])
    err = np.abs(out[normal] - exact) / np.maximum(np.abs(exact), np.finfo(np.float32).tiny)
    assert err.max() <= 4 * 2**-23, f"worst relative error {err.max():.2e}"
    assert np.abs(out[finite & (x <= -87)]).max() <= 1e-35
    assert out[-3] == np.inf and np.isnan(out[-2]) and np.isnan(out[-1])  # -inf * 0 is NaN
    # the backward recomputes the sigmoid: finite everywhere x is, and NaN stays NaN
    dx = K.silu_backward(np.ones_like(x), cache)
    assert np.isfinite(dx[finite]).all() and np.isnan(dx[-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_kernels_agree(numba_warm, dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 6, 5, 7)) * 4).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)

    results = []
    for pair in (L, K):
        out, cache = pair.silu_forward(x)
        results.append((out, pair.silu_backward(g, cache)))
    for label, a, b in zip(("out", "dx"), *results, strict=True):
        assert a.dtype == dtype, label
        assert_close(a, b, rtol=RTOL[dtype], name=label)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_kernel_agrees_with_numpy(numba_warm, dtype):
    """Exactly: one rounding per element either way."""
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((2, 3, 70, 301)).astype(dtype) for _ in range(2))
    out = K.add(a, b)
    assert out.dtype == dtype and np.array_equal(out, a + b)
    assert out is not a and out is not b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, bias", [(1, False), (2, True)])
def test_conv1x1_kernels_agree_through_conv2d(numba_warm, dtype, stride, bias):
    """The backend's 1x1 path (the Numba kernels) equals the im2col product of the NumPy
    formula, output and every gradient."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((11, 24, 6, 8)).astype(dtype)
    w = rng.standard_normal((40, 24, 1, 1)).astype(dtype)
    b = rng.standard_normal(40).astype(dtype) if bias else None

    def run(forward, backward):
        out, cache = forward(x, w, b, stride)
        g = np.random.default_rng(6).standard_normal(out.shape).astype(dtype)
        grads = backward(g, cache)
        return (out, *grads[:2]) + ((grads[2],) if bias else ())

    results = [run(L.conv2d_forward, L.conv2d_backward)]
    results.append(run(backend.NUMBA.conv2d_forward, backend.NUMBA.conv2d_backward))
    labels = ("out", "dx", "dweight", "dbias")[: len(results[0])]
    for label, a, c in zip(labels, *results, strict=True):
        assert a.dtype == dtype, label
        assert_close(a, c, rtol=RTOL[dtype], name=label)


def _run_all(x3, w_conv, g3):
    """One forward and backward of each kernel; returns every output array."""
    x4, g4 = x3[..., None], g3[..., None]  # B, C, pixels, 1
    stats = np.zeros(x3.shape[1]), np.ones(x3.shape[1])
    out, cache = K.batchnorm2d_train_forward(
        x4, x3[0, :, 0], x3[0, :, 1], *stats, momentum=0.1, eps=1e-5
    )
    bn = (out, cache.mean, cache.invstd, *stats, *K.batchnorm2d_train_backward(g4, cache))
    s_out, s_cache = K.silu_forward(x3)
    silu = (s_out, K.silu_backward(g3, s_cache), K.add(x3, g3))
    x4 = x3.reshape(x3.shape[0], x3.shape[1], 16, -1)
    c_out, cache = K.conv1x1_forward(x4, w_conv)
    conv = (c_out, *K.conv1x1_backward(c_out, cache)[:2])
    return bn + silu + conv


@pytest.mark.parametrize("pixels", [16 * 5, 16 * 400])  # packed weight gradient; chunked
def test_layer_kernels_bit_identical_across_thread_counts(numba_warm, pixels):
    """Each task owns its outputs and every cross-task sum runs in a fixed order, so 1 thread
    and all threads give the same bits."""
    rng = np.random.default_rng(9)
    x3 = rng.standard_normal((19, 48, pixels)).astype(np.float32)
    g3 = rng.standard_normal(x3.shape).astype(np.float32)
    w = rng.standard_normal((56, 48, 1, 1)).astype(np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run_all(x3, w, g3)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = _run_all(x3, w, g3)
    finally:
        numba.set_num_threads(before)
    for i, (a, b) in enumerate(zip(one, many, strict=True)):
        assert np.array_equal(a, b), f"output {i} differs between 1 and N threads"


@pytest.mark.parametrize(
    "B, C, O, H, W, k, stride",
    [
        (3, 64, 24, 72, 72, 1, 1),
        (9, 7, 5, 6, 5, 3, 2),
        (1, 16, 24, 40, 37, 3, 1),
        (2, 3, 8, 9, 12, 7, 2),
    ],
)
def test_conv_kernels_match_im2col(numba_warm, B, C, O, H, W, k, stride):
    """The Numba convolutions give the NumPy im2col result, float64: a large map; batches of 1
    and 2 split the output rows into bands (tasks for every thread); a 7x7 kernel on a map
    smaller than a few windows has outputs whose receptive field is mostly padding."""
    rng = np.random.default_rng(B + k)
    x = rng.standard_normal((B, C, H, W))
    w = rng.standard_normal((O, C, k, k))
    padding = k // 2
    out, cache = (
        K.conv1x1_forward(x, w, None, stride)
        if k == 1
        else K.conv2d_forward(x, w, None, stride, padding)
    )
    g = rng.standard_normal(out.shape)
    grads = (K.conv1x1_backward if k == 1 else K.conv2d_backward)(g, cache)
    ref, ref_cache = L.conv2d_forward(x, w, None, stride, padding)
    ref_grads = L.conv2d_backward(g, ref_cache)
    for label, a, c in zip(
        ("out", "dx", "dweight"), (out, *grads[:2]), (ref, *ref_grads[:2]), strict=True
    ):
        assert_close(a, c, rtol=RTOL[np.float64], name=label)


def _project_channels(x, w, b, stride, g):
    """The network's 1x1 convolutions: K.conv1x1_forward and its backward, channel-first."""
    out, cache = K.conv1x1_forward(x, w, b, stride)
    return (out, *K.conv1x1_backward(g, cache))


def _project_pixels(x, w, b, stride, g):
    """Halo attention's q/kv projections: K.conv1x1_to_pixels (output (B, Ho, Wo, O)) and its
    backward, turned back to halo_ref.nn.functional' layouts (channel-first, weight (O, C, 1, 1))."""
    out, cache = K.conv1x1_to_pixels(x, w, b, stride)
    dx, dw, db = K.conv1x1_to_pixels_backward(g.transpose(0, 2, 3, 1), cache)
    return out.transpose(0, 3, 1, 2), dx, dw[:, :, None, None], db


@pytest.mark.parametrize("project", [_project_channels, _project_pixels])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "B, C, O, H, W, stride, bias",
    [
        (2, 3, 5, 4, 6, 1, True),  # one chunk, every operand whole
        (2, 500, 300, 6, 11, 1, False),  # 66 pixels: partial last chunk; row blocks of 300
        (2, 500, 600, 6, 11, 1, False),  # large products
        (3, 7, 9, 10, 6, 2, True),  # strided queries: the skipped pixels get zero gradient
        (20, 6, 5, 4, 4, 1, False),  # 16-pixel maps: the weight gradient packs images
        (2, 64, 5, 72, 72, 1, False),  # large maps
        (1, 64, 96, 72, 72, 1, False),  # batch 1: pixel chunks as tasks
    ],
)
def test_1x1_projection_kernels_match_conv1x1(
    numba_warm, project, dtype, B, C, O, H, W, stride, bias
):
    """Both layouts of the Numba 1x1 products and their backwards equal the NumPy
    halo_ref.nn.functional.conv1x1_*."""
    rng = np.random.default_rng(B * C + O)
    x = rng.standard_normal((B, C, H, W))
    w = rng.standard_normal((O, C, 1, 1))
    b = rng.standard_normal(O) if bias else None
    ref, ref_cache = L.conv1x1_forward(x, w, b, stride)
    g = rng.standard_normal(ref.shape)
    names = ("out", "dx", "dweight", "dbias")
    expected = dict(zip(names, (ref, *L.conv1x1_backward(g, ref_cache)), strict=True))
    cast = [None if a is None else a.astype(dtype) for a in (x, w, b, g)]
    actual = dict(zip(names, project(*cast[:3], stride, cast[3]), strict=True))
    for name, e in expected.items():
        if not bias and name == "dbias":
            assert actual[name] is None
            continue
        assert actual[name].dtype == dtype and actual[name].shape == e.shape
        assert_close(actual[name], e, rtol=RTOL[dtype], name=name)


BLAS_KERNELS = ("_project_kernel", "_weight_grad_kernel", "_to_pixels_kernel",
                "_from_pixels_kernel", "_weight_grad_pixels_kernel", "_conv_forward_kernel",
                "_conv_backward_kernel")  # fmt: skip


def test_layer_kernels_run_blas_single_threaded_and_give_the_same_bits(numba_warm, monkeypatch):
    """With OpenBLAS on several threads (a fresh install's default), every layer kernel that
    calls BLAS runs it single-threaded (its products are called from inside Numba's threads,
    where BLAS threads of their own would oversubscribe the cores) and restores it after; so
    its products, and the bits, are those of a training run, which sets BLAS to one thread."""
    from halo_ref._blas import blas_threads, set_blas_threads

    seen = []

    def spy(kernel):
        def call(*args):
            seen.append(blas_threads())
            return kernel(*args)

        return call

    def run():
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 64, 40, 40)).astype(np.float32)  # products > 2**18 mult-adds
        w1, w3 = rng.standard_normal((48, 64, 1, 1)), rng.standard_normal((48, 64, 3, 3))
        w1, w3 = w1.astype(np.float32), w3.astype(np.float32)
        y, c = K.conv1x1_forward(x, w1, None, 2)
        got = [y, *K.conv1x1_backward(y, c)[:2]]
        y, c = K.conv1x1_to_pixels(x, w1)
        got += [y, *K.conv1x1_to_pixels_backward(y, c)[:2]]
        y, c = K.conv2d_forward(x, w3, None, 1, 1)
        return got + [y, *K.conv2d_backward(y, c)[:2]]

    for name in BLAS_KERNELS:
        monkeypatch.setattr(K, name, spy(getattr(K, name)))
    before = blas_threads()
    try:
        set_blas_threads(1)
        one = run()
        if not set_blas_threads(2):
            pytest.skip("no OpenBLAS whose thread count can be set was found")
        two = run()
        after = blas_threads()
    finally:
        set_blas_threads(before)
    assert len(seen) == 2 * 8 and set(seen) == {1}, seen
    assert after == 2
    for a, b in zip(one, two, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride", [1, 2])
def test_pixel_projection_backward_adds_into(numba_warm, dtype, stride):
    """add_into: the gradient is added in place to another one of x's shape (the layer adds the
    strided query projection's share to the key/value projection's); exact, one add each."""
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((3, 7, 10, 6)).astype(dtype)
    out, cache = K.conv1x1_to_pixels(x, rng.standard_normal((9, 7)).astype(dtype), None, stride)
    g = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, _ = K.conv1x1_to_pixels_backward(g, cache)
    base = rng.standard_normal(x.shape).astype(dtype)
    into, dw2, _ = K.conv1x1_to_pixels_backward(g, cache, add_into=base.copy())
    assert np.array_equal(into, base + dx) and np.array_equal(dw2, dw)
