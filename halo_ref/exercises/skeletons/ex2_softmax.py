"""Exercise 2: the backward pass of the softmax.

The forward, along the last axis:  p_i = exp(z_i) / sum_k exp(z_k).
Its Jacobian is  dp_i / dz_j = p_i (delta_ij - p_j), so for dp = dL/dp the chain rule gives

    dz_j = sum_i dp_i p_i (delta_ij - p_j) = p_j (dp_j - sum_i dp_i p_i),

one dot product per row instead of an n x n Jacobian. A masked logit (z = -inf) has p = 0, and
must get dz = 0. Check your work with `python -m pytest` in this folder.
"""

import numpy as np  # noqa: F401  (for your code)


def softmax_backward(dp, p):
    """dz for p = softmax(z) over the last axis. dp, p: (..., n) -> dz: (..., n)."""
    # TODO: your code here
    raise NotImplementedError("softmax_backward: replace this line with your code")
