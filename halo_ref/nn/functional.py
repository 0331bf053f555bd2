"""The network's layers as forward/backward function pairs (the CS231n pattern), in NumPy.

`out, cache = thing_forward(x, ...)` computes the layer and keeps what its backward needs;
`grads = thing_backward(dout, cache)` returns the gradient of the loss with respect to each input,
given the gradient `dout` with respect to the output. Each backward is the chain rule applied by
hand to its own forward, and each one is checked against finite differences in the tests.

Plain NumPy, no dispatch: `halo_ref.nn.kernels` computes some of these pairs with Numba kernels
(same contracts, tested against these), and `halo_ref.backend` chooses between them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._checks import HaloRefError


def _sum_of_products(a, b):
    """sum over images i of a[i] @ b[i]^T: a (B, O, L), b (B, K, L) -> (O, K).

    A batched product then a sum over the batch: no transposed copy of the maps (which one big
    product would need); measured faster than a Python loop of products when BLAS has 2 threads.
    """
    return np.matmul(a, b.transpose(0, 2, 1)).sum(axis=0)


# -- 1x1 convolution ---------------------------------------------------------------------------
class Conv1x1Cache(NamedTuple):
    """What `conv1x1_backward` needs."""

    xs: np.ndarray  # (B, C, pixels): the pixels the convolution read
    weight: np.ndarray  # (O, C, 1, 1)
    has_bias: bool
    x_shape: tuple
    stride: int


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
    return out.reshape(B, -1, Ho, Wo), Conv1x1Cache(xs, weight, bias is not None, x.shape, stride)


def conv1x1_backward(dout, cache):
    """Gradients of `conv1x1_forward`: dx (B, C, H, W), dweight (O, C, 1, 1), dbias (O,) or None."""
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
class Conv2dCache(NamedTuple):
    """What `conv2d_backward` needs."""

    cols: np.ndarray  # (B, C*k*k, Ho*Wo): every output pixel's receptive field, one column each
    weight: np.ndarray  # (O, C, k, k)
    has_bias: bool
    x_shape: tuple
    stride: int
    padding: int


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
    (For a 1x1 kernel without padding the columns are just the pixels: `conv1x1_forward`.)
    """
    B, C, H, W = x.shape
    O, _, k, _ = weight.shape
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    xp = _pad_hw(x, padding)
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # B, C, Hp-k+1, Wp-k+1, k, k (view)
    win = win[:, :, : stride * (Ho - 1) + 1 : stride, : stride * (Wo - 1) + 1 : stride]
    # B, C, k, k, Ho, Wo -> columns ordered (c, ky, kx) like weight.reshape(O, C*k*k)
    cols = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(B, C * k * k, Ho * Wo)
    out = np.matmul(weight.reshape(O, C * k * k), cols)  # B, O, Ho*Wo
    if bias is not None:
        out += bias[None, :, None]
    out = out.reshape(B, O, Ho, Wo)
    return out, Conv2dCache(cols, weight, bias is not None, x.shape, stride, padding)


def conv2d_backward(dout, cache):
    """Gradients of `conv2d_forward`: dx (B, C, H, W), dweight (O, C, k, k), dbias (O,) or None.

    The column matrix makes dweight = sum over images of dout @ cols^T and dcols = weight^T @
    dout; col2im then adds each column entry back onto the input pixel it was copied from.
    """
    cols, weight, has_bias, x_shape, stride, padding = cache
    B, C, H, W = x_shape
    O, _, k, _ = weight.shape
    Ho, Wo = dout.shape[2:]
    d2 = dout.reshape(B, O, Ho * Wo)
    dweight = _sum_of_products(d2, cols).reshape(weight.shape)
    dbias = d2.sum(axis=(0, 2)) if has_bias else None
    dcols = np.matmul(weight.reshape(O, C * k * k).T, d2)  # B, C*k*k, Ho*Wo
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
class BatchNormCache(NamedTuple):
    """What `batchnorm2d_backward` needs: x itself, not the normalised x (the backward
    recomputes it: x is needed anyway by whoever computed it, and writing a second copy costs
    memory traffic)."""

    x: np.ndarray  # (B, C, H, W)
    mean: np.ndarray  # (C,): the statistics the forward normalised with
    invstd: np.ndarray  # (C,)
    weight: np.ndarray  # (C,)
    training: bool


