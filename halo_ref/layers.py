"""Small layers as forward/backward function pairs (the CS231n pattern).

`out, cache = thing_forward(x, ...)` computes the layer and keeps what its backward needs;
`grads = thing_backward(dout, cache)` returns the gradient of the loss with respect to each input,
given the gradient `dout` with respect to the output. Each backward is the chain rule applied by
hand to its own forward, and each one is checked against finite differences in the tests.
"""

from __future__ import annotations

import numpy as np


# -- 1x1 convolution ---------------------------------------------------------------------------
def conv1x1_forward(x, weight, bias=None, stride=1):
    """Pointwise convolution: out[b, o, i, j] = sum_c weight[o, c] x[b, c, s*i, s*j] + bias[o].

    x: (B, C, H, W); weight: (O, C, 1, 1) (PyTorch's layout); bias: (O,) or None;
    stride s in {1, 2} keeps every s-th pixel. Returns out (B, O, H/s, W/s) and a cache.
    """
    xs = x[:, :, ::stride, ::stride] if stride > 1 else x
    out = np.einsum("oc,bchw->bohw", weight[:, :, 0, 0], xs, optimize=True)
    if bias is not None:
        out += bias[None, :, None, None]
    return out, (xs, weight, bias is not None, x.shape, stride)


def conv1x1_backward(dout, cache):
    """Gradients of `conv1x1_forward`: returns dx (B, C, H, W), dweight (O, C, 1, 1), dbias (O,) or None."""
    xs, weight, has_bias, x_shape, stride = cache
    dxs = np.einsum("oc,bohw->bchw", weight[:, :, 0, 0], dout, optimize=True)
    dweight = np.einsum("bohw,bchw->oc", dout, xs, optimize=True)[:, :, None, None]
    dbias = dout.sum(axis=(0, 2, 3)) if has_bias else None
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
