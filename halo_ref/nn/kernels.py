"""Numba kernels for the network's other layers: BatchNorm, SiLU, the sum of two branches, and
convolutions.

Contract: the same as `halo_ref.nn.functional` (the readable NumPy pairs, which stay the
reference; the tests hold every kernel to them): `batchnorm2d_train_forward` / `_backward`,
`silu_forward` / `_backward`, `conv1x1_forward` / `_backward` and `conv2d_forward` /
`_backward` take the arguments and return the results of their namesakes there. Two more have
no namesake: `add` (a + b) and `conv1x1_to_pixels` / `_backward`, the 1x1 projections of halo
attention, which write pixel-major maps for `halo_ref.attention.kernels`. The kernels run on
Numba's threads, so that a training step keeps both cores busy outside the attention too:

- BatchNorm (training mode): one task per channel; two passes over the data for the statistics
  (summed in float64 at the end, the variance from centred squares, so no cancellation) and one for
  the output, instead of NumPy's seven passes with a temporary each; the backward needs one
  pass for its two sums and one for dx.
- the sum of a residual block's two branches (and of two gradients of one input): chunks of
  the flattened arrays as tasks, so the other core does not wait while one adds.
- SiLU: one pass, chunks of the flattened array as tasks, with the vectorisable exp of
  `halo_ref._numba_math` (NumPy's version walks the array four times).
- 1x1 convolution: per image one (O, C) @ (C, pixels) product. The products run inside Numba's
  threads, so the kernels run with BLAS single-threaded (`halo_ref._blas.one_blas_thread`): no
  second thread pool competes with Numba's, and the products, so the bits, are the same
  whatever BLAS's thread count was. The weight gradient is accumulated in a fixed number of
  partial sums (`_GROUPS`), each over a fixed set of images.
- k x k convolution: im2col and its adjoint per image, then the 1x1 products.

Determinism: a task's arithmetic never depends on which thread runs it, and every reduction
across tasks is done afterwards in a fixed order, so results are bit-identical for any number of
Numba threads and of BLAS threads (tested).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .._blas import one_blas_thread
from .._numba_math import sigmoid_run
from .functional import BatchNormCache, batch_values, update_running_stats


# -- batch normalisation ---------------------------------------------------------------------
# The elementwise loops run in x's dtype (a float64 operand would promote a float32 loop to
# float64, which vectorises half as wide: measured 2.5x slower on 64x16x32x32). A channel's
# sums run across its B image rows, pixel by pixel (acc[i] += x[b, c, i], in x's dtype): each
# pixel is a lane of its own, so the loop vectorises without reordering any sum (a sum along a
# row would vectorise only with fast-math reassociation, see `halo_ref._numba_math`); the L
# pixel sums are then added in float64, in order.
@njit(cache=True, inline="always")
def _like(value, arr):
    """`value` converted to arr's dtype."""
    tmp = np.empty(1, arr.dtype)
    tmp[0] = value
    return tmp[0]


@njit(cache=True, inline="always")
def _total(acc):
    """sum of a 1-D run, in float64, in index order."""
    s = 0.0
    for i in range(acc.shape[0]):
        s += acc[i]
    return s


@njit(cache=True, inline="always")
def _channel_sum(x, c, acc):
    """sum of x[:, c, :] (x: (B, C, L)); acc: (L,) scratch in x's dtype."""
    acc[:] = 0
    for b in range(x.shape[0]):
        a = x[b, c]
        for i in range(acc.shape[0]):
            acc[i] += a[i]
    return _total(acc)


@njit(cache=True, inline="always")
def _channel_squares(x, c, m, acc):
    """sum of (x[:, c, :] - m)^2 (x: (B, C, L)); acc: (L,) scratch in x's dtype."""
    acc[:] = 0
    for b in range(x.shape[0]):
        a = x[b, c]
        for i in range(acc.shape[0]):
            d = a[i] - m
            acc[i] += d * d
    return _total(acc)


