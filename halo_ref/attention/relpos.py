"""Factorized 2-D relative position logits (paper, section 3.1; from Bello et al. 2019 and
Ramachandran et al. 2019, "Stand-alone self-attention").

Each head adds a position term to the content logit q . k. It depends only on where the key sits
relative to the query. HaloNet factorizes it into a height part and a width part, each a learned
table of 2*win - 1 rows (one per possible offset), shared by all heads:

    bias(q at (qy, qx), key at window position (ky, kx))
        = q . height_rel[ky - qy + win - 1] + q . width_rel[kx - qx + win - 1]

(qy, qx) is the query's position inside its block of size block_q and (ky, kx) the key's
position inside the win x win window; the offset ky - qy runs from -(block_q - 1) to win - 1,
so "+ win - 1" makes it a valid row index. Computing q . table once per table row and then
picking entries by index is cheaper than building a win*win vector per query.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RelposCache(NamedTuple):
    """What `relpos_backward` needs: the queries, both tables and the index matrices."""

    q: np.ndarray  # (..., P, d)
    height_rel: np.ndarray  # (2*win - 1, d)
    width_rel: np.ndarray
    idx_h: np.ndarray  # (P, win) int
    idx_w: np.ndarray


def relative_indices(block_q, win):
    """Table rows used by each (query, key row) and (query, key column) pair.

    Returns idx_h, idx_w, both int (block_q**2, win): for query p = qy * block_q + qx,
    idx_h[p, ky] = ky - qy + win - 1 and idx_w[p, kx] = kx - qx + win - 1.
    """
    qy, qx = np.divmod(np.arange(block_q * block_q), block_q)
    k = np.arange(win)
    idx_h = k[None, :] - qy[:, None] + win - 1
    idx_w = k[None, :] - qx[:, None] + win - 1
    return idx_h, idx_w


def relpos_forward(q, height_rel, width_rel, block_q):
    """Relative position logits for every query of a block and every key of its window.

    q: (..., block_q**2, d) queries of one block, in-block row-major order;
    height_rel, width_rel: (2*win - 1, d).
    Returns bias (..., block_q**2, win*win) and a cache.
    """
    R = height_rel.shape[0]
    win = (R + 1) // 2
    idx_h, idx_w = relative_indices(block_q, win)
    lead = q.shape[:-1]  # ..., P
    q_h = q @ height_rel.T  # ..., P, 2*win-1: q against every height offset
    q_w = q @ width_rel.T
    logit_h = np.take_along_axis(q_h, np.broadcast_to(idx_h, lead + (win,)), axis=-1)  # ..., P, ky
    logit_w = np.take_along_axis(q_w, np.broadcast_to(idx_w, lead + (win,)), axis=-1)  # ..., P, kx
    bias = logit_h[..., :, None] + logit_w[..., None, :]  # ..., P, ky, kx
    bias = bias.reshape(lead + (win * win,))
    return bias, RelposCache(q, height_rel, width_rel, idx_h, idx_w)


def relpos_backward(dbias, cache):
    """Gradients of `relpos_forward`.

    dbias: (..., P, win*win). Returns dq (..., P, d), dheight_rel and dwidth_rel (2*win - 1, d).
    """
    q, height_rel, width_rel, idx_h, idx_w = cache
    R, d = height_rel.shape
    win = (R + 1) // 2
    lead = q.shape[:-1]
    dbias = dbias.reshape(lead + (win, win))
    # bias[p, ky, kx] = logit_h[p, ky] + logit_w[p, kx]: each part sees the sum over the other axis
    dlogit_h = dbias.sum(axis=-1)  # ..., P, ky
    dlogit_w = dbias.sum(axis=-2)  # ..., P, kx
    # logit_h[p, ky] = q_h[p, idx_h[p, ky]]; within one query the indices are distinct, so
    # putting (not adding) the gradients back is exact; unused offsets get zero.
    dq_h = np.zeros(lead + (R,), dtype=dbias.dtype)
    dq_w = np.zeros(lead + (R,), dtype=dbias.dtype)
    np.put_along_axis(dq_h, np.broadcast_to(idx_h, lead + (win,)), dlogit_h, axis=-1)
    np.put_along_axis(dq_w, np.broadcast_to(idx_w, lead + (win,)), dlogit_w, axis=-1)
    # q_h = q @ height_rel.T
    dq = dq_h @ height_rel + dq_w @ width_rel
    dheight_rel = dq_h.reshape(-1, R).T @ q.reshape(-1, d)
    dwidth_rel = dq_w.reshape(-1, R).T @ q.reshape(-1, d)
    return dq, dheight_rel, dwidth_rel
