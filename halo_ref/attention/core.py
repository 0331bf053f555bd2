"""Halo attention (paper, section 3.1 "Blocked local self-attention", and section 3.2 for the
downsampling variants): the layer `HaloAttention` and, beneath it, the functional core.

For every b x b query block, the queries attend to the keys and values of the block's
(b+2h) x (b+2h) window (see `halo_ref.blocking`), with a relative position term added to each
content logit (see `halo_ref.relpos`):

    logits = scale * q.k + bias             (scale_pos_embed=False, the default)
    logits = scale * (q.k + bias)           (scale_pos_embed=True)
    out    = softmax(logits over the window) @ v

The semantics with border="zeros" are exactly those of timm's `HaloAttn`: the key/value map is
zero-padded, so keys outside the image are zero vectors that still take softmax weight through
their position logit. With border="mask" those positions are excluded from the softmax instead.

Channel layouts follow timm, so weights move between the two unchanged: the query map is
head-major (B, heads*d_qk, H, W); the key/value map interleaves each head's keys and values,
(B, heads*(d_qk + d_v), H, W) as [k_0 | v_0 | k_1 | v_1 | ...]; the output is head-major.
"""

from __future__ import annotations

import numpy as np

from .._checks import (
    HaloRefError,
    check_choice,
    check_feature_map,
    check_positive_int,
    check_spatial,
    float_dtype,
)
from ..nn.functional import (
    add,
    avgpool2x2_backward,
    avgpool2x2_forward,
    conv1x1_backward,
    conv1x1_forward,
    softmax_backward,
    softmax_forward,
)
from ..nn.init import as_generator, trunc_normal, uniform_fan_in
from ..nn.module import Module
from .blocking import (
    blocks_from_map,
    gather_windows,
    map_from_blocks,
    scatter_windows,
    window_inside_image,
)
from .relpos import relpos_backward, relpos_forward

BORDERS = ("zeros", "mask")


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """Round `v` to a multiple of `divisor` without losing more than 10% (timm's channel rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


# ---------------------------------------------------------------------------------------------
# Functional core: projected maps in, attended map out.
# ---------------------------------------------------------------------------------------------
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
    kv = _split_heads(
        gather_windows(kv_map, block_size, halo_size), num_heads
    )  # B, heads, N, Pw, d_qk+d_v
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
    cache = (
        q,
        k,
        v,
        attn,
        rel_cache,
        scale,
        scale_pos_embed,
        num_heads,
        block_size,
        halo_size,
        H,
        W,
    )
    return out_map, cache


def halo_attention_backward(dout_map, cache):
    """Gradients of `halo_attention_forward`.

    dout_map: (B, heads*d_v, H/s, W/s). Returns dq_map (like q_map), dkv_map (like kv_map),
    dheight_rel and dwidth_rel (2*win - 1, d_qk).
    """
    q, k, v, attn, rel_cache, scale, scale_pos_embed, num_heads, block_size, halo_size, H, W = cache
    Hq, Wq = dout_map.shape[2:]
    block_q = int(round(q.shape[3] ** 0.5))

    dout = _split_heads(blocks_from_map(dout_map, block_q), num_heads)  # B, heads, N, Pq, d_v
    # out = attn @ v
    dattn = dout @ v.swapaxes(-1, -2)  # B, heads, N, Pq, Pw
    dv = attn.swapaxes(-1, -2) @ dout  # B, heads, N, Pw, d_v
    dlogits = softmax_backward(dattn, attn)
    # logits = scale * content + bias, or scale * (content + bias)
    dcontent = scale * dlogits
    dbias = dcontent if scale_pos_embed else dlogits
    # content = q @ k^T
    dq = dcontent @ k  # B, heads, N, Pq, d_qk
    dk = dcontent.swapaxes(-1, -2) @ q  # B, heads, N, Pw, d_qk
    dq_rel, dheight_rel, dwidth_rel = relpos_backward(dbias, rel_cache)
    dq = dq + dq_rel

    dq_map = map_from_blocks(_merge_heads(dq), Hq, Wq)
    dkv = _merge_heads(np.concatenate([dk, dv], axis=-1))  # B, N, Pw, heads*(d_qk+d_v)
    dkv_map = scatter_windows(dkv, H, W, block_size, halo_size)
    return dq_map, dkv_map, dheight_rel, dwidth_rel


def _from_numba(name):
    """A stand-in for `halo_ref.attention_numba.<name>` that imports it on first call, so that
    `import halo_ref` does not pay for importing Numba and compiling kernels."""

    def call(*args, **kwargs):
        from . import kernels as attention_numba

        return getattr(attention_numba, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


# Backends: name -> (forward, backward) with the signatures above. "numpy" is the readable
# reference (and the oracle); "numba" is the fused parallel kernel, the default of the layer.
BACKENDS = {
    "numpy": (halo_attention_forward, halo_attention_backward),
    "numba": (
        _from_numba("halo_attention_forward_numba"),
        _from_numba("halo_attention_backward_numba"),
    ),
}


def _layer_forward(x, params, *, query_stride, **core_kwargs):
    """The layer's projections and attention with the NumPy reference: x (B, dim, H, W) ->
    out (B, heads*d_v, H/s, W/s) and a cache for `_layer_backward`."""
    q_map, q_cache = conv1x1_forward(x, params["q.weight"], params.get("q.bias"), query_stride)
    kv_map, kv_cache = conv1x1_forward(x, params["kv.weight"], params.get("kv.bias"))
    rel = params["pos_embed.height_rel"], params["pos_embed.width_rel"]
    out, attn_cache = halo_attention_forward(
        q_map, kv_map, *rel, query_stride=query_stride, **core_kwargs
    )
    return out, (q_cache, kv_cache, attn_cache, "q.bias" in params)


def _layer_backward(dout, cache):
    """Gradients of `_layer_forward`: dx and the parameter gradients by timm's names."""
    q_cache, kv_cache, attn_cache, has_bias = cache
    dq_map, dkv_map, dh, dw = halo_attention_backward(dout, attn_cache)
    dx_q, dwq, dbq = conv1x1_backward(dq_map, q_cache)
    dx_kv, dwkv, dbkv = conv1x1_backward(dkv_map, kv_cache)
    return add(dx_q, dx_kv), _layer_grads(dwq, dwkv, dh, dw, (dbq, dbkv) if has_bias else None)


