"""The reference solution of exercise 5 (a HaloNet bottleneck block), composed from halo_ref's
functional layers; the grader checks it, like the learner's, against `HaloBottleneck`.

Exercises 1-4 need no file of their own: their solutions are halo_ref's functions (`SOLUTIONS`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..attention.core import halo_layer_backward, halo_layer_forward
from ..nn.functional import (
    batchnorm2d_backward,
    batchnorm2d_forward,
    conv1x1_backward,
    conv1x1_forward,
    silu_backward,
    silu_forward,
)


class BottleneckCache(NamedTuple):
    """What `bottleneck_backward` needs: each layer's cache, in forward order."""

    conv1: tuple
    bn1: tuple
    act1: np.ndarray
    attn: tuple
    bn2: tuple
    act2: np.ndarray
    conv3: tuple
    bn3: tuple
    out_act: np.ndarray


def _bn(x, params, name):
    C = x.shape[1]
    scratch_mean, scratch_var = np.zeros(C, x.dtype), np.ones(C, x.dtype)  # updated, then dropped
    return batchnorm2d_forward(x, params[f"{name}.bn.weight"], params[f"{name}.bn.bias"],
                               scratch_mean, scratch_var, training=True)  # fmt: skip


def bottleneck_forward(x, params, *, num_heads, block_size, halo_size):
    """x: (B, C, H, W) -> (B, C, H, W): stride 1, identity shortcut, BatchNorm in training mode."""
    p = params
    mid = p["conv1.conv.weight"].shape[0]
    y, c1 = conv1x1_forward(x, p["conv1.conv.weight"])  # B, mid, H, W
    y, b1 = _bn(y, p, "conv1")
    y, a1 = silu_forward(y)
    attn = {k[len("attn.") :]: v for k, v in p.items() if k.startswith("attn.")}
    d = mid // num_heads
    y, ca = halo_layer_forward(y, attn, query_stride=1, num_heads=num_heads,
                               block_size=block_size, halo_size=halo_size, scale=d**-0.5,
                               scale_pos_embed=False, border="zeros")  # fmt: skip
    y, b2 = _bn(y, p, "post_attn")
    y, a2 = silu_forward(y)
    y, c3 = conv1x1_forward(y, p["conv3.conv.weight"])  # B, C, H, W
    y, b3 = _bn(y, p, "conv3")
    out, a3 = silu_forward(y + x)
    return out, BottleneckCache(c1, b1, a1, ca, b2, a2, c3, b3, a3)


def bottleneck_backward(dout, cache):
    """dout: (B, C, H, W) -> (dx, grads by the names of params)."""
    c = cache
    grads = {}
    d = silu_backward(dout, c.out_act)  # the sum's gradient reaches both branches unchanged
    dy, grads["conv3.bn.weight"], grads["conv3.bn.bias"] = batchnorm2d_backward(d, c.bn3)
    dy, grads["conv3.conv.weight"], _ = conv1x1_backward(dy, c.conv3)
    dy = silu_backward(dy, c.act2)
    dy, grads["post_attn.bn.weight"], grads["post_attn.bn.bias"] = batchnorm2d_backward(dy, c.bn2)
    dy, attn_grads = halo_layer_backward(dy, c.attn)
    grads.update({f"attn.{k}": v for k, v in attn_grads.items()})
    dy = silu_backward(dy, c.act1)
    dy, grads["conv1.bn.weight"], grads["conv1.bn.bias"] = batchnorm2d_backward(dy, c.bn1)
    dy, grads["conv1.conv.weight"], _ = conv1x1_backward(dy, c.conv1)
    return d + dy, grads