def update_running_stats(running_mean, running_var, mean, var, n, momentum):
    """In place, PyTorch's convention: running = (1 - momentum) * running + momentum * batch,
    with the unbiased variance var * n / (n - 1) for running_var. mean, var: (C,), the batch's
    statistics over n values per channel (var biased, as used for normalising)."""
    running_mean *= 1 - momentum
    running_mean += (momentum * mean).astype(running_mean.dtype, copy=False)
    running_var *= 1 - momentum
    running_var += (momentum * var * (n / (n - 1))).astype(running_var.dtype, copy=False)


def batchnorm2d_forward(
    x, weight, bias, running_mean, running_var, *, training, momentum=0.1, eps=1e-5
):
    """Batch normalisation over (B, H, W) per channel, PyTorch's `BatchNorm2d`.

    x: (B, C, H, W); weight, bias, running_mean, running_var: (C,).
    Training: normalise with the batch mean and biased variance, and update the running
    statistics in place (`update_running_stats`). Evaluation: normalise with the running
    statistics. Returns out (B, C, H, W) and a `BatchNormCache`.
    """
    if training:
        n = batch_values(x)
        mean = x.mean(axis=(0, 2, 3))
        xc = x - mean[None, :, None, None]
        var = np.einsum("bchw,bchw->c", xc, xc) / n  # biased, as used for normalising
        update_running_stats(running_mean, running_var, mean, var, n, momentum)
    else:
        mean, var = running_mean.copy(), running_var  # a copy: later updates must not reach it
    invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    out = _normalised(x, mean, invstd) * weight[None, :, None, None] + bias[None, :, None, None]
    return out, BatchNormCache(x, mean, invstd, weight, training)


def batch_values(x):
    """The number of values per channel that training-mode statistics average, n = B*H*W, or a
    one-line error when it is 1 (no variance to normalise with)."""
    n = x.size // x.shape[1]
    if n < 2:
        raise HaloRefError(
            f"BatchNorm2d: training needs more than one value per channel, got input shape "
            f"{x.shape}; use a batch of 2 or more or call model.eval()"
        )
    return n


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


def silu_forward(x):
    """SiLU (swish): x * sigmoid(x) elementwise; the cache is x."""
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
    sig = _sigmoid(x)
    g = 1 - sig
    g *= x
    g += 1
    g *= sig
    g *= dout
    return g


# -- pooling -----------------------------------------------------------------------------------
class MaxPoolCache(NamedTuple):
    """What `maxpool2d_backward` needs."""

    argmax: np.ndarray  # (B, C, Ho, Wo): each window's maximum, as ky * k + kx
    x_shape: tuple
    kernel_size: int
    stride: int
    padding: int


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
    return out, MaxPoolCache(arg, x.shape, k, s, padding)


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
class LinearCache(NamedTuple):
    """What `linear_backward` needs."""

    x: np.ndarray  # (B, I)
    weight: np.ndarray  # (O, I)
    has_bias: bool


def linear_forward(x, weight, bias=None):
    """x @ weight^T + bias, PyTorch's `Linear`: x (B, I); weight (O, I); bias (O,) -> (B, O)."""
    out = x @ weight.T
    if bias is not None:
        out += bias
    return out, LinearCache(x, weight, bias is not None)


def linear_backward(dout, cache):
    """Gradients of `linear_forward`: dx (B, I), dweight (O, I), dbias (O,) or None."""
    x, weight, has_bias = cache
    return dout @ weight, dout.T @ x, (dout.sum(axis=0) if has_bias else None)


# -- softmax cross-entropy with label smoothing ------------------------------------------------
class CrossEntropyCache(NamedTuple):
    """What `cross_entropy_backward` needs."""

    probs: np.ndarray  # (B, K): softmax(logits)
    target: np.ndarray  # (B, K): the smoothed one-hot targets


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
    return loss, CrossEntropyCache(np.exp(logp), target)


def cross_entropy_backward(cache, dloss=1.0):
    """d loss / d logits = (softmax(logits) - target) / B, times `dloss`: (B, K)."""
    p, target = cache
    return (p - target) * (dloss / p.shape[0])


# -- grouped convolution -------------------------------------------------------------------------
class GroupedConvCache(NamedTuple):
    """What `grouped_conv2d_backward` needs: one convolution cache per group."""

    groups: int
    caches: tuple  # `conv2d_forward` (or `conv1x1_forward`) caches, group by group