def _layer_grads(dwq, dwkv, dh, dw, biases=None):
    """The layer's parameter gradients by timm's names: dwq (heads*d_qk, dim, 1, 1), dwkv
    (heads*(d_qk+d_v), dim, 1, 1), dh and dw (2*win - 1, d_qk), biases (dbq, dbkv) when the
    layer has them. Both layer backends return this dict."""
    grads = {
        "q.weight": dwq,
        "kv.weight": dwkv,
        "pos_embed.height_rel": dh,
        "pos_embed.width_rel": dw,
    }
    if biases is not None:
        grads["q.bias"], grads["kv.bias"] = biases
    return grads


# What the layer runs per backend: projections and attention together, (forward, backward).
# The numba backend projects straight into the pixel-major maps its kernels read (see
# halo_ref.attention_numba), so it is one unit, not a projection plus BACKENDS["numba"].
LAYER_BACKENDS = {
    "numpy": (_layer_forward, _layer_backward),
    "numba": (_from_numba("halo_layer_forward_numba"), _from_numba("halo_layer_backward_numba")),
}
DEFAULT_BACKEND = "numba"


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
class HaloAttention(Module):
    """Halo self-attention layer with timm `HaloAttn`'s arguments, weights and semantics.

    x: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride), H and W multiples of block_size.

    Parameters (timm's names and shapes): `q.weight` (heads*d_qk, dim, 1, 1);
    `kv.weight` (heads*(d_qk+d_v), dim, 1, 1), per head [k | v]; `pos_embed.height_rel` and
    `pos_embed.width_rel` (2*win - 1, d_qk); `q.bias`, `kv.bias` when qkv_bias.

    d_qk = dim_head or make_divisible(dim_out * qk_ratio, 8) // num_heads, d_v = dim_out //
    num_heads, scale = d_qk ** -0.5, win = block_size + 2 * halo_size. With stride=2 and an even
    block_size (and not avg_down) the queries are subsampled; otherwise attention runs at full
    resolution and a 2x2 average pool follows.

    border: "zeros" (timm: zero-padded keys take part in the softmax) or "mask" (they do not).
    dtype: np.float32 or np.float64, for the weights and the expected input; nothing is cast.
    rng: seed or `numpy.random.Generator` for the initial weights.
    backend: "numba" (default; the fused parallel kernels of `halo_ref.attention_numba`) or
    "numpy" (the readable reference above, the oracle).
    """

    def __init__(
        self,
        dim,
        dim_out=None,
        *,
        num_heads=8,
        dim_head=None,
        block_size=8,
        halo_size=3,
        stride=1,
        qk_ratio=1.0,
        qkv_bias=False,
        avg_down=False,
        scale_pos_embed=False,
        border="zeros",
        dtype=np.float32,
        rng=None,
        backend=DEFAULT_BACKEND,
    ):
        super().__init__()
        owner = "HaloAttention"
        dim = check_positive_int(dim, "dim")
        dim_out = check_positive_int(dim_out, "dim_out") if dim_out is not None else dim
        num_heads = check_positive_int(num_heads, "num_heads")
        block_size = check_positive_int(block_size, "block_size")
        halo_size = check_positive_int(halo_size, "halo_size", minimum=0)
        check_choice(stride, "stride", (1, 2))
        check_choice(border, "border", BORDERS)
        check_choice(backend, "backend", tuple(BACKENDS))
        if dim_out % num_heads:
            raise HaloRefError(
                f"{owner}: dim_out={dim_out} is not divisible by num_heads={num_heads}; "
                "choose num_heads that divides it"
            )
        self.dtype = float_dtype(dtype)
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        if dim_head is not None:
            self.dim_head_qk = check_positive_int(dim_head, "dim_head")
        else:
            self.dim_head_qk = make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
            if self.dim_head_qk < 1:
                raise HaloRefError(
                    f"{owner}: qk_ratio={qk_ratio} gives no query/key channels per head; "
                    "raise qk_ratio or pass dim_head"
                )
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk**-0.5
        self.block_size, self.halo_size, self.stride = block_size, halo_size, stride
        self.win_size = block_size + 2 * halo_size
        self.scale_pos_embed, self.border, self.backend = bool(scale_pos_embed), border, backend
        self.qkv_bias, self.avg_down = bool(qkv_bias), bool(avg_down)
        # timm: subsample the queries when the block splits evenly, otherwise pool afterwards
        self.pool = stride > 1 and (avg_down or block_size % stride != 0)
        self.query_stride = 1 if (stride == 1 or self.pool) else stride
        self.block_size_q = block_size // self.query_stride

        rng = as_generator(rng)
        dt = self.dtype
        d_qk_all = num_heads * self.dim_head_qk
        d_kv_all = num_heads * (self.dim_head_qk + self.dim_head_v)
        std = dim**-0.5  # fan-in of a 1x1 convolution
        self.add_param("q.weight", trunc_normal(rng, (d_qk_all, dim, 1, 1), std, dt))
        self.add_param("kv.weight", trunc_normal(rng, (d_kv_all, dim, 1, 1), std, dt))
        if qkv_bias:
            self.add_param("q.bias", uniform_fan_in(rng, (d_qk_all,), dim, dt))
            self.add_param("kv.bias", uniform_fan_in(rng, (d_kv_all,), dim, dt))
        R = 2 * self.win_size - 1
        self.add_param(
            "pos_embed.height_rel", trunc_normal(rng, (R, self.dim_head_qk), self.scale, dt)
        )
        self.add_param(
            "pos_embed.width_rel", trunc_normal(rng, (R, self.dim_head_qk), self.scale, dt)
        )
        self._cache = None

    def __repr__(self):
        return (
            f"HaloAttention(dim={self.dim}, dim_out={self.dim_out}, num_heads={self.num_heads}, "
            f"dim_head_qk={self.dim_head_qk}, dim_head_v={self.dim_head_v}, "
            f"block_size={self.block_size}, halo_size={self.halo_size}, stride={self.stride}, "
            f"pool={self.pool}, border={self.border!r}, dtype={self.dtype}, "
            f"backend={self.backend!r})"
        )

    def output_shape(self, input_shape):
        """Shape of `forward`'s output for an input of `input_shape` (B, dim, H, W)."""
        B, _, H, W = input_shape
        return (B, self.dim_out, H // self.stride, W // self.stride)

    def core_kwargs(self):
        """The keyword arguments of the functional core (`halo_attention_forward` and the
        oracle `halo_ref.reference.dense_halo_attention_forward`) for this layer."""
        return dict(
            num_heads=self.num_heads,
            block_size=self.block_size,
            halo_size=self.halo_size,
            query_stride=self.query_stride,
            scale=self.scale,
            scale_pos_embed=self.scale_pos_embed,
            border=self.border,
        )

    def project(self, x):
        """The query and key/value maps of x with the NumPy 1x1 projections (no cache).

        x: (B, dim, H, W) -> q_map (B, heads*d_qk, H/s, W/s), kv_map (B, heads*(d_qk+d_v), H, W).
        """
        p = self._params
        q_map, _ = conv1x1_forward(x, p["q.weight"], p.get("q.bias"), self.query_stride)
        kv_map, _ = conv1x1_forward(x, p["kv.weight"], p.get("kv.bias"))
        return q_map, kv_map

    def forward(self, x):
        """x: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride)."""
        owner = "HaloAttention.forward"
        self._cache = None
        x = check_feature_map(x, "x", channels=self.dim, dtype=self.dtype, owner=owner)
        check_spatial(*x.shape[2:], block_size=self.block_size, stride=self.stride, owner=owner)
        layer_forward, _ = LAYER_BACKENDS[self.backend]
        out, core_cache = layer_forward(x, self._params, **self.core_kwargs())
        pool_cache = None
        if self.pool:
            out, pool_cache = avgpool2x2_forward(out)
        self._cache = (core_cache, pool_cache, x.shape)
        return out

    def backward(self, dout):
        """dout: (B, dim_out, H/stride, W/stride) -> dx (B, dim, H, W); fills `self.grads`."""
        owner = "HaloAttention.backward"
        if self._cache is None:
            raise HaloRefError(f"{owner}: call forward before backward")
        core_cache, pool_cache, x_shape = self._cache
        expected = self.output_shape(x_shape)
        if not isinstance(dout, np.ndarray) or dout.shape != expected:
            got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
            raise HaloRefError(f"{owner}: dout must have the output's shape {expected}, got {got}")
        if dout.dtype != self.dtype:
            raise HaloRefError(
                f"{owner}: dout has dtype {dout.dtype} but the layer is {self.dtype}; "
                f"cast with dout.astype(np.{self.dtype})"
            )
        if self.pool:
            dout = avgpool2x2_backward(dout, pool_cache)
        _, layer_backward = LAYER_BACKENDS[self.backend]
        dx, self._grads = layer_backward(dout, core_cache)
        return dx
