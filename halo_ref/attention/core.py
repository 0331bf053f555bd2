"""Halo attention in NumPy (paper, section 3.1 "Blocked local self-attention"): the page to read.

For every b x b query block, the queries attend to the keys and values of the block's
(b+2h) x (b+2h) window (see `halo_ref.attention.blocking`), with a relative position term added
to each content logit (see `halo_ref.attention.relpos`):

    logits = scale * q.k + bias             (scale_pos_embed=False, the default)
    logits = scale * (q.k + bias)           (scale_pos_embed=True)
    out    = softmax(logits over the window) @ v

The semantics with border="zeros" are exactly those of timm's `HaloAttn`: the key/value map is
zero-padded, so keys outside the image are zero vectors that still take softmax weight through
their position logit. With border="mask" those positions are excluded from the softmax instead.

Channel layouts follow timm, so weights move between the two unchanged: the query map is
head-major (B, heads*d_qk, H, W); the key/value map (B, heads*(d_qk + d_v), H, W) holds, for
each head in turn, a block of d_qk key channels and then a block of d_v value channels,
[k_0 | v_0 | k_1 | v_1 | ...] (blocks, not single channels alternating); the output is
head-major.

Two pairs, each `out, cache = *_forward(...)`, `grads = *_backward(dout, cache)`:

- `halo_attention_forward` / `_backward`: attention on the projected maps (the functional core);
- `halo_layer_forward` / `_backward`: the layer `HaloAttention` before any pooling, that is its
  two 1x1 projections of the input and then the core.

Plain NumPy, no dispatch: `halo_ref.attention.kernels` computes the same pairs with Numba
kernels (same contracts, tested against these), and `halo_ref.backend` chooses between them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..nn.functional import (
    Conv1x1Cache,
    conv1x1_backward,
    conv1x1_forward,
    softmax_backward,
    softmax_forward,
)
from .blocking import (
    blocks_from_map,
    gather_windows,
    map_from_blocks,
    scatter_windows,
    window_inside_image,
)
from .relpos import RelposCache, relpos_backward, relpos_forward


class AttentionCache(NamedTuple):
    """What `halo_attention_backward` needs from its forward."""

    q: np.ndarray  # (B, heads, N, Pq, d_qk): the queries by block
    k: np.ndarray  # (B, heads, N, Pw, d_qk): the keys by window
    v: np.ndarray  # (B, heads, N, Pw, d_v)
    attn: np.ndarray  # (B, heads, N, Pq, Pw): the softmax weights
    relpos: RelposCache
    scale: float
    scale_pos_embed: bool
    num_heads: int
    block_size: int
    halo_size: int
    H: int  # the key/value map's height and width
    W: int


def _split_heads(blocks, num_heads):
    """(B, N, P, heads*d) -> (B, heads, N, P, d)."""
    B, N, P, C = blocks.shape
    return blocks.reshape(B, N, P, num_heads, C // num_heads).transpose(0, 3, 1, 2, 4)


def _merge_heads(x):
    """(B, heads, N, P, d) -> (B, N, P, heads*d), head-major channels."""
    B, nh, N, P, d = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(B, N, P, nh * d)


def halo_attention_forward(
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
    """Halo attention on projected maps.

    q_map: (B, heads*d_qk, H/s, W/s), queries already subsampled by s = query_stride;
    kv_map: (B, heads*(d_qk+d_v), H, W), per head [k | v];
    height_rel, width_rel: (2*win - 1, d_qk), win = block_size + 2*halo_size.
    Query blocks are (block_size/s)^2 pixels; windows are win^2 pixels of the full-resolution map.
    Returns out (B, heads*d_v, H/s, W/s) and a cache for `halo_attention_backward`.
    """
    B, _, H, W = kv_map.shape
    Hq, Wq = q_map.shape[2:]
    d_qk = height_rel.shape[1]
    block_q = block_size // query_stride

    q = _split_heads(blocks_from_map(q_map, block_q), num_heads)  # B, heads, N, Pq, d_qk
    windows = gather_windows(kv_map, block_size, halo_size)  # B, N, Pw, heads*(d_qk+d_v)
    kv = _split_heads(windows, num_heads)  # B, heads, N, Pw, d_qk+d_v
    k, v = kv[..., :d_qk], kv[..., d_qk:]

    content = q @ k.swapaxes(-1, -2)  # B, heads, N, Pq, Pw
    bias, rel_cache = relpos_forward(q, height_rel, width_rel, block_q)  # B, heads, N, Pq, Pw
    if scale_pos_embed:
        logits = scale * (content + bias)
    else:
        logits = scale * content + bias
    if border == "mask":
        inside = window_inside_image(H, W, block_size, halo_size)  # N, Pw
        logits = np.where(inside[:, None, :], logits, -np.inf)
    attn, _ = softmax_forward(logits)
    out = attn @ v  # B, heads, N, Pq, d_v
    out_map = map_from_blocks(_merge_heads(out), Hq, Wq)
    cache = AttentionCache(
        q, k, v, attn, rel_cache, scale, scale_pos_embed, num_heads, block_size, halo_size, H, W
    )
    return out_map, cache


def halo_attention_backward(dout_map, cache):
    """Gradients of `halo_attention_forward`.

    dout_map: (B, heads*d_v, H/s, W/s). Returns dq_map (like q_map), dkv_map (like kv_map),
    dheight_rel and dwidth_rel (2*win - 1, d_qk).
    """
    q, k, v, attn = cache.q, cache.k, cache.v, cache.attn
    Hq, Wq = dout_map.shape[2:]
    block_q = int(round(q.shape[3] ** 0.5))

    dout = _split_heads(blocks_from_map(dout_map, block_q), cache.num_heads)  # B, heads, N, Pq, d_v
    # out = attn @ v
    dattn = dout @ v.swapaxes(-1, -2)  # B, heads, N, Pq, Pw
    dv = attn.swapaxes(-1, -2) @ dout  # B, heads, N, Pw, d_v
    dlogits = softmax_backward(dattn, attn)
    # logits = scale * content + bias, or scale * (content + bias)
    dcontent = cache.scale * dlogits
    dbias = dcontent if cache.scale_pos_embed else dlogits
    # content = q @ k^T
    dq = dcontent @ k  # B, heads, N, Pq, d_qk
    dk = dcontent.swapaxes(-1, -2) @ q  # B, heads, N, Pw, d_qk
    dq_rel, dheight_rel, dwidth_rel = relpos_backward(dbias, cache.relpos)
    dq = dq + dq_rel

    dq_map = map_from_blocks(_merge_heads(dq), Hq, Wq)
    dkv = _merge_heads(np.concatenate([dk, dv], axis=-1))  # B, N, Pw, heads*(d_qk+d_v)
    dkv_map = scatter_windows(dkv, cache.H, cache.W, cache.block_size, cache.halo_size)
    return dq_map, dkv_map, dheight_rel, dwidth_rel


# ---------------------------------------------------------------------------------------------
# The layer before any pooling: two 1x1 projections of the input, then attention.
# ---------------------------------------------------------------------------------------------
class LayerCache(NamedTuple):
    """What `halo_layer_backward` needs: the caches of the two projections and of attention."""

    q: Conv1x1Cache
    kv: Conv1x1Cache
    attention: AttentionCache
    has_bias: bool


def halo_layer_forward(x, params, *, query_stride, **core_kwargs):
    """`HaloAttention`'s projections and attention: x (B, dim, H, W) -> out (B, heads*d_v, H/s,
    W/s) and a `LayerCache`.

    params: the layer's parameters by timm's names (`q.weight`, `kv.weight`, optional `q.bias`,
    `kv.bias`, `pos_embed.height_rel`, `pos_embed.width_rel`); core_kwargs: the other keyword
    arguments of `halo_attention_forward`. The query projection keeps every s-th pixel.
    """
    q_map, q_cache = conv1x1_forward(x, params["q.weight"], params.get("q.bias"), query_stride)
    kv_map, kv_cache = conv1x1_forward(x, params["kv.weight"], params.get("kv.bias"))
    rel = params["pos_embed.height_rel"], params["pos_embed.width_rel"]
    out, attn_cache = halo_attention_forward(
        q_map, kv_map, *rel, query_stride=query_stride, **core_kwargs
    )
    return out, LayerCache(q_cache, kv_cache, attn_cache, "q.bias" in params)


def halo_layer_backward(dout, cache):
    """Gradients of `halo_layer_forward`: dx (B, dim, H, W) and the parameter gradients by
    timm's names (`layer_grads`)."""
    dq_map, dkv_map, dh, dw = halo_attention_backward(dout, cache.attention)
    dx_q, dwq, dbq = conv1x1_backward(dq_map, cache.q)
    dx_kv, dwkv, dbkv = conv1x1_backward(dkv_map, cache.kv)
    return dx_q + dx_kv, layer_grads(dwq, dwkv, dh, dw, (dbq, dbkv) if cache.has_bias else None)


def layer_grads(dwq, dwkv, dh, dw, biases=None):
    """The layer's parameter gradients by timm's names: dwq (heads*d_qk, dim, 1, 1), dwkv
    (heads*(d_qk+d_v), dim, 1, 1), dh and dw (2*win - 1, d_qk), biases (dbq, dbkv) when the
    layer has them. Both implementations of the layer return this dict."""
    grads = {
        "q.weight": dwq,
        "kv.weight": dwkv,
        "pos_embed.height_rel": dh,
        "pos_embed.width_rel": dw,
    }
    if biases is not None:
        grads["q.bias"], grads["kv.bias"] = biases
    return grads