def _group_conv_forward(x, weight, bias, stride, padding):
    """One group's convolution: the 1x1 path when the kernel allows it (no im2col)."""
    if weight.shape[2] == 1 and padding == 0:
        return conv1x1_forward(x, weight, bias, stride)
    return conv2d_forward(x, weight, bias, stride, padding)


def grouped_conv2d_forward(x, weight, bias=None, stride=1, padding=0, groups=1):
    """PyTorch's `conv2d(..., groups=g)`: output channel group i sees only input group i.

    x: (B, C, H, W); weight: (O, C/g, k, k); bias: (O,) or None; g divides C and O.
    Returns out (B, O, Ho, Wo) and a `GroupedConvCache`. Each group is an ordinary convolution
    of its slice of the channels, so the maths is that of `conv2d_forward`; the output is the
    groups' outputs side by side (a block-diagonal weight, without its zeros).
    """
    cg, og = x.shape[1] // groups, weight.shape[0] // groups
    outs, caches = [], []
    for g in range(groups):
        xg = np.ascontiguousarray(x[:, g * cg : (g + 1) * cg])  # B, C/g, H, W
        wg = np.ascontiguousarray(weight[g * og : (g + 1) * og])  # O/g, C/g, k, k
        bg = None if bias is None else bias[g * og : (g + 1) * og]
        out, cache = _group_conv_forward(xg, wg, bg, stride, padding)
        outs.append(out)
        caches.append(cache)
    return np.concatenate(outs, axis=1), GroupedConvCache(groups, tuple(caches))


def grouped_conv2d_backward(dout, cache):
    """Gradients of `grouped_conv2d_forward`: dx (B, C, H, W), dweight (O, C/g, k, k), dbias
    (O,) or None. Each group's backward is its own convolution's; the pieces are stacked back
    in the order the forward cut them."""
    og = dout.shape[1] // cache.groups
    dxs, dws, dbs = [], [], []
    for g, c in enumerate(cache.caches):
        dg = np.ascontiguousarray(dout[:, g * og : (g + 1) * og])  # B, O/g, Ho, Wo
        backward = conv1x1_backward if isinstance(c, Conv1x1Cache) else conv2d_backward
        dx, dw, db = backward(dg, c)
        dxs.append(dx)
        dws.append(dw)
        dbs.append(db)
    dbias = None if dbs[0] is None else np.concatenate(dbs)
    return np.concatenate(dxs, axis=1), np.concatenate(dws, axis=0), dbias


# -- squeeze-and-excitation ----------------------------------------------------------------------
class SqueezeExciteCache(NamedTuple):
    """What `squeeze_excite_backward` needs."""

    x: np.ndarray  # (B, C, H, W)
    means: np.ndarray  # (B, C): each channel's mean, the "squeeze"
    hidden: np.ndarray  # (B, R): before the ReLU
    gate: np.ndarray  # (B, C): the sigmoid's output
    w1: np.ndarray  # (R, C, 1, 1)
    w2: np.ndarray  # (C, R, 1, 1)


def squeeze_excite_forward(x, w1, b1, w2, b2):
    """Squeeze-and-excitation (Hu et al. 2018): each channel scaled by a gate computed from the
    means of all channels (timm's `SEModule`: ReLU inside, sigmoid gate)::

        s = mean_hw(x);  a = relu(s @ w1^T + b1);  gate = sigmoid(a @ w2^T + b2);  out = x * gate

    x: (B, C, H, W); w1: (R, C, 1, 1), b1: (R,); w2: (C, R, 1, 1), b2: (C,) (two 1x1
    convolutions of the 1x1 map of means, i.e. two linear layers). Returns out (B, C, H, W) and
    a `SqueezeExciteCache`.
    """
    s = x.mean(axis=(2, 3))  # B, C
    z = s @ w1[:, :, 0, 0].T + b1  # B, R
    gate = _sigmoid(np.maximum(z, 0) @ w2[:, :, 0, 0].T + b2)  # B, C
    out = x * gate[:, :, None, None]
    return out, SqueezeExciteCache(x, s, z, gate, w1, w2)


def _gated_input_grad(dout, cache, dmeans):
    """dx of out = x * gate(mean_hw(x)): x reaches the output twice, directly (times its gate)
    and through its channel's mean (each pixel 1/(H*W) of the mean's gradient dmeans (B, C))."""
    H, W = cache.x.shape[2:]
    return dout * cache.gate[:, :, None, None] + (dmeans / (H * W))[:, :, None, None]


