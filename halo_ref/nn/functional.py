"""Small layers as forward/backward function pairs (the CS231n pattern).

`out, cache = thing_forward(x, ...)` computes the layer and keeps what its backward needs;
`grads = thing_backward(dout, cache)` returns the gradient of the loss with respect to each input,
given the gradient `dout` with respect to the output. Each backward is the chain rule applied by
hand to its own forward, and each one is checked against finite differences in the tests.
"""

from __future__ import annotations

import contextlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._checks import HaloRefError


def _sum_of_products(a, b):
    """sum over images i of a[i] @ b[i]^T: a (B, O, L), b (B, K, L) -> (O, K).

    A batched product then a sum over the batch: no transposed copy of the maps (which one big
    product would need); measured faster than a Python loop of products when BLAS has 2 threads.
    """
    return np.matmul(a, b.transpose(0, 2, 1)).sum(axis=0)


@contextlib.contextmanager
def numpy_kernels():
    """Run a block with every layer's NumPy formula (the readable reference), whatever the
    kernel switches below say: results then depend on nothing but NumPy (not on Numba's
    threads, nor on how the Numba kernels cut their BLAS products)."""
    global CONV_KERNEL, SILU_KERNEL, BATCHNORM_KERNEL, ADD_KERNEL
    saved = CONV_KERNEL, SILU_KERNEL, BATCHNORM_KERNEL, ADD_KERNEL
    CONV_KERNEL = SILU_KERNEL = BATCHNORM_KERNEL = ADD_KERNEL = "numpy"
    try:
        yield
    finally:
        CONV_KERNEL, SILU_KERNEL, BATCHNORM_KERNEL, ADD_KERNEL = saved


# -- the sum of two branches --------------------------------------------------------------------
# "numba": the parallel kernel of `halo_ref._layers_numba` (NumPy's add runs on one core while
# the other waits); "numpy": a + b.
ADD_KERNEL = "numba"


