"""Exercise 4: halo attention, forward and backward (paper, section 3.1; border="zeros").

Channel layouts (timm's): the query map (B, heads*d, H, W) is head-major (channel n*d + c is
channel c of head n); the key/value map (B, heads*(d + d_v), H, W) holds, for each head in turn,
a block of d key channels and then a block of d_v value channels: [k_0 | v_0 | k_1 | v_1 | ...].
The output (B, heads*d_v, H, W) is head-major.

Per image, head and block n (queries Q: (b*b, d); the window's keys K: (win*win, d) and values
V: (win*win, d_v), zero outside the image):

    S = scale * Q K^T + relpos(Q),   A = softmax(S) row by row,   O = A V.

Backward, for dO: dV = A^T dO, dA = dO V^T, dS = softmax_backward(dA, A),
dQ = scale * dS K + (relpos backward's dq), dK = scale * dS^T Q, and the tables' gradients
from relpos backward with dB = dS. Keys and values reach several windows, so their gradients
go back onto the map by scatter_windows (a scatter-add).

You may use your functions from exercises 1-3 (import them: `from ex1_blocking import ...`).
Check your work with `python -m pytest` in this folder.
"""

import numpy as np  # noqa: F401  (for your code)


def halo_attention_forward(
    q_map, kv_map, height_rel, width_rel, *, num_heads, block_size, halo_size, scale
):
    """q_map: (B, heads*d, H, W); kv_map: (B, heads*(d + d_v), H, W);
    height_rel, width_rel: (2*win - 1, d). Returns out (B, heads*d_v, H, W) and a cache."""
    # TODO: your code here
    raise NotImplementedError("halo_attention_forward: replace this line with your code")


def halo_attention_backward(dout, cache):
    """dout: (B, heads*d_v, H, W) -> (dq_map, dkv_map, dheight_rel, dwidth_rel), shaped like the
    forward's inputs."""
    # TODO: your code here
    raise NotImplementedError("halo_attention_backward: replace this line with your code")
