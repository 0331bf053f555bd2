"""The oracle: halo attention written as plain global attention with a mask (paper, section 3.1:
blocked local attention is global attention restricted to a neighbourhood).

Every query attends to *every* key of the (zero-padded) key grid; an additive mask of 0 or -inf
keeps only the keys in the query's halo window, and an additive relative-position bias gives
each kept key its position logit. Nothing here knows about blocks or windows as arrays: the
neighbourhood lives only in the mask and index matrices built by `halo_neighbourhood`. That makes
it an independent check of `halo_ref.attention.core` (which gathers windows), and
`halo_attention_loops` is a third, written pixel by pixel straight from the definition.

Written for clarity, not speed: memory grows with (H*W)^2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..nn.functional import softmax_backward, softmax_forward


def halo_neighbourhood(H, W, block_size, halo_size, query_stride=1, border="zeros"):
    """Mask and relative-position indices that turn dense attention into halo attention.

    Queries are the pixels (s*i, s*j) of an H x W map, s = query_stride, row-major: Nq = (H/s)(W/s).
    Keys are the pixels of the map zero-padded by halo_size, row-major: Nk = (H+2h)(W+2h).
    Returns mask (Nq, Nk) with 0 where the key is in the query's window (and, for border="mask",
    inside the image) and -inf elsewhere, and idx_h, idx_w (Nq, Nk) int: the height and width
    table rows of each pair (0 where masked).
    """
    b, h, s = block_size, halo_size, query_stride
    win = b + 2 * h
    bq = b // s
    Hq, Wq, Hp, Wp = H // s, W // s, H + 2 * h, W + 2 * h
    qy, qx = np.divmod(np.arange(Hq * Wq), Wq)  # query coordinates in the query map
    ky, kx = np.divmod(np.arange(Hp * Wp), Wp)  # key coordinates in the padded map
    # the window of query block (qy // bq, qx // bq) starts at padded row (qy // bq) * b
    wy = ky[None, :] - (qy // bq * b)[:, None]  # Nq, Nk: key row inside the query's window
    wx = kx[None, :] - (qx // bq * b)[:, None]
    keep = (wy >= 0) & (wy < win) & (wx >= 0) & (wx < win)
    if border == "mask":
        inside = (ky >= h) & (ky < h + H) & (kx >= h) & (kx < h + W)
        keep &= inside[None, :]
    mask = np.where(keep, 0.0, -np.inf)
    idx_h = np.where(keep, wy - (qy % bq)[:, None] + win - 1, 0)
    idx_w = np.where(keep, wx - (qx % bq)[:, None] + win - 1, 0)
    return mask, idx_h, idx_w


class DenseCache(NamedTuple):
    """What `dense_attention_backward` needs."""

    q: np.ndarray  # (B, heads, Nq, d_qk)
    k: np.ndarray  # (B, heads, Nk, d_qk)
    v: np.ndarray  # (B, heads, Nk, d_v)
    height_rel: np.ndarray
    width_rel: np.ndarray
    idx_h: np.ndarray  # (Nq, Nk) int
    idx_w: np.ndarray
    attn: np.ndarray  # (B, heads, Nq, Nk): the softmax weights
    scale: float
    scale_pos_embed: bool


def dense_attention_forward(
    q, k, v, height_rel, width_rel, idx_h, idx_w, mask, scale, scale_pos_embed
):
    """Global multi-head attention with an additive mask and a relative-position bias.

    q: (B, heads, Nq, d_qk); k: (B, heads, Nk, d_qk); v: (B, heads, Nk, d_v);
    height_rel, width_rel: (R, d_qk); idx_h, idx_w: int (Nq, Nk); mask: (Nq, Nk) of 0 / -inf.
    bias[i, j] = q_i . height_rel[idx_h[i, j]] + q_i . width_rel[idx_w[i, j]].
    Returns out (B, heads, Nq, d_v) and a cache.
    """
    content = q @ k.swapaxes(-1, -2)  # B, heads, Nq, Nk
    lead = q.shape[:-1]
    bias = np.take_along_axis(q @ height_rel.T, np.broadcast_to(idx_h, lead + idx_h.shape[1:]), -1)
    bias = bias + np.take_along_axis(
        q @ width_rel.T, np.broadcast_to(idx_w, lead + idx_w.shape[1:]), -1
    )
    logits = scale * (content + bias) if scale_pos_embed else scale * content + bias
    attn, _ = softmax_forward(logits + mask)
    out = attn @ v
    return out, DenseCache(
        q, k, v, height_rel, width_rel, idx_h, idx_w, attn, scale, scale_pos_embed
    )


def dense_attention_backward(dout, cache):
    """Gradients of `dense_attention_forward`: returns dq, dk, dv, dheight_rel, dwidth_rel."""
    q, k, v, height_rel, width_rel, idx_h, idx_w, attn, scale, scale_pos_embed = cache
    dattn = dout @ v.swapaxes(-1, -2)
    dv = attn.swapaxes(-1, -2) @ dout
    dlogits = softmax_backward(dattn, attn)
    dcontent = scale * dlogits
    dbias = dcontent if scale_pos_embed else dlogits
    dq = dcontent @ k
    dk = dcontent.swapaxes(-1, -2) @ q
    # bias[i, j] = (q @ table.T)[i, idx[i, j]]: table row r collects every pair that uses it
    R = height_rel.shape[0]
    dq_h = np.stack([(dbias * (idx_h == r)).sum(-1) for r in range(R)], axis=-1)  # ..., Nq, R
    dq_w = np.stack([(dbias * (idx_w == r)).sum(-1) for r in range(R)], axis=-1)
    dq = dq + dq_h @ height_rel + dq_w @ width_rel
    d = q.shape[-1]
    dheight_rel = dq_h.reshape(-1, R).T @ q.reshape(-1, d)
    dwidth_rel = dq_w.reshape(-1, R).T @ q.reshape(-1, d)
    return dq, dk, dv, dheight_rel, dwidth_rel


class DenseHaloCache(NamedTuple):
    """What `dense_halo_attention_backward` needs."""

    dense: DenseCache
    num_heads: int
    kv_shape: tuple  # (B, C, H, W) of the key/value map
    halo_size: int


def _heads(x_map, num_heads):
    """(B, heads*d, H, W) -> (B, heads, H*W, d)."""
    B, C, H, W = x_map.shape
    return x_map.reshape(B, num_heads, C // num_heads, H * W).swapaxes(-1, -2)


def _unheads(x):
    """(B, heads, N, d) -> (B, heads*d, N)."""
    B, nh, N, d = x.shape
    return x.swapaxes(-1, -2).reshape(B, nh * d, N)


def dense_halo_attention_forward(
    q_map,
    kv_map,
    height_rel,
    width_rel,
    *,
    num_heads,
    block_size,
    halo_size,
    query_stride=1,
    scale,
    scale_pos_embed=False,
    border="zeros",
):
    """Drop-in replacement for `halo_ref.attention.core.halo_attention_forward`, computed densely.

    Same arguments and shapes; returns out (B, heads*d_v, H/s, W/s) and a cache.
    """
    B, C, H, W = kv_map.shape
    h = halo_size
    d_qk = height_rel.shape[1]
    kv_padded = np.pad(kv_map, ((0, 0), (0, 0), (h, h), (h, h)))
    kv = _heads(kv_padded, num_heads)  # B, heads, Nk, d_qk + d_v
    k, v = kv[..., :d_qk], kv[..., d_qk:]
    q = _heads(q_map, num_heads)  # B, heads, Nq, d_qk
    mask, idx_h, idx_w = halo_neighbourhood(H, W, block_size, h, query_stride, border)
    out, cache = dense_attention_forward(
        q, k, v, height_rel, width_rel, idx_h, idx_w, mask, scale, scale_pos_embed
    )
    Hq, Wq = q_map.shape[2:]
    return _unheads(out).reshape(B, -1, Hq, Wq), DenseHaloCache(cache, num_heads, kv_map.shape, h)


def dense_halo_attention_backward(dout_map, cache):
    """Gradients of `dense_halo_attention_forward`: dq_map, dkv_map, dheight_rel, dwidth_rel."""
    B, C, H, W = cache.kv_shape
    h = cache.halo_size
    dq, dk, dv, dheight_rel, dwidth_rel = dense_attention_backward(
        _heads(dout_map, cache.num_heads), cache.dense
    )
    Hq, Wq = dout_map.shape[2:]
    dq_map = _unheads(dq).reshape(B, -1, Hq, Wq)
    dkv_padded = _unheads(np.concatenate([dk, dv], axis=-1)).reshape(B, C, H + 2 * h, W + 2 * h)
    return dq_map, dkv_padded[:, :, h : h + H, h : h + W], dheight_rel, dwidth_rel


def halo_attention_loops(
    q_map,
    kv_map,
    height_rel,
    width_rel,
    *,
    num_heads,
    block_size,
    halo_size,
    query_stride=1,
    scale,
    scale_pos_embed=False,
    border="zeros",
):
    """Halo attention pixel by pixel, straight from the definition (forward only, tiny inputs).

    Same arguments and output as `halo_attention_forward`, without a cache.
    """
    B, C, H, W = kv_map.shape
    b, h, s = block_size, halo_size, query_stride
    win, bq = b + 2 * h, b // s
    d_qk = height_rel.shape[1]
    d_v = C // num_heads - d_qk
    Hq, Wq = q_map.shape[2:]
    out = np.zeros((B, num_heads * d_v, Hq, Wq), dtype=q_map.dtype)
    for n in range(B):
        for head in range(num_heads):
            k_ch = slice(head * (d_qk + d_v), head * (d_qk + d_v) + d_qk)
            v_ch = slice(head * (d_qk + d_v) + d_qk, (head + 1) * (d_qk + d_v))
            for i in range(Hq):
                for j in range(Wq):
                    q = q_map[n, head * d_qk : (head + 1) * d_qk, i, j]
                    by, bx, qy, qx = i // bq, j // bq, i % bq, j % bq
                    logits, values = [], []
                    for ky in range(win):
                        for kx in range(win):
                            y, x = by * b - h + ky, bx * b - h + kx  # key pixel in the image
                            inside = 0 <= y < H and 0 <= x < W
                            if not inside and border == "mask":
                                continue
                            key = kv_map[n, k_ch, y, x] if inside else np.zeros(d_qk)
                            val = kv_map[n, v_ch, y, x] if inside else np.zeros(d_v)
                            pos = (
                                q @ height_rel[ky - qy + win - 1] + q @ width_rel[kx - qx + win - 1]
                            )
                            c = q @ key
                            logits.append(scale * (c + pos) if scale_pos_embed else scale * c + pos)
                            values.append(val)
                    w = np.exp(np.array(logits) - max(logits))
                    w /= w.sum()
                    out[n, head * d_v : (head + 1) * d_v, i, j] = w @ np.array(values)
    return out
