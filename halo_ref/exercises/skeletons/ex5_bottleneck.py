"""Exercise 5: a HaloNet bottleneck block, forward and backward (paper, section 4).

    x -> conv1 (1x1) -> BN -> SiLU -> halo attention -> BN -> SiLU -> conv3 (1x1) -> BN
      -> + x (identity shortcut) -> SiLU

Stride 1, the same number of channels in and out, BatchNorm in training mode (batch
statistics, eps 1e-5), no biases in the convolutions or the attention's projections. The
attention: q = q.weight * a, kv = kv.weight * a (1x1 convolutions of its input a), then halo
attention (exercise 4) with d = mid // num_heads query/key channels per head, scale d ** -0.5,
border "zeros". params (halo_ref's HaloBottleneck names):

    conv1.conv.weight (mid, C, 1, 1), conv1.bn.weight (mid,), conv1.bn.bias (mid,),
    attn.q.weight (mid, mid, 1, 1), attn.kv.weight (2*mid, mid, 1, 1),
    attn.pos_embed.height_rel, attn.pos_embed.width_rel (2*win - 1, d),
    post_attn.bn.weight (mid,), post_attn.bn.bias (mid,),
    conv3.conv.weight (C, mid, 1, 1), conv3.bn.weight (C,), conv3.bn.bias (C,)

The layers other than attention are given, as forward/backward pairs:
`halo_ref.nn.functional.conv1x1_forward(x, weight)` -> (y, cache) and
`conv1x1_backward(dy, cache)` -> (dx, dweight, dbias); `batchnorm2d_forward(x, weight, bias,
running_mean, running_var, training=True)` -> (y, cache) (it updates the running statistics in
place: pass scratch arrays) and `batchnorm2d_backward(dy, cache)` -> (dx, dweight, dbias);
`silu_forward(x)` -> (y, cache) and `silu_backward(dy, cache)` -> dx.
The sum's gradient flows to both branches unchanged; x feeds both, so dx adds them.
Check your work with `python -m pytest` in this folder.
"""

import numpy as np  # noqa: F401  (for your code)

from halo_ref.nn.functional import (  # noqa: F401  (the given layers)
    batchnorm2d_backward,
    batchnorm2d_forward,
    conv1x1_backward,
    conv1x1_forward,
    silu_backward,
    silu_forward,
)


def bottleneck_forward(x, params, *, num_heads, block_size, halo_size):
    """x: (B, C, H, W) -> out (B, C, H, W) and a cache."""
    # TODO: your code here
    raise NotImplementedError("bottleneck_forward: replace this line with your code")


def bottleneck_backward(dout, cache):
    """dout: (B, C, H, W) -> (dx (B, C, H, W), grads: a dict with the keys of params)."""
    # TODO: your code here
    raise NotImplementedError("bottleneck_backward: replace this line with your code")
