"""The Numba kernels (`halo_ref.attention.kernels`) against the NumPy page they share a contract
with (`halo_ref.attention.core`, the oracle).

Tolerances, all relative to the largest magnitude of the expected array (as testing.compare):
- float64, 1e-12: the kernels do the same arithmetic in another order (blocked BLAS products,
  sums per lane), so they differ from the reference by a few ulps times the length of
  the longest sum (at most a few hundred terms here): about 1e-14, 100x below the tolerance;
- float32, 1e-5: float32 round-off (6e-8) accumulated over sums of up to a few hundred terms and
  the 4-ulp polynomial exp give about 1e-6; the expected values are the float64 reference on the
  same (float32-rounded) inputs, so this bounds the kernel's own error, not a difference of two
  float32 computations.
An array whose exact value is zero by cancellation (e.g. d width_rel when the map is one pixel
wide, so the softmax gradient sums to zero along each row) holds only round-off in both
implementations; relative to itself that is noise over noise. So each array is compared on the
scale max(max |expected|, FLOOR * largest max |expected| of the family). All inputs are O(1)
normals, so the family's largest array sets the size of the round-off: FLOOR = 1e-3 in float64
(round-off ~1e-16, still 1e4x below the tolerance) and 1 in float32 (a cancelled float32 sum of
O(1) terms leaves ~1e-8 absolute, which 1e-3 of the scale would magnify to the tolerance). A
real bug is off by O(1) on either scale, and float64, which shares all code but the exp with
float32, is checked with the tight floor.
"""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from numba import njit
from strategies import core_cases, layer_cases

from halo_ref import HaloAttention, HaloRefError, backend
from halo_ref._numba_math import exp_nonpos
from halo_ref.attention import kernels as attention_kernels
from halo_ref.attention.core import halo_attention_backward, halo_attention_forward
from halo_ref.attention.kernels import halo_attention_backward_numba, halo_attention_forward_numba
from halo_ref.verification.testing import check_layer_gradients, compare

RTOL = {np.float64: 1e-12, np.float32: 1e-5}  # why: see the module docstring
FLOOR = {np.float64: 1e-3, np.float32: 1.0}
NAMES = ("dq_map", "dkv_map", "dheight_rel", "dwidth_rel")


def assert_family_close(actual, expected, dtype):
    """assert_close for each name, with the scale floor of the module docstring."""
    rtol = RTOL[dtype]
    floor = FLOOR[dtype] * max(float(np.max(np.abs(e), initial=0.0)) for e in expected.values())
    for name, e in expected.items():
        a = actual[name]
        assert a.shape == e.shape, f"{name}: shape {a.shape} != {e.shape}"
        assert np.isfinite(a).all(), f"{name}: NaN or inf"
        scale = max(float(np.max(np.abs(e), initial=0.0)), floor)
        err = float(np.max(np.abs(a.astype(np.float64) - e), initial=0.0)) / scale
        if err > rtol:
            worst = compare(a, e, rtol=rtol, name=name).report()  # names the worst entries
            raise AssertionError(f"{name}: error {err:.2e} on the scale {scale:.2e}\n{worst}")


def _reference(case, arrays, dout):
    """The NumPy reference in float64 on the given arrays."""
    arrays64 = [a.astype(np.float64) for a in arrays]
    out, cache = halo_attention_forward(*arrays64, **case.kwargs())
    return out, halo_attention_backward(dout.astype(np.float64), cache)


# Which kernel family runs: "blocks" (one query block at a time), "strips" (a block row at a
# time, whole strips of keys), "auto" the default choice (attention.kernels._strips).
KERNEL_PATHS = {"blocks": "blocks", "strips": "strips", "auto": None}