@njit(parallel=True, cache=True)
def _batchnorm_forward_kernel(x, weight, bias, eps, out, mean, var, invstd):
    B, C, L = x.shape
    n = B * L
    for c in prange(C):
        acc = np.empty(L, x.dtype)
        m = _like(_channel_sum(x, c, acc) / n, x)
        # two-pass variance, from centred squares: no cancellation when |mean| >> std
        v = _channel_squares(x, c, m, acc) / n
        r = _like(1.0 / np.sqrt(v + eps), x)
        mean[c], var[c], invstd[c] = m, v, r
        w, sh = weight[c], bias[c]
        for b in range(B):
            xs, o = x[b, c], out[b, c]
            for i in range(L):
                o[i] = ((xs[i] - m) * r) * w + sh


def batchnorm2d_train_forward(x, weight, bias, running_mean, running_var, *, momentum, eps):
    """`batchnorm2d_forward(..., training=True)` of `halo_ref.nn.functional`: x (B, C, H, W);
    returns out (B, C, H, W) and a `BatchNormCache`, and updates the running statistics. The
    biased variance comes out in float64 (for the running variance); the normalised input is
    not kept: the backward recomputes it from x (one array less written and read back: the step
    is memory-bound)."""
    B, C, H, W = x.shape
    n = batch_values(x)
    x3 = np.ascontiguousarray(x).reshape(B, C, H * W)
    out = np.empty_like(x3)
    mean, var, invstd = np.empty(C, x.dtype), np.empty(C, np.float64), np.empty(C, x.dtype)
    _batchnorm_forward_kernel(x3, weight, bias, eps, out, mean, var, invstd)
    update_running_stats(running_mean, running_var, mean, var, n, momentum)
    return out.reshape(x.shape), BatchNormCache(x3.reshape(x.shape), mean, invstd, weight, True)


@njit(parallel=True, cache=True)
def _batchnorm_backward_kernel(dout, x, mean, weight, invstd, dx, dweight, dbias):
    B, C, L = dout.shape
    n = B * L
    for c in prange(C):
        m, r = mean[c], invstd[c]
        acc_b, acc_w = np.zeros(L, dout.dtype), np.zeros(L, dout.dtype)  # per pixel, as above
        for b in range(B):
            g, xs = dout[b, c], x[b, c]
            for i in range(L):
                acc_b[i] += g[i]
            for i in range(L):
                acc_w[i] += g[i] * ((xs[i] - m) * r)
        sb, sw = _total(acc_b), _total(acc_w)
        dbias[c], dweight[c] = sb, sw
        k = weight[c] * r
        mb, mw = _like(sb / n, dout), _like(sw / n, dout)
        for b in range(B):
            g, xs, o = dout[b, c], x[b, c], dx[b, c]
            for i in range(L):
                o[i] = k * (g[i] - mb - ((xs[i] - m) * r) * mw)


def batchnorm2d_train_backward(dout, cache):
    """Gradients of `batchnorm2d_train_forward`: dx (B, C, H, W), dweight (C,), dbias (C,).

    dx = weight * invstd * (dout - mean(dout) - xhat * mean(dout * xhat)) per channel, with
    xhat = (x - mean) * invstd recomputed exactly as the forward computed it."""
    B, C, H, W = dout.shape
    d3 = np.ascontiguousarray(dout).reshape(B, C, H * W)
    x3 = np.ascontiguousarray(cache.x).reshape(B, C, H * W)
    dx = np.empty_like(d3)
    dweight, dbias = np.empty(C, dout.dtype), np.empty(C, dout.dtype)
    _batchnorm_backward_kernel(d3, x3, cache.mean, cache.weight, cache.invstd, dx, dweight, dbias)
    return dx.reshape(B, C, H, W), dweight, dbias


# -- SiLU ------------------------------------------------------------------------------------
_CHUNK = 16384  # elements per task: 64 KB of float32, a few microseconds of work