def _gate_preactivation_grad(dout, cache):
    """d loss / d (the sigmoid's input), (B, C): dgate = sum_hw dout * x, times gate' = g(1-g)."""
    dgate = np.einsum("bchw,bchw->bc", dout, cache.x)  # B, C
    return dgate * cache.gate * (1 - cache.gate)


def squeeze_excite_backward(dout, cache):
    """Gradients of `squeeze_excite_forward`: dx, dw1, db1, dw2, db2 (the shapes of the inputs)."""
    dpre = _gate_preactivation_grad(dout, cache)  # B, C
    a = np.maximum(cache.hidden, 0)  # B, R
    dw2 = (dpre.T @ a)[:, :, None, None]  # C, R, 1, 1
    db2 = dpre.sum(axis=0)
    dz = (dpre @ cache.w2[:, :, 0, 0]) * (cache.hidden > 0)  # B, R: through the ReLU
    dw1 = (dz.T @ cache.means)[:, :, None, None]  # R, C, 1, 1
    db1 = dz.sum(axis=0)
    dmeans = dz @ cache.w1[:, :, 0, 0]  # B, C
    return _gated_input_grad(dout, cache, dmeans), dw1, db1, dw2, db2


# -- efficient channel attention -----------------------------------------------------------------
class ChannelAttentionCache(NamedTuple):
    """What `eca_backward` needs."""

    x: np.ndarray  # (B, C, H, W)
    padded: np.ndarray  # (B, C + k - 1): the channel means with (k-1)/2 zeros at both ends
    gate: np.ndarray  # (B, C)
    weight: np.ndarray  # (1, 1, k)