@pytest.mark.parametrize("path", list(KERNEL_PATHS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(case=core_cases())
def test_core_matches_reference(numba_warm, path, dtype, case):
    arrays = case.arrays(dtype)
    out, cache = halo_attention_forward_numba(*arrays, family=KERNEL_PATHS[path], **case.kwargs())
    dout = np.random.default_rng(case.seed + 7).standard_normal(out.shape).astype(dtype)
    grads = halo_attention_backward_numba(dout, cache)
    ref_out, ref_grads = _reference(case, arrays, dout)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_family_close(
        {"out": out, **dict(zip(NAMES, grads, strict=True))},
        {"out": ref_out, **dict(zip(NAMES, ref_grads, strict=True))},
        dtype,
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(case=layer_cases())
@settings(max_examples=15)
def test_layer_matches_reference_layer(numba_warm, dtype, case):
    """Every layer option (bias, stride 2 with and without pooling, borders) end to end."""
    kw = case.layer_kwargs()
    fast = HaloAttention(case.dim, case.dim_out, dtype=dtype, rng=case.seed, **kw)
    ref64 = HaloAttention(case.dim, case.dim_out, backend="numpy", dtype=np.float64, **kw)
    ref64.load_state_dict({k: v.astype(np.float64) for k, v in fast.params.items()})
    x = case.input(dtype)
    out = fast.forward(x)
    dout = np.random.default_rng(case.seed).standard_normal(out.shape)
    dx = fast.backward(dout.astype(dtype))
    ref_out = ref64.forward(x.astype(np.float64))
    ref_dx = ref64.backward(dout)
    assert set(fast.grads) == set(ref64.grads)
    assert_family_close(
        {"out": out, "dx": dx, **fast.grads},
        {"out": ref_out, "dx": ref_dx, **ref64.grads},
        dtype,
    )


@given(case=layer_cases())
@settings(max_examples=8)
def test_layer_gradients_by_finite_differences(numba_warm, case):
    """Independent of the reference: the numba layer's own gradients, float64 (default rtol)."""
    layer = HaloAttention(
        case.dim, case.dim_out, dtype=np.float64, rng=case.seed, **case.layer_kwargs()
    )
    assert backend.resolve(layer.backend) is backend.NUMBA
    check_layer_gradients(layer, case.input(), rng=case.seed)


def _run_once(arrays, kwargs, dout):
    out, cache = halo_attention_forward_numba(*arrays, **kwargs)
    assert cache.geometry.strips == (kwargs["family"] == "strips")
    return (out, *halo_attention_backward_numba(dout, cache))


@pytest.mark.parametrize("path", ["blocks", "strips"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bit_identical_across_runs_and_thread_counts(numba_warm, path, dtype):
    """No write races: 1 thread and all threads give the same bits (each task owns its outputs
    and the per-task table gradients are summed in task order)."""
    from strategies import CoreCase

    case = CoreCase(3, 3, 4, 5, 4, 3, 1, 3, 2, "zeros", False, 11)
    arrays = case.arrays(dtype)
    out, _ = halo_attention_forward_numba(*arrays, **case.kwargs())
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        kwargs = {**case.kwargs(), "family": path}
        single = _run_once(arrays, kwargs, dout)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = _run_once(arrays, kwargs, dout)
        again = _run_once(arrays, kwargs, dout)
    finally:
        numba.set_num_threads(before)
    for a, b, c in zip(single, many, again, strict=True):
        assert np.array_equal(a, b) and np.array_equal(b, c)


def test_layer_bit_identical_across_thread_counts(numba_warm):
    """The whole numba layer (projections included) gives the same bits on 1 and N threads."""
    layer = HaloAttention(6, 6, num_heads=2, block_size=4, halo_size=2, qkv_bias=True, rng=0)
    x = np.random.default_rng(1).standard_normal((3, 6, 8, 12)).astype(np.float32)
    before = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            out = layer.forward(x)
            dx = layer.backward(np.ones_like(out))
            runs.append([out, dx, *(layer.grads[k] for k in sorted(layer.grads))])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


@njit
def _exp_nonpos_run(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_nonpos(x[i])


def test_fast_exp_float32_accuracy_and_masking(numba_warm):
    """The vectorised float32 exp over the range softmax uses (shifted logits x <= 0): relative
    error <= 5e-7 (4 ulp: Horner rounding of the degree-7 polynomial plus the product by 2^n;
    measured 4.0 ulp), and exactly 0 for x <= -87 and for -inf (masked logits); float64 is the
    C library's exp."""
    x = np.concatenate([-np.geomspace(1e-8, 87, 20000), [0.0, -1e-30, -87.5, -200, -np.inf]])
    out = np.empty_like(x, dtype=np.float32)
    _exp_nonpos_run(x.astype(np.float32), out)
    x32 = x.astype(np.float32).astype(np.float64)
    exact = np.exp(x32)
    keep = x32 > -87
    assert np.max(np.abs(out[keep] - exact[keep]) / exact[keep]) <= 5e-7
    assert np.all(out[~keep] == 0)
    out64 = np.empty_like(x)
    _exp_nonpos_run(x, out64)
    # two C libraries' exp (Numba's and NumPy's), each within an ulp of the exact value
    np.testing.assert_allclose(out64, np.exp(x), rtol=5e-16, atol=0)


def test_numba_is_the_default_and_numpy_selects_the_reference():
    assert backend.resolve(HaloAttention(8, num_heads=2).backend) is backend.NUMBA
    assert HaloAttention(8, num_heads=2, backend="numpy").backend is backend.NUMPY


def test_importing_halo_ref_compiles_no_kernel():
    """Kernels compile (or load from the disk cache) on first use, never at import."""
    code = (
        "import halo_ref\n"
        "from halo_ref.attention import kernels as A\n"
        "from halo_ref.nn import kernels as K\n"
        "print(sum(len(getattr(m, n).signatures) for m in (A, K) for n in dir(m)\n"
        "          if hasattr(getattr(m, n), 'signatures')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"


def test_mixed_dtypes_give_a_one_line_error(numba_warm):
    from strategies import CoreCase

    case = CoreCase(1, 1, 2, 2, 2, 1, 1, 1, 1, "zeros", False, 0)
    q, kv, rh, rw = case.arrays(np.float64)
    with pytest.raises(HaloRefError, match="share one dtype"):
        halo_attention_forward_numba(q.astype(np.float32), kv, rh, rw, **case.kwargs())


def test_kernels_keep_multithreaded_blas_out_of_numbas_threads(numba_warm, monkeypatch):
    """With OpenBLAS on several threads (a fresh install's default), the attention kernels run
    with it single-threaded: their products are called from inside Numba's threads, where an
    OpenBLAS with threads of its own would start more (oversubscribed cores; OpenBLAS can warn
    that it "may hang"). The thread count is restored afterwards."""
    from halo_ref._blas import blas_threads, set_blas_threads

    seen = []

    def spy(kernel):
        def call(*args):
            seen.append((kernel.__name__, blas_threads()))
            return kernel(*args)

        return call

    for name in ("_forward_kernel", "_backward_kernel"):
        monkeypatch.setattr(attention_kernels, name, spy(getattr(attention_kernels, name)))
    before = blas_threads()
    try:
        if not set_blas_threads(2):
            pytest.skip("no OpenBLAS whose thread count can be set was found")
        layer = HaloAttention(16, 16, num_heads=2, block_size=4, halo_size=1, rng=0)
        x = np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32)
        layer.backward(layer.forward(x))
        after = blas_threads()
    finally:
        set_blas_threads(before)
    assert seen == [("_forward_kernel", 1), ("_backward_kernel", 1)]
    assert after == 2