def add(a, b):
    """a + b for two arrays of one shape: where a residual block's two branches meet (forward)
    and where two gradients of one input meet (backward). Returns a new array."""
    if a.shape == b.shape and _use_numba(ADD_KERNEL, a, b):
        from .kernels import add as kernel

        return kernel(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return a + b


# -- 1x1 convolution ---------------------------------------------------------------------------
def conv1x1_forward(x, weight, bias=None, stride=1):
    """Pointwise convolution: out[b, o, i, j] = sum_c weight[o, c] x[b, c, s*i, s*j] + bias[o].

    x: (B, C, H, W); weight: (O, C, 1, 1) (PyTorch's layout); bias: (O,) or None;
    stride s in {1, 2} keeps every s-th pixel. Returns out (B, O, H/s, W/s) and a cache.
    """
    xs = x[:, :, ::stride, ::stride] if stride > 1 else x
    B, C, Ho, Wo = xs.shape
    xs = xs.reshape(B, C, Ho * Wo)  # B, C, pixels (a copy only when strided)
    # one (O, C) @ (C, pixels) product per image: BLAS without transposing the map
    out = np.matmul(weight[:, :, 0, 0], xs)
    if bias is not None:
        out += bias[None, :, None]
    return out.reshape(B, -1, Ho, Wo), (xs, weight, bias is not None, x.shape, stride)


def conv1x1_backward(dout, cache):
    """Gradients of `conv1x1_forward`: returns dx (B, C, H, W), dweight (O, C, 1, 1), dbias (O,) or None."""
    xs, weight, has_bias, x_shape, stride = cache
    B, O, Ho, Wo = dout.shape
    d2 = dout.reshape(B, O, Ho * Wo)
    dxs = np.matmul(weight[:, :, 0, 0].T, d2).reshape(B, -1, Ho, Wo)
    dweight = _sum_of_products(d2, xs)[:, :, None, None]
    dbias = d2.sum(axis=(0, 2)) if has_bias else None
    if stride > 1:
        dx = np.zeros(x_shape, dtype=dout.dtype)
        dx[:, :, ::stride, ::stride] = dxs  # the skipped pixels did not reach the output
    else:
        dx = dxs
    return dx, dweight, dbias


# -- 2x2 average pooling -----------------------------------------------------------------------
def avgpool2x2_forward(x):
    """Non-overlapping 2x2 mean: x (B, C, H, W) with H, W even -> (B, C, H/2, W/2)."""
    B, C, H, W = x.shape
    out = x.reshape(B, C, H // 2, 2, W // 2, 2).mean(axis=(3, 5))
    return out, x.shape


def avgpool2x2_backward(dout, cache):
    """Each input pixel receives a quarter of its window's output gradient: dx (B, C, H, W)."""
    B, C, H, W = cache
    dx = np.broadcast_to(dout[:, :, :, None, :, None] / 4, (B, C, H // 2, 2, W // 2, 2))
    return dx.reshape(B, C, H, W)


# -- softmax over the last axis ----------------------------------------------------------------
def softmax_forward(logits):
    """Softmax over the last axis; -inf logits (masked positions) get probability exactly 0.

    Assumes every row has at least one finite logit (true for halo attention: a query's own
    block is always inside its window and inside the image).
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, cache):
    """d logits = p * (dp - sum(dp * p)): the Jacobian of softmax applied to dp, row by row."""
    p = cache
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


# -- k x k convolution (im2col + one batched matrix product) ----------------------------------
# "numba": convolutions run on Numba's threads (the kernels of `halo_ref._layers_numba`, the
# same im2col maths); "numpy": the NumPy version below. Tests check both.
CONV_KERNEL = "numba"


def _use_numba(setting, *arrays):
    """Whether to take a Numba kernel: chosen, and every array float32 or every one float64."""
    dtypes = {a.dtype for a in arrays}
    return setting == "numba" and len(dtypes) == 1 and dtypes.pop() in (np.float32, np.float64)


def _pad_hw(x, padding, value=0.0):
    """Pad the two spatial axes of (B, C, H, W) by `padding` pixels on each side."""
    if padding == 0:
        return x
    p = padding
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=value)


def conv_output_size(n, kernel_size, stride, padding):
    """PyTorch's output length of a convolution or pooling window along one axis."""
    return (n + 2 * padding - kernel_size) // stride + 1


def conv2d_forward(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation, PyTorch's `conv2d` with square kernel, stride and zero padding.

    x: (B, C, H, W); weight: (O, C, k, k); bias: (O,) or None.
    Returns out (B, O, Ho, Wo) with Ho = (H + 2*padding - k) // stride + 1, and a cache.

    im2col: every output pixel's k*k*C receptive field becomes one column, so the whole
    convolution is one matrix product (O, C*k*k) @ (C*k*k, Ho*Wo) per image, done by BLAS.
    A 1x1 stride-1 convolution skips the copy: the map itself is already the column matrix.
    """
    B, C, H, W = x.shape
    O, _, k, _ = weight.shape
    if _use_numba(CONV_KERNEL, x, weight):
        from . import kernels

        if k == 1 and padding == 0:  # no column copy: the map itself is the column matrix
            out, cache = kernels.conv1x1_forward(x, weight, bias, stride)
            return out, ("numba 1x1", cache)
        out, cache = kernels.conv2d_forward(x, weight, bias, stride, padding)
        return out, ("numba", cache)
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    w2 = weight.reshape(O, C * k * k)
    if k == 1 and stride == 1 and padding == 0:
        cols = x.reshape(B, C, H * W)  # B, C*k*k, Ho*Wo (no copy)
    else:
        xp = _pad_hw(x, padding)
        win = sliding_window_view(xp, (k, k), axis=(2, 3))  # B, C, Hp-k+1, Wp-k+1, k, k (view)
        win = win[:, :, : stride * (Ho - 1) + 1 : stride, : stride * (Wo - 1) + 1 : stride]
        # B, C, k, k, Ho, Wo -> columns ordered (c, ky, kx) like weight.reshape(O, C*k*k)
        cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(B, C * k * k, Ho * Wo)
    out = np.matmul(w2, cols)  # B, O, Ho*Wo
    if bias is not None:
        out += bias[None, :, None]
    out = out.reshape(B, O, Ho, Wo)
    return out, (cols, weight, bias is not None, x.shape, stride, padding)


def conv2d_backward(dout, cache):
    """Gradients of `conv2d_forward`: dx (B, C, H, W), dweight (O, C, k, k), dbias (O,) or None.

    The column matrix makes dweight = sum over images of dout @ cols^T and dcols = weight^T @
    dout; col2im then adds each column entry back onto the input pixel it was copied from.
    """
    if isinstance(cache[0], str):  # (which Numba kernel, its cache)
        from . import kernels

        kind, kernel_cache = cache
        backward = kernels.conv1x1_backward if kind == "numba 1x1" else kernels.conv2d_backward
        return backward(dout.astype(kernel_cache[1].dtype, copy=False), kernel_cache)
    cols, weight, has_bias, x_shape, stride, padding = cache
    B, C, H, W = x_shape
    O, _, k, _ = weight.shape
    Ho, Wo = dout.shape[2:]
    d2 = dout.reshape(B, O, Ho * Wo)
    dweight = _sum_of_products(d2, cols).reshape(weight.shape)
    dbias = d2.sum(axis=(0, 2)) if has_bias else None
    dcols = np.matmul(weight.reshape(O, C * k * k).T, d2)  # B, C*k*k, Ho*Wo
    if k == 1 and stride == 1 and padding == 0:
        return dcols.reshape(x_shape), dweight, dbias
    dcols = dcols.reshape(B, C, k, k, Ho, Wo)
    dxp = np.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=dout.dtype)
    for i in range(k):  # col2im: k*k strided slice-adds, the adjoint of the window copy
        for j in range(k):
            dxp[:, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride] += dcols[
                :, :, i, j
            ]
    dx = dxp[:, :, padding : padding + H, padding : padding + W] if padding else dxp
    return dx, dweight, dbias


# -- batch normalisation -----------------------------------------------------------------------
# "numba": training-mode BatchNorm runs the two-pass kernels of `halo_ref._layers_numba` (same
# maths, 3-4x faster on large maps); "numpy": the expressions below. Tests check both.
BATCHNORM_KERNEL = "numba"


def _batchnorm2d_train_numba(x, weight, bias, running_mean, running_var, momentum, eps):
    """Training-mode forward through the Numba kernel; same outputs and cache as below."""
    from .kernels import batchnorm_train_forward

    B, C, H, W = x.shape
    x3 = np.ascontiguousarray(x).reshape(B, C, H * W)
    out, mean, var, invstd = batchnorm_train_forward(x3, weight, bias, eps)
    n = B * H * W
    running_mean *= 1 - momentum
    running_mean += (momentum * mean).astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += (momentum * var * (n / (n - 1))).astype(running_var.dtype)
    return out.reshape(x.shape), (x3.reshape(x.shape), mean, invstd, weight, True)


def batchnorm2d_forward(
    x, weight, bias, running_mean, running_var, *, training, momentum=0.1, eps=1e-5
):
    """Batch normalisation over (B, H, W) per channel, PyTorch's `BatchNorm2d`.

    x: (B, C, H, W); weight, bias, running_mean, running_var: (C,).
    Training: normalise with the batch mean and biased variance, and update the running
    statistics in place with PyTorch's convention running = (1 - momentum) * running +
    momentum * batch, using the unbiased variance (n / (n - 1)) for running_var.
    Evaluation: normalise with the running statistics. Returns out (B, C, H, W) and a cache,
    which keeps x, not the normalised x: the backward recomputes it (x is needed anyway by
    whoever computed it, and writing a second copy costs memory traffic).
    """
    C = x.shape[1]
    if training:
        n = x.size // C
        if n < 2:
            raise HaloRefError(
                f"BatchNorm2d: training needs more than one value per channel, got input shape "
                f"{x.shape}; use a batch of 2 or more or call model.eval()"
            )
        if _use_numba(BATCHNORM_KERNEL, x, weight, bias):
            return _batchnorm2d_train_numba(
                x, weight, bias, running_mean, running_var, momentum, eps
            )
        mean = x.mean(axis=(0, 2, 3))
        xc = x - mean[None, :, None, None]
        var = np.einsum("bchw,bchw->c", xc, xc) / n  # biased, as used for normalising
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (n / (n - 1))
    else:
        mean, var = running_mean.copy(), running_var  # a copy: later updates must not reach it
    invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    out = _normalised(x, mean, invstd) * weight[None, :, None, None] + bias[None, :, None, None]
    return out, (x, mean, invstd, weight, training)


def _normalised(x, mean, invstd):
    """xhat = (x - mean) * invstd per channel of (B, C, H, W)."""
    return (x - mean[None, :, None, None]) * invstd[None, :, None, None]


def batchnorm2d_backward(dout, cache):
    """Gradients of `batchnorm2d_forward`: dx (B, C, H, W), dweight (C,), dbias (C,).

    In training the mean and variance depend on x, which adds the two projection terms:
    dx = invstd / n * (n * g - sum(g) - xhat * sum(g * xhat)) with g = dout * weight.
    In evaluation the statistics are constants and dx = dout * weight * invstd.
    """
    x, mean, invstd, weight, training = cache
    if training and _use_numba(BATCHNORM_KERNEL, dout, x):
        from .kernels import batchnorm_train_backward

        B, C, H, W = dout.shape
        d3 = np.ascontiguousarray(dout).reshape(B, C, H * W)
        x3 = np.ascontiguousarray(x).reshape(B, C, H * W)
        dx, dweight, dbias = batchnorm_train_backward(d3, x3, mean, weight, invstd)
        return dx.reshape(B, C, H, W), dweight, dbias
    xhat = _normalised(x, mean, invstd)
    dbias = dout.sum(axis=(0, 2, 3))
    dweight = np.einsum("bchw,bchw->c", dout, xhat)
    scale = (weight * invstd)[None, :, None, None]
    if not training:
        return dout * scale, dweight, dbias
    n = dout.size // dout.shape[1]
    # sum(g) = weight * dbias and sum(g * xhat) = weight * dweight, per channel
    dx = scale * (
        dout - (dbias / n)[None, :, None, None] - xhat * (dweight / n)[None, :, None, None]
    )
    return dx, dweight, dbias


# -- activations ---------------------------------------------------------------------------------
def relu_forward(x):
    """max(x, 0) elementwise; the cache is the mask of positive inputs."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dout, cache):
    """The gradient passes where the input was positive (0 at x = 0, as PyTorch)."""
    return dout * cache


# "numba": SiLU runs the one-pass parallel kernel of `halo_ref._layers_numba`; "numpy": below.
SILU_KERNEL = "numba"


def silu_forward(x):
    """SiLU (swish): x * sigmoid(x) elementwise."""
    if _use_numba(SILU_KERNEL, x):
        from .kernels import silu_forward as kernel

        x = np.ascontiguousarray(x)
        return kernel(x), x
    return x * _sigmoid(x), x


def _sigmoid(x):
    """1 / (1 + exp(-x)), in place in one buffer instead of four temporaries."""
    sig = np.negative(x)
    np.exp(sig, out=sig)
    sig += 1
    np.reciprocal(sig, out=sig)
    return sig


def silu_backward(dout, cache):
    """d/dx x*s(x) = s(x) * (1 + x * (1 - s(x))); the cache is x, and s(x) is recomputed (a
    cheaper trade than storing it: these layers are bound by memory traffic, not arithmetic)."""
    x = cache
    if _use_numba(SILU_KERNEL, dout, x) and dout.shape == x.shape:
        from .kernels import silu_backward as kernel

        return kernel(np.ascontiguousarray(dout), x)
    sig = _sigmoid(x)
    g = 1 - sig
    g *= x
    g += 1
    g *= sig
    g *= dout
    return g


# -- pooling -----------------------------------------------------------------------------------
def maxpool2d_forward(x, kernel_size, stride, padding=0):
    """Max over k x k windows, PyTorch's `max_pool2d` (padding counts as -inf).

    x: (B, C, H, W) -> out (B, C, Ho, Wo) and a cache holding each window's argmax.
    """
    B, C, H, W = x.shape
    k, s = kernel_size, stride
    Ho, Wo = conv_output_size(H, k, s, padding), conv_output_size(W, k, s, padding)
    xp = _pad_hw(x, padding, value=-np.inf)
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[
        :, :, : s * (Ho - 1) + 1 : s, : s * (Wo - 1) + 1 : s
    ]
    win = win.reshape(B, C, Ho, Wo, k * k)  # copies: B, C, Ho, Wo, k*k
    arg = win.argmax(axis=-1)
    out = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return out, (arg, x.shape, k, s, padding)


def maxpool2d_backward(dout, cache):
    """The whole gradient of a window goes to its (first) maximum: dx (B, C, H, W)."""
    arg, (B, C, H, W), k, s, p = cache
    Ho, Wo = dout.shape[2:]
    dxp = np.zeros((B, C, H + 2 * p, W + 2 * p), dtype=dout.dtype)
    for i in range(k):
        for j in range(k):
            sel = np.where(arg == i * k + j, dout, 0)
            dxp[:, :, i : i + s * Ho : s, j : j + s * Wo : s] += sel
    return dxp[:, :, p : p + H, p : p + W]


def global_avgpool_forward(x):
    """Mean over the spatial axes: x (B, C, H, W) -> (B, C)."""
    return x.mean(axis=(2, 3)), x.shape


def global_avgpool_backward(dout, cache):
    """Every pixel receives 1/(H*W) of its channel's gradient: dx (B, C, H, W)."""
    B, C, H, W = cache
    return np.broadcast_to((dout / (H * W))[:, :, None, None], (B, C, H, W)).copy()


# -- fully connected ---------------------------------------------------------------------------
def linear_forward(x, weight, bias=None):
    """x @ weight^T + bias, PyTorch's `Linear`: x (B, I); weight (O, I); bias (O,) -> (B, O)."""
    out = x @ weight.T
    if bias is not None:
        out += bias
    return out, (x, weight, bias is not None)


def linear_backward(dout, cache):
    """Gradients of `linear_forward`: dx (B, I), dweight (O, I), dbias (O,) or None."""
    x, weight, has_bias = cache
    return dout @ weight, dout.T @ x, (dout.sum(axis=0) if has_bias else None)


# -- softmax cross-entropy with label smoothing ------------------------------------------------
def cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """Mean softmax cross-entropy over the batch, PyTorch's `cross_entropy(label_smoothing=e)`.

    logits: (B, K) floats; labels: (B,) integers in [0, K). The target distribution is
    (1 - e) * one_hot(label) + e / K. Returns (loss as a Python float, cache).
    """
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.dtype.kind != "f":
        got = getattr(logits, "shape", type(logits).__name__)
        raise HaloRefError(f"cross_entropy: logits must be a 2-D float array (B, K), got {got}")
    B, K = logits.shape
    labels = np.asarray(labels)
    if labels.shape != (B,) or labels.dtype.kind not in "iu":
        raise HaloRefError(
            f"cross_entropy: labels must be {B} integers (shape ({B},)), got dtype "
            f"{labels.dtype} and shape {labels.shape}; pass class indices, not one-hot vectors"
        )
    if B and (labels.min() < 0 or labels.max() >= K):
        bad = int(labels[(labels < 0) | (labels >= K)][0])
        raise HaloRefError(
            f"cross_entropy: label {bad} is out of range for {K} classes; labels must be in "
            f"[0, {K - 1}]"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise HaloRefError(
            f"cross_entropy: label_smoothing={label_smoothing} must be in [0, 1]; 0.1 is usual"
        )
    shifted = logits - logits.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - logsumexp  # B, K log-probabilities
    target = np.full((B, K), label_smoothing / K, dtype=logits.dtype)
    target[np.arange(B), labels] += 1.0 - label_smoothing
    loss = -float(np.sum(target * logp)) / B
    return loss, (np.exp(logp), target)


def cross_entropy_backward(cache, dloss=1.0):
    """d loss / d logits = (softmax(logits) - target) / B, times `dloss`: (B, K)."""
    p, target = cache
    return (p - target) * (dloss / p.shape[0])