@njit(cache=True, inline="always")
def _chunks(n):
    """Tasks of an elementwise kernel over n values: chunks of _CHUNK."""
    return (n + _CHUNK - 1) // _CHUNK


@njit(cache=True, inline="always")
def _chunk(t, n):
    """Bounds [lo, hi) of task t's chunk."""
    return t * _CHUNK, min(n, (t + 1) * _CHUNK)


@njit(parallel=True, cache=True)
def _silu_forward_kernel(x, out):
    n = x.shape[0]
    for t in prange(_chunks(n)):
        lo, hi = _chunk(t, n)
        # slices, not x[lo + i]: LLVM then vectorises the loops (measured 2.7x faster)
        xs, o = x[lo:hi], out[lo:hi]
        sigmoid_run(xs, o)
        for i in range(hi - lo):
            o[i] = xs[i] * o[i]


def silu_forward(x):
    """SiLU x * sigmoid(x) of an array of any shape; returns out and the cache, x (contiguous).
    The sigmoid is not kept: the backward recomputes it, which costs less than writing it here
    and reading it back there (these layers are memory-bound)."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _silu_forward_kernel(x.reshape(-1), out.reshape(-1))
    return out, x


@njit(parallel=True, cache=True)
def _silu_backward_kernel(dout, x, one, dx):
    n = x.shape[0]
    for t in prange(_chunks(n)):
        lo, hi = _chunk(t, n)
        d, xs, out = dout[lo:hi], x[lo:hi], dx[lo:hi]
        sigmoid_run(xs, out)  # s = sigmoid(x), in dx's own memory
        for i in range(hi - lo):
            s = out[i]
            out[i] = d[i] * s * (one + xs[i] * (one - s))


def silu_backward(dout, cache):
    """dx = dout * s * (1 + x * (1 - s)), s = sigmoid(x), for x = cache and dout of its shape."""
    x, dout = cache, np.ascontiguousarray(dout)
    dx = np.empty_like(dout)
    _silu_backward_kernel(dout.reshape(-1), x.reshape(-1), x.dtype.type(1), dx.reshape(-1))
    return dx


# -- the sum of two branches ------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _add_kernel(a, b, out):
    n = a.shape[0]
    for t in prange(_chunks(n)):
        lo, hi = _chunk(t, n)
        x, y, o = a[lo:hi], b[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            o[i] = x[i] + y[i]


def add(a, b):
    """a + b for two contiguous arrays of one shape and dtype, on Numba's threads."""
    out = np.empty_like(a)
    _add_kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


# -- 1x1 convolution -------------------------------------------------------------------------
_PACK = 256  # pixels per product in the weight gradient, at least
_GROUPS = 8  # partial sums of the weight gradient: fixed, so the sum order never changes
_MIN_TASKS = 8  # tasks per 1x1 product at least: small batches are split into pixel chunks
# Constants passed to jitted helpers are int64, not Python ints: Numba types a literal int as a
# type of its own (Literal[int](0)), so a helper called with 0 in one place and a variable in
# another was compiled twice.
_ZERO = np.int64(0)


@njit(cache=True)
def _image_chunk(t, n_chunks, chunk, L):
    """(image, start, end) of task t when each image's L pixels (or output rows) are cut into
    n_chunks chunks of `chunk`. Callers pass a prange index as np.int64 (see
    `halo_ref.attention.kernels._forward_kernel`), so that this compiles once."""
    lo = (t % n_chunks) * chunk
    return t // n_chunks, lo, min(L, lo + chunk)


@njit(cache=True, inline="always")
def _add_product(acc, d, x, tmp):
    """acc += d @ x^T for d (O, K) and x (C, K), the inner step of every weight gradient (a sum
    over K pixels); tmp: (O, C). d may be a transposed view: BLAS reads either memory order."""
    np.dot(d, x.T, tmp)  # x.T: a transposed view, which BLAS reads without a copy
    acc += tmp