def eca_kernel_size(channels, gamma=2, beta=1):
    """ECA's kernel size for `channels` (Wang et al. 2020, eq. 12, as timm computes it): the
    odd number at or above int((log2(C) + beta) / gamma), at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)  # math.log: timm's own rounding
    return max(t if t % 2 else t + 1, 3)


def eca_forward(x, weight):
    """Efficient channel attention (timm's `EcaModule`): a gate per channel from a 1-D
    convolution, without bias, over the means of the k channels around it (channels in their
    order, zeros past both ends)::

        s = mean_hw(x);  y[c] = sum_j weight[j] * s[c + j - (k-1)/2];  out = x * sigmoid(y)

    x: (B, C, H, W); weight: (1, 1, k), k odd. Returns out (B, C, H, W) and a
    `ChannelAttentionCache`.
    """
    k = weight.shape[-1]
    p = (k - 1) // 2
    s = x.mean(axis=(2, 3))  # B, C
    C = s.shape[1]
    padded = np.pad(s, ((0, 0), (p, p)))  # B, C + k - 1
    y = sum(weight[0, 0, j] * padded[:, j : j + C] for j in range(k))  # B, C
    gate = _sigmoid(y)
    return x * gate[:, :, None, None], ChannelAttentionCache(x, padded, gate, weight)


def eca_backward(dout, cache):
    """Gradients of `eca_forward`: dx (B, C, H, W), dweight (1, 1, k).

    The convolution read padded[:, j : j + C] for tap j, so its adjoint adds tap j's share of
    dy back onto those entries; the padding's share is dropped (it was no input).
    """
    C = cache.x.shape[1]
    k = cache.weight.shape[-1]
    p = (k - 1) // 2
    dy = _gate_preactivation_grad(dout, cache)  # B, C
    dweight = np.array([np.sum(dy * cache.padded[:, j : j + C]) for j in range(k)])
    dpadded = np.zeros_like(cache.padded)  # B, C + k - 1
    for j in range(k):
        dpadded[:, j : j + C] += cache.weight[0, 0, j] * dy
    dmeans = dpadded[:, p : p + C]  # B, C
    dweight = dweight.reshape(1, 1, k).astype(cache.weight.dtype, copy=False)
    return _gated_input_grad(dout, cache, dmeans), dweight


# -- lambda layer (LambdaNetworks, Bello 2021, arXiv 2102.08602; timm's LambdaLayer) -----------
class LambdaCache(NamedTuple):
    """What `lambda_backward` needs from `lambda_forward`."""

    q: np.ndarray  # B, heads, K, M: the normalised queries
    k_soft: np.ndarray  # B, K, M: the keys after their softmax over positions
    v: np.ndarray  # B, V, M: the normalised values
    content_lam: np.ndarray  # B, K, V
    position_lam: np.ndarray  # B, M, K, V
    conv: Conv2dCache  # the position lambdas' convolution
    map_shape: tuple  # (H, W)


def lambda_forward(q_map, k_map, v_map, conv_weight, conv_bias):
    """A lambda layer with a local position lambda (timm's `LambdaLayer` with r set).

    q_map: (B, heads*K, H, W) queries (normalised); k_map: (B, K, H, W) key logits;
    v_map: (B, V, H, W) values (normalised); conv_weight: (K, 1, r, r), conv_bias: (K,).
    Returns out (B, heads*V, H, W) and a cache. With M = H*W positions m = (y, x):

        k = softmax over m of k_map                          (B, K, M)
        content_lam[k, v] = sum_m k[k, m] v[v, m]            one K x V matrix per image
        position_lam[m, k, v] = sum_ij w[k, i, j] v[v, y+i-r//2, x+j-r//2] + bias[k]
        out[h, v, m] = sum_k q[h, k, m] (content_lam[k, v] + position_lam[m, k, v])

    The position lambda is an r x r convolution with one input channel and K output channels,
    applied to each value channel separately (timm's Conv3d with kernel (r, r, 1)).
    """
    B, K, H, W = k_map.shape
    V, M = v_map.shape[1], H * W
    heads = q_map.shape[1] // K
    r = conv_weight.shape[-1]
    q = q_map.reshape(B, heads, K, M)
    k_soft, _ = softmax_forward(k_map.reshape(B, K, M))
    v = v_map.reshape(B, V, M)
    content_lam = np.matmul(k_soft, v.transpose(0, 2, 1))  # B, K, V
    # each value channel as its own one-channel image: (B*V, 1, H, W) -> (B*V, K, H, W)
    pos, conv_cache = conv2d_forward(
        v_map.reshape(B * V, 1, H, W), conv_weight, conv_bias, padding=r // 2
    )
    position_lam = pos.reshape(B, V, K, M).transpose(0, 3, 2, 1)  # B, M, K, V
    content_out = np.matmul(q.transpose(0, 1, 3, 2), content_lam[:, None])  # B, heads, M, V
    position_out = np.einsum("bhkm,bmkv->bhmv", q, position_lam)  # B, heads, M, V
    out = (content_out + position_out).transpose(0, 1, 3, 2).reshape(B, heads * V, H, W)
    cache = LambdaCache(q, k_soft, v, content_lam, position_lam, conv_cache, (H, W))
    return out, cache


def lambda_backward(dout, cache):
    """Gradients of `lambda_forward`: dq_map, dk_map (of the logits), dv_map, dconv_weight,
    dconv_bias, in the shapes of the forward's arguments."""
    q, k_soft, v, content_lam, position_lam, conv_cache, (H, W) = cache
    B, heads, K, M = q.shape
    V = v.shape[1]
    d = dout.reshape(B, heads, V, M)  # d out[h, v, m]
    # out = q^T (content_lam + position_lam): each lambda gets q's weighting of dout
    dq = np.matmul(content_lam[:, None], d)  # B, heads, K, M: sum_v content_lam[k, v] d[v, m]
    dq += np.einsum("bmkv,bhvm->bhkm", position_lam, d)
    dcontent = np.einsum("bhkm,bhvm->bkv", q, d)  # B, K, V
    dposition = np.einsum("bhkm,bhvm->bmkv", q, d)  # B, M, K, V
    # content_lam = k_soft v^T
    dk_soft = np.matmul(dcontent, v)  # B, K, M
    dv = np.matmul(dcontent.transpose(0, 2, 1), k_soft)  # B, V, M
    dk = softmax_backward(dk_soft, k_soft)
    # position_lam back through the per-value-channel convolution
    dpos = dposition.transpose(0, 3, 2, 1).reshape(B * V, K, H, W)
    dv_img, dweight, dbias = conv2d_backward(np.ascontiguousarray(dpos), conv_cache)
    dv = dv + dv_img.reshape(B, V, M)
    return (
        dq.reshape(B, heads * K, H, W),
        dk.reshape(B, K, H, W),
        dv.reshape(B, V, H, W),
        dweight,
        dbias,
    )
