"""Shared by the Numba kernels: an exp, a softmax and a sigmoid that LLVM can vectorise.

Numba compiles `np.exp` on a scalar to a call of the C library's `exp`/`expf` (no SIMD), and in
halo attention's softmax and in SiLU that call costs more than everything around it.
`softmax_row` computes a whole row of logits and `sigmoid_run` a whole run of values: float32
with a short polynomial for exp (`_exp_parts`, within 4 ulp of the exact value), float64 with
the exact `np.exp` (float64 paths must match the NumPy reference to 1e-12).

Editing this module: Numba's disk cache checks only the source file of each cached kernel, so
kernels elsewhere that inline these helpers keep their old compiled code. Delete the cache
(`find halo_ref -name "*.nb[ic]" -delete`) after a change here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

# Never "nnan"/"ninf": masked logits are -inf and must stay -inf through max and exp.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

# exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]; ln 2 is split
# into a part exact in float32 and a small correction (Cody and Waite) so r keeps full precision.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.0)  # below this 2^n is subnormal; such weights are set to exactly 0
# Taylor coefficients 1/k!, k = 2..7: the truncation error on |r| <= 0.35 is below 1e-8
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _exp_parts(x):
    """(p, b) with exp(x) = p * 2^n for float32 x in [-87, 0], b the bits of the float 2^n.

    p = exp(r) by the Taylor polynomial, r = x - n ln 2; branch-free, so loops calling it
    vectorise. The caller multiplies by 2^n (b viewed as float32) in a second loop.
    """
    k = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - k * _LN2_HI - k * _LN2_LO
    p = _C6 + r * _C7
    p = _C5 + r * p
    p = _C4 + r * p
    p = _C3 + r * p
    p = _C2 + r * p
    p = np.float32(1.0) + r * p
    return np.float32(1.0) + r * p, (np.int32(k) + np.int32(127)) << np.int32(23)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _softmax_f32(row, bits):
    """In place: row = softmax(row) for a float32 row, -inf entries exactly 0; bits: int32
    scratch of the row's length. The max, exp(x - max) with its sum, and the scaling in four
    vectorised passes over the row (the same exp as `_exp_f32`)."""
    n = row.shape[0]
    m = _max_f32(row, bits)
    for i in range(n):
        x = row[i] - m
        p, bits[i] = _exp_parts(max(x, _EXP_MIN))
        row[i] = p if x > _EXP_MIN else np.float32(0.0)
    two_n = bits.view(np.float32)
    s = np.float32(0.0)
    for i in range(n):
        e = row[i] * two_n[i]
        row[i] = e
        s += e
    inv = np.float32(1.0) / s
    for i in range(n):
        row[i] *= inv


@njit(fastmath=_FASTMATH, cache=True)
def _softmax_f64(row, bits):
    """In place: row = softmax(row) for a float64 row with the exact np.exp."""
    m = _max_f64(row, bits)
    s = 0.0
    for i in range(row.shape[0]):
        e = np.exp(row[i] - m)
        row[i] = e
        s += e
    inv = 1.0 / s
    for i in range(row.shape[0]):
        row[i] *= inv


def softmax_row(row, bits):
    """In place: row = softmax(row), -inf entries exactly 0 (every row has a finite entry);
    bits: int32 scratch of the row's length. Compiled per dtype by the overload below."""
    raise NotImplementedError("only callable from jitted code")


@overload(softmax_row, jit_options={"fastmath": _FASTMATH}, inline="always")
def _softmax_row_impl(row, bits):
    if row.dtype == types.float32:
        return lambda row, bits: _softmax_f32(row, bits)
    return lambda row, bits: _softmax_f64(row, bits)


@njit(fastmath=_FASTMATH, cache=True)
def _max_f32(x, scratch):
    """max(x) of a float32 row, exactly, by integer compares (which LLVM vectorises; a float
    max only vectorises under fast-math "nnan", which the -inf of masked logits forbids).

    A float's bits read as a signed integer, with the magnitude bits of negative numbers
    flipped, sort like the floats, -inf and +inf included. A NaN entry gives NaN or is
    skipped; either way the softmax row it is in becomes NaN. scratch: int32, >= 1 element.
    """
    bits = x.view(np.int32)
    m = -(1 << 31)
    for i in range(x.shape[0]):
        k = bits[i]
        m = max(m, k ^ ((k >> 31) & 0x7FFFFFFF))
    scratch[0] = m ^ ((m >> 31) & 0x7FFFFFFF)
    return scratch[:1].view(np.float32)[0]


@njit(fastmath=_FASTMATH, cache=True)
def _max_f64(x, scratch):
    """max(x) of a float64 row (a plain loop: float64 speed matters less than clarity)."""
    m = x[0]
    for i in range(1, x.shape[0]):
        m = max(m, x[i])
    return m


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _sigmoid_f32(x, sig, bits):
    """sig = sigmoid(x) of a float32 run, from e = exp(-|x|) in [0, 1] (never overflows):
    1 / (1 + e) for x >= 0, e / (1 + e) below; e is flushed to 0 for |x| >= 87 (where the
    sigmoid is 0 or 1 to float32 precision). bits: int32 scratch. Two vectorised passes:
    exp's polynomial (into sig) and its 2^n (into bits), then the quotient."""
    n = x.shape[0]
    for i in range(n):
        sig[i], bits[i] = _exp_parts(max(-np.abs(x[i]), _EXP_MIN))
    two_n = bits.view(np.float32)
    one = np.float32(1.0)
    for i in range(n):
        xi = x[i]
        e = sig[i] * two_n[i] if -np.abs(xi) > _EXP_MIN else np.float32(0.0)
        sig[i] = (one if xi >= 0 else e) / (one + e)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _sigmoid_f64(x, sig, bits):
    """sig = sigmoid(x) of a float64 run with the exact np.exp, in the same stable form."""
    for i in range(x.shape[0]):
        e = np.exp(-np.abs(x[i]))
        sig[i] = (1.0 if x[i] >= 0 else e) / (1.0 + e)


def sigmoid_run(x, sig, bits):
    """sig = sigmoid(x) elementwise over a 1-D run; bits: int32 scratch of the run's length.
    Compiled per dtype by the overload below, inlined: called as a function with array slices
    as arguments, the loops were measured 4x slower."""
    raise NotImplementedError("only callable from jitted code")


@overload(sigmoid_run, jit_options={"fastmath": _FASTMATH}, inline="always")
def _sigmoid_run_impl(x, sig, bits):
    if x.dtype == types.float32:
        return lambda x, sig, bits: _sigmoid_f32(x, sig, bits)
    return lambda x, sig, bits: _sigmoid_f64(x, sig, bits)