@njit(parallel=True, cache=True)
def _project_kernel(w, x, out, chunk):
    """out[b] = w @ x[b] for w (O, C), x (B, C, L), out (B, O, L): one task per image and chunk
    of pixels."""
    B, C, L = x.shape
    O = w.shape[0]
    n_chunks = (L + chunk - 1) // chunk
    for t in prange(B * n_chunks):
        b, lo, hi = _image_chunk(np.int64(t), n_chunks, chunk, L)
        if hi - lo == L:  # whole image: every operand is a plain slice
            np.dot(w, x[b], out[b])
        else:  # a chunk's pixels are strided in x and out: through contiguous copies
            piece = np.empty((O, hi - lo), x.dtype)
            np.dot(w, np.ascontiguousarray(x[b, :, lo:hi]), piece)
            out[b, :, lo:hi] = piece


@njit(parallel=True, cache=True)
def _weight_grad_kernel(dout, x, partial):
    """partial[g] = sum of dout[b] @ x[b]^T over images b = g, g + G, ... (G = len(partial)),
    in increasing b: dout (B, O, L), x (B, C, L), partial (G, O, C).

    Small maps (L < _PACK pixels) are packed side by side, several images per product, so that
    each product sums over at least _PACK pixels instead of adding many thin ones."""
    B, O, L = dout.shape
    C = x.shape[1]
    G = partial.shape[0]
    per = max(1, _PACK // L)  # images per product
    for g in prange(G):
        acc = partial[g]
        acc[:] = 0
        tmp = np.empty((O, C), x.dtype)
        n_images = (B - g + G - 1) // G  # this group's images: g, g + G, g + 2G, ...
        for i0 in range(0, n_images, per):
            nb = min(per, n_images - i0)
            if nb == 1:
                d_all, x_all = dout[g + i0 * G], x[g + i0 * G]  # O, L and C, L: no copy
            else:
                d_all = np.empty((O, nb * L), x.dtype)
                x_all = np.empty((C, nb * L), x.dtype)
                for j in range(nb):
                    d_all[:, j * L : (j + 1) * L] = dout[g + (i0 + j) * G]
                    x_all[:, j * L : (j + 1) * L] = x[g + (i0 + j) * G]
            _add_product(acc, d_all, x_all, tmp)


def _pixel_chunk(L, B):
    """Pixels per task of the per-image products of a batch of B maps of L pixels: the whole
    map, or chunks small enough that every thread has a task, batch 1 too."""
    tasks = -(-_MIN_TASKS // B)  # chunks per image
    return min(L, max(16, -(-L // tasks)))


def _project(w, x, out):
    """out[b] = w @ x[b] on Numba's threads (see _project_kernel)."""
    B, C, L = x.shape
    with one_blas_thread():
        _project_kernel(w, x, out, _pixel_chunk(L, B))


def _strided_pixels(x, stride):
    """The pixels a 1x1 convolution with this stride reads, (B, C, ceil(H/s) * ceil(W/s))."""
    B, C, H, W = x.shape
    if stride == 1:
        return np.ascontiguousarray(x).reshape(B, C, H * W)
    # every s-th pixel: the column matrix of a 1x1 kernel with stride s
    xs = np.empty((B, C, -(-H // stride) * -(-W // stride)), x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), 1, stride, 0, xs)
    return xs


def _unstrided(dxs, x_shape, stride):
    """The adjoint of `_strided_pixels`: dxs (B, C, pixels read) -> dx of x_shape, zero at
    the pixels a strided convolution skips."""
    if stride == 1:
        return dxs.reshape(x_shape)
    dx = np.empty(x_shape, dxs.dtype)
    _col2im_kernel(dxs, 1, stride, 0, dx)
    return dx


def _weight_grad(dout, x):
    """sum over images of dout[b] @ x[b]^T: dout (B, O, L), x (B, C, L) -> (O, C)."""
    partial = np.empty((min(dout.shape[0], _GROUPS), dout.shape[1], x.shape[1]), dout.dtype)
    with one_blas_thread():
        _weight_grad_kernel(dout, x, partial)
    return partial.sum(axis=0)  # fixed-order sum over the groups


class Conv1x1KernelCache(NamedTuple):
    """What the backwards of `conv1x1_forward` and `conv1x1_to_pixels` need."""

    xs: np.ndarray  # (B, C, pixels): the pixels the convolution read
    w: np.ndarray  # (O, C)
    has_bias: bool
    x_shape: tuple
    stride: int


def conv1x1_forward(x, weight, bias=None, stride=1):
    """`conv1x1_forward` of `halo_ref.nn.functional` on Numba's threads.

    x: (B, C, H, W); weight: (O, C, 1, 1); bias: (O,) or None; stride s keeps every s-th pixel.
    Returns out (B, O, H/s, W/s) and a `Conv1x1KernelCache` for `conv1x1_backward`.
    """
    B, C, H, W = x.shape
    Ho, Wo = -(-H // stride), -(-W // stride)
    xs = _strided_pixels(x, stride)  # B, C, pixels
    w = np.ascontiguousarray(weight[:, :, 0, 0])
    out = np.empty((B, w.shape[0], Ho * Wo), x.dtype)
    _project(w, xs, out)
    if bias is not None:
        out += bias[None, :, None]
    return out.reshape(B, -1, Ho, Wo), Conv1x1KernelCache(xs, w, bias is not None, x.shape, stride)


def conv1x1_backward(dout, cache):
    """Gradients of `conv1x1_forward`: dx (B, C, H, W), dweight (O, C, 1, 1), dbias or None."""
    xs, w, has_bias, x_shape, stride = cache
    B, O, Ho, Wo = dout.shape
    d2 = np.ascontiguousarray(dout).reshape(B, O, Ho * Wo)
    dxs = np.empty((B, w.shape[1], Ho * Wo), dout.dtype)
    _project(np.ascontiguousarray(w.T), d2, dxs)
    dweight = _weight_grad(d2, xs)[:, :, None, None]
    dbias = d2.sum(axis=(0, 2)) if has_bias else None
    return _unstrided(dxs, x_shape, stride), dweight, dbias


# -- 1x1 projections into pixel-major maps (halo attention's queries, keys and values) ------
# The attention kernels read a head's channels pixel by pixel, so the projections write
# (B, pixels, O) instead of (B, O, pixels): the same products with the operands transposed,
# which BLAS takes without copies. The backward takes the gradient in that layout too.
@njit(parallel=True, cache=True)
def _to_pixels_kernel(w, x, out, chunk):
    """out[b, l, o] = sum_c w[o, c] x[b, c, l]: w (O, C), x (B, C, L), out (B, L, O). One task
    per image and chunk of pixels."""
    B, C, L = x.shape
    n_chunks = (L + chunk - 1) // chunk
    for t in prange(B * n_chunks):
        b, lo, hi = _image_chunk(np.int64(t), n_chunks, chunk, L)
        if hi - lo == L:
            xt = x[b].T  # pixels, C: a transposed view, which BLAS reads without a copy
        else:
            xt = np.ascontiguousarray(x[b, :, lo:hi]).T
        np.dot(xt, w.T, out[b, lo:hi])


@njit(parallel=True, cache=True)
def _from_pixels_kernel(wt, d, dx, rows):
    """dx[b, c, l] = sum_o wt[c, o] d[b, l, o]: wt (C, O), d (B, L, O), dx (B, C, L). One task
    per image and block of `rows` input channels."""
    B, L, O = d.shape
    C = wt.shape[0]
    n_rows = (C + rows - 1) // rows
    for t in prange(B * n_rows):
        b = t // n_rows
        c0 = (t % n_rows) * rows
        c1 = min(C, c0 + rows)
        np.dot(wt[c0:c1], d[b].T, dx[b, c0:c1])


@njit(parallel=True, cache=True)
def _weight_grad_pixels_kernel(d, x, partial):
    """partial[g] = sum over the images b of group g of d[b]^T @ x[b]^T, in increasing b:
    d (B, L, O) pixel-major, x (B, C, L), partial (G, O, C). Group g holds the images
    [g*B // G, (g+1)*B // G). Small maps are packed, several images per product (their
    gradients are one contiguous block of rows; the inputs are copied side by side)."""
    B, L, O = d.shape
    C = x.shape[1]
    G = partial.shape[0]
    per = max(1, _PACK // L)  # images per product
    for g in prange(G):
        acc = partial[g]
        acc[:] = 0
        tmp = np.empty((O, C), x.dtype)
        b0, b1 = g * B // G, (g + 1) * B // G
        for i0 in range(b0, b1, per):
            nb = min(per, b1 - i0)
            K = nb * L
            dg = d[i0 : i0 + nb].reshape(K, O)  # pixels of nb images, O
            if nb == 1:
                xg = x[i0]  # C, pixels: no copy
            else:
                xg = np.empty((C, K), x.dtype)
                for j in range(nb):
                    xg[:, j * L : (j + 1) * L] = x[i0 + j]
            _add_product(acc, dg.T, xg, tmp)


def conv1x1_to_pixels(x, weight, bias=None, stride=1):
    """A 1x1 convolution whose output is pixel-major: out[b, i, j, o] = sum_c weight[o, c]
    x[b, c, s*i, s*j] + bias[o].

    x: (B, C, H, W); weight: (O, C) or (O, C, 1, 1); bias: (O,) or None. Returns out
    (B, ceil(H/s), ceil(W/s), O) and a `Conv1x1KernelCache` for `conv1x1_to_pixels_backward`.
    """
    B, C, H, W = x.shape
    w = np.ascontiguousarray(weight.reshape(weight.shape[0], C))
    O = w.shape[0]
    Ho, Wo = -(-H // stride), -(-W // stride)
    xs = _strided_pixels(x, stride)  # B, C, pixels
    L = Ho * Wo
    out = np.empty((B, L, O), x.dtype)
    with one_blas_thread():
        _to_pixels_kernel(w, xs, out, _pixel_chunk(L, B))
    if bias is not None:
        out += bias
    return out.reshape(B, Ho, Wo, O), Conv1x1KernelCache(xs, w, bias is not None, x.shape, stride)


@njit(parallel=True, cache=True)
def _add_strided_kernel(dxs, stride, dx):
    """dx[b, c, stride*oy, stride*ox] += dxs[b, c, oy*Wo + ox]: one task per image."""
    B, C, H, W = dx.shape
    Wo = -(-W // stride)
    for b in prange(B):
        for c in range(C):
            src = dxs[b, c]
            for q in range(src.shape[0]):
                dx[b, c, stride * (q // Wo), stride * (q % Wo)] += src[q]


def conv1x1_to_pixels_backward(dout, cache, add_into=None):
    """Gradients of `conv1x1_to_pixels`: dout (B, Ho, Wo, O) -> dx (B, C, H, W), dweight (O, C),
    dbias (O,) or None. With `add_into` (a contiguous (B, C, H, W) array, say the gradient of
    the same input through another projection), dx is added to it in place and it is returned
    as dx: for a strided projection only the pixels it read are touched, instead of writing a
    full-size gradient that is mostly zeros and adding it."""
    xs, w, has_bias, x_shape, stride = cache
    B, C, L = xs.shape
    O = w.shape[0]
    d = np.ascontiguousarray(dout).reshape(B, L, O)
    dxs = np.empty((B, C, L), d.dtype)
    tasks = -(-_MIN_TASKS // B)  # row blocks per image so that every thread has work
    rows = min(C, max(8, -(-C // tasks)))
    partial = np.empty((min(B, _GROUPS), O, C), d.dtype)
    with one_blas_thread():
        _from_pixels_kernel(np.ascontiguousarray(w.T), d, dxs, rows)
        _weight_grad_pixels_kernel(d, xs, partial)
    dweight = partial.sum(axis=0)  # fixed-order sum over the groups
    dbias = d.sum(axis=(0, 1)) if has_bias else None
    if add_into is not None:
        if stride == 1:
            flat = add_into.reshape(-1)
            _add_kernel(flat, dxs.reshape(-1), flat)
        else:
            _add_strided_kernel(dxs, stride, add_into)
        return add_into, dweight, dbias
    return _unstrided(dxs, x_shape, stride), dweight, dbias


# -- k x k convolution -----------------------------------------------------------------------
# im2col turns every output pixel's receptive field into one column, so that a convolution is
# one product per image. The columns are k*k/stride^2 times the input (2.25x for the stem's
# 3x3 stride-2 convolution), so they are built per image inside a task and used at once, while
# they are in the core's cache, instead of being written out whole and read back (twice in the
# backward): the network's step is bound by memory traffic outside the attention.
@njit(cache=True)
def _im2col_image(xb, k, stride, padding, oy0, oy1, cols):
    """cols[(c*k + i)*k + j, (oy - oy0)*Wo + ox] = xb[c, stride*oy + i - padding, stride*ox + j
    - padding] for output rows oy0 <= oy < oy1 (0 outside the image); xb: (C, H, W). (One
    loop over the row with the bounds test inside: measured 1.5-7x faster than splitting each
    row into its padding and interior parts, short loops each.)"""
    C, H, W = xb.shape
    Wo = cols.shape[1] // (oy1 - oy0)
    for c in range(C):
        for i in range(k):
            for j in range(k):
                row = cols[(c * k + i) * k + j]
                for oy in range(oy0, oy1):
                    y = stride * oy + i - padding
                    for ox in range(Wo):
                        xx = stride * ox + j - padding
                        inside = 0 <= y < H and 0 <= xx < W
                        row[(oy - oy0) * Wo + ox] = xb[c, y, xx] if inside else 0


@njit(cache=True)
def _col2im_image(dcols, k, stride, padding, dxb):
    """The adjoint of `_im2col_image` over all output rows: dxb = the sum of every column entry
    onto the input pixel it was copied from, in a fixed order."""
    C, H, W = dxb.shape
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = dcols.shape[1] // Ho
    dxb[:] = 0
    for c in range(C):
        for i in range(k):
            for j in range(k):
                row = dcols[(c * k + i) * k + j]
                for oy in range(Ho):
                    y = stride * oy + i - padding
                    if 0 <= y < H:
                        for ox in range(Wo):
                            xx = stride * ox + j - padding
                            if 0 <= xx < W:
                                dxb[c, y, xx] += row[oy * Wo + ox]


@njit(parallel=True, cache=True)
def _im2col_kernel(x, k, stride, padding, cols):
    """cols[b] = the columns of image b (see `_im2col_image`), one task per image. The 1x1
    strided projections use it (k = 1) to pick every stride-th pixel."""
    Ho = (x.shape[2] + 2 * padding - k) // stride + 1
    for b in prange(x.shape[0]):
        _im2col_image(x[b], k, stride, padding, _ZERO, Ho, cols[b])


@njit(parallel=True, cache=True)
def _col2im_kernel(dcols, k, stride, padding, dx):
    """The adjoint of `_im2col_kernel`, one task per image."""
    for b in prange(dx.shape[0]):
        _col2im_image(dcols[b], k, stride, padding, dx[b])


@njit(parallel=True, cache=True)
def _conv_forward_kernel(x, w2, k, stride, padding, out, band):
    """out[b] = w2 @ columns(x[b]) for w2 (O, C*k*k), out (B, O, Ho*Wo): one task per image
    and band of `band` output rows."""
    B = x.shape[0]
    O, CKK = w2.shape
    Ho = (x.shape[2] + 2 * padding - k) // stride + 1
    Wo = out.shape[2] // Ho
    n_bands = (Ho + band - 1) // band
    for t in prange(B * n_bands):
        b, oy0, oy1 = _image_chunk(np.int64(t), n_bands, band, Ho)
        n = (oy1 - oy0) * Wo
        cols = np.empty((CKK, n), x.dtype)
        _im2col_image(x[b], k, stride, padding, oy0, oy1, cols)
        if n == Ho * Wo:
            np.dot(w2, cols, out[b])
        else:  # a band's pixels are strided in out: through a contiguous copy
            piece = np.empty((O, n), x.dtype)
            np.dot(w2, cols, piece)
            out[b, :, oy0 * Wo : oy1 * Wo] = piece


@njit(parallel=True, cache=True)
def _conv_backward_kernel(x, w2, dout, k, stride, padding, dx, partial):
    """For the images b of group g = [g*B // G, (g+1)*B // G), in increasing b: partial[g] +=
    dout[b] @ columns(x[b])^T, and dx[b] = col2im(w2^T @ dout[b])."""
    B = x.shape[0]
    G = partial.shape[0]
    O, CKK = w2.shape
    L = dout.shape[2]
    Ho = (x.shape[2] + 2 * padding - k) // stride + 1
    for g in prange(G):
        acc = partial[g]
        acc[:] = 0
        cols = np.empty((CKK, L), x.dtype)
        dcols = np.empty((CKK, L), x.dtype)
        tmp = np.empty((O, CKK), x.dtype)
        for b in range(g * B // G, (g + 1) * B // G):
            _im2col_image(x[b], k, stride, padding, _ZERO, Ho, cols)
            _add_product(acc, dout[b], cols, tmp)
            np.dot(w2.T, dout[b], dcols)
            _col2im_image(dcols, k, stride, padding, dx[b])


class Conv2dKernelCache(NamedTuple):
    """What `conv2d_backward` needs: x itself (the backward rebuilds the columns)."""

    x: np.ndarray  # (B, C, H, W), contiguous
    weight: np.ndarray  # (O, C, k, k)
    has_bias: bool
    stride: int
    padding: int


def conv2d_forward(x, weight, bias=None, stride=1, padding=0):
    """`conv2d_forward` of `halo_ref.nn.functional` on Numba's threads: per image (and band of
    output rows for small batches), the columns in a task's scratch, then one product.
    x: (B, C, H, W); weight: (O, C, k, k); returns out (B, O, Ho, Wo) and a
    `Conv2dKernelCache`."""
    B, C, H, W = x.shape
    O, _, k, _ = weight.shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(weight.reshape(O, C * k * k))
    out = np.empty((B, O, Ho * Wo), x.dtype)
    band = Ho if B >= _MIN_TASKS else max(1, -(-Ho * B // _MIN_TASKS))  # a task for every thread
    with one_blas_thread():
        _conv_forward_kernel(x, w2, k, stride, padding, out, band)
    if bias is not None:
        out += bias[None, :, None]
    return out.reshape(B, O, Ho, Wo), Conv2dKernelCache(
        x, weight, bias is not None, stride, padding
    )


def conv2d_backward(dout, cache):
    """Gradients of `conv2d_forward` above: dx (B, C, H, W), dweight (O, C, k, k), dbias."""
    x, weight, has_bias, stride, padding = cache
    O, C, k, _ = weight.shape
    B = x.shape[0]
    d2 = np.ascontiguousarray(dout).reshape(B, O, -1)
    dx = np.empty(x.shape, dout.dtype)
    partial = np.empty((min(B, _GROUPS), O, C * k * k), dout.dtype)
    w2 = np.ascontiguousarray(weight.reshape(O, C * k * k))
    with one_blas_thread():
        _conv_backward_kernel(x, w2, d2, k, stride, padding, dx, partial)
    dweight = partial.sum(axis=0).reshape(weight.shape)  # fixed-order sum over the groups
    dbias = d2.sum(axis=(0, 2)) if has_bias else None
    return dx, dweight, dbias
