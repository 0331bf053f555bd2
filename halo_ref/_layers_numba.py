"""Numba kernels for batch normalisation: the same maths as the NumPy expressions documented in
`halo_ref.layers.batchnorm2d_forward` / `batchnorm2d_backward`, in two passes over the data
instead of about seven.

Why: on a CPU a BatchNorm layer is memory-bound, and NumPy walks the whole (B, C, H, W) array
once per operation (mean, centre, square, sum, scale, shift), each time allocating a temporary.
Here, channel by channel, one pass accumulates the statistics in float64 (a second one the
centred squares, so no cancellation) and one pass writes the output; the backward needs one
pass for its two sums and one for dx.

Single-threaded on purpose: each layer is a few milliseconds of memory-bound work, and with
`prange` over channels the thread wake-ups cost more than they save whenever the cores are
shared (measured: 2 threads 3x slower than 1 on a busy 2-core machine); serially the kernels
are still 1.5-3x faster than NumPy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Reassociation lets LLVM vectorise the sums; the order is still fixed for a given shape.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@njit(cache=True, fastmath=_FASTMATH)
def batchnorm_train_forward(x, weight, bias, eps):
    """x: (B, C, L) contiguous; returns out, xhat (B, C, L), mean (C,), biased var (C,), and
    invstd (C,) in x's dtype. Statistics are accumulated in float64."""
    B, C, L = x.shape
    out = np.empty_like(x)
    xhat = np.empty_like(x)
    mean = np.empty(C, np.float64)
    var = np.empty(C, np.float64)
    invstd = np.empty(C, x.dtype)
    n = B * L
    for c in range(C):
        s = 0.0
        for b in range(B):
            for i in range(L):
                s += x[b, c, i]
        m = s / n
        ss = 0.0  # two-pass variance: no cancellation when |mean| >> std
        for b in range(B):
            for i in range(L):
                d = x[b, c, i] - m
                ss += d * d
        v = ss / n
        r = 1.0 / np.sqrt(v + eps)
        mean[c], var[c], invstd[c] = m, v, r
        w, sh = weight[c], bias[c]
        for b in range(B):
            for i in range(L):
                h = (x[b, c, i] - m) * r
                xhat[b, c, i] = h
                out[b, c, i] = h * w + sh
    return out, xhat, mean, var, invstd


@njit(cache=True, fastmath=_FASTMATH)
def batchnorm_train_backward(dout, xhat, weight, invstd):
    """dout, xhat: (B, C, L) contiguous; returns dx (B, C, L), dweight (C,), dbias (C,).

    dx = weight * invstd * (dout - mean(dout) - xhat * mean(dout * xhat)), per channel."""
    B, C, L = dout.shape
    dx = np.empty_like(dout)
    dweight = np.empty(C, dout.dtype)
    dbias = np.empty(C, dout.dtype)
    n = B * L
    for c in range(C):
        sb = 0.0
        sw = 0.0
        for b in range(B):
            for i in range(L):
                g = dout[b, c, i]
                sb += g
                sw += g * xhat[b, c, i]
        dbias[c], dweight[c] = sb, sw
        k = weight[c] * invstd[c]
        mb, mw = sb / n, sw / n
        for b in range(B):
            for i in range(L):
                dx[b, c, i] = k * (dout[b, c, i] - mb - xhat[b, c, i] * mw)
    return dx, dweight, dbias
