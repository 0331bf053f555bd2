"""Exercise 3: relative position logits, forward and backward (paper, section 3.1).

A block of b x b queries, query p = (p_y, p_x) (row-major, p = p_y * b + p_x), and the keys of
its window, key j = (j_y, j_x) (row-major, j = j_y * win + j_x), win = b + 2h. Two tables of
2 win - 1 rows, R^H and R^W (one row per offset), give the bias

    B[p, j] = q_p . R^H[j_y - p_y + win - 1] + q_p . R^W[j_x - p_x + win - 1].

Cheap form: T^H = q (R^H)^T (one logit per table row, (P, 2 win - 1)), then *pick* entries.
Backward, for dB = dL/dB:

    dT^H[p, j_y - p_y + win - 1] = sum over j_x of dB[p, (j_y, j_x)]   (the other rows: 0)
    dq = dT^H R^H + dT^W R^W,   dR^H = (dT^H)^T q summed over every leading axis,   same for W.

Check your work with `python -m pytest` in this folder.
"""

import numpy as np  # noqa: F401  (for your code)


def relpos_forward(q, height_rel, width_rel, block_size):
    """q: (..., b*b, d) the queries of a block; height_rel, width_rel: (2*win - 1, d).

    Returns bias (..., b*b, win*win) and a cache (anything your backward needs).
    win = (height_rel.shape[0] + 1) // 2. Leading axes (images, heads, blocks) are batch axes.
    """
    # TODO: your code here
    raise NotImplementedError("relpos_forward: replace this line with your code")


def relpos_backward(dbias, cache):
    """dbias: (..., b*b, win*win) -> (dq (..., b*b, d), dheight_rel, dwidth_rel (2*win - 1, d))."""
    # TODO: your code here
    raise NotImplementedError("relpos_backward: replace this line with your code")
