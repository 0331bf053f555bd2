"""The halo attention layer (paper, section 3.1, and section 3.2 for the downsampling
variants): `HaloAttention`, with timm `HaloAttn`'s arguments, parameter names and semantics.

The layer owns the parameters, checks its input, and runs `halo_layer_forward` /
`halo_layer_backward` (the projections and the attention, `halo_ref.attention.core`, or their
Numba kernels, `halo_ref.attention.kernels`) on the backend that `halo_ref.backend` resolves;
a strided layer whose block does not split evenly pools 2x2 afterwards (`downsampling`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import (
    POSITIVE,
    HaloRefError,
    check_choice,
    check_feature_map,
    check_positive_int,
    check_spatial,
    float_dtype,
)
from ..backend import Backend, resolve
from ..nn.functional import avgpool2x2_backward, avgpool2x2_forward, conv1x1_forward
from ..nn.init import as_generator, make_divisible, trunc_normal, uniform_fan_in
from ..nn.module import Module

BORDERS = ("zeros", "mask")


class Downsampling(NamedTuple):
    """How a layer of stride 2 halves the map."""

    pool: bool  # attention at full resolution, then a 2x2 average pool
    query_stride: int  # the queries keep every query_stride-th pixel (1 or the stride)


def downsampling(stride, block_size, avg_down=False) -> Downsampling:
    """timm's rule: with stride > 1, subsample the queries when the block splits evenly into
    query blocks (and not avg_down); otherwise attend at full resolution and pool afterwards."""
    pool = stride > 1 and (avg_down or block_size % stride != 0)
    return Downsampling(pool, 1 if (stride == 1 or pool) else stride)


class _Forward(NamedTuple):
    """What `HaloAttention.backward` needs from its forward."""

    backend: Backend  # the one that ran the forward
    core: tuple  # the cache of halo_layer_forward on that backend
    pool: tuple | None  # the 2x2 pool's cache, when the layer pools
    x_shape: tuple


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
    backend: None (default: `halo_ref.backend.current()` at each call, Numba's kernels unless a
    `halo_ref.backend.use` block says otherwise), "numba", "numpy" or a `Backend`.
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
        backend=None,
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
        if (problem := POSITIVE.problem(qk_ratio)) is not None:
            raise HaloRefError(
                f"{owner}: qk_ratio {problem}, got {qk_ratio!r}; it scales the query/key "
                "width (1.0: as wide as the output)"
            )
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
        self.scale_pos_embed, self.border = bool(scale_pos_embed), border
        self.backend = None if backend is None else resolve(backend)
        self.qkv_bias, self.avg_down = bool(qkv_bias), bool(avg_down)
        self.pool, self.query_stride = downsampling(stride, block_size, avg_down)
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
            f"backend={'current' if self.backend is None else self.backend.name!r})"
        )

    def output_shape(self, input_shape):
        """Shape of `forward`'s output for an input of `input_shape` (B, dim, H, W)."""
        B, _, H, W = input_shape
        return (B, self.dim_out, H // self.stride, W // self.stride)

    def core_kwargs(self):
        """The keyword arguments of the functional core (`halo_attention_forward` and the
        oracle `halo_ref.attention.dense.dense_halo_attention_forward`) for this layer."""
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
        p = self._core_params()
        q_map, _ = conv1x1_forward(x, p["q.weight"], p.get("q.bias"), self.query_stride)
        kv_map, _ = conv1x1_forward(x, p["kv.weight"], p.get("kv.bias"))
        return q_map, kv_map

    def forward(self, x):
        """x: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride)."""
        owner = "HaloAttention.forward"
        self._cache = None
        x = check_feature_map(x, "x", channels=self.dim, dtype=self.dtype, owner=owner)
        check_spatial(*x.shape[2:], block_size=self.block_size, stride=self.stride, owner=owner)
        layer = resolve(self.backend)
        out, core_cache = layer.halo_layer_forward(x, self._core_params(), **self.core_kwargs())
        pool_cache = None
        if self.pool:
            out, pool_cache = avgpool2x2_forward(out)
        self._cache = _Forward(layer, core_cache, pool_cache, x.shape)
        return out

    def backward(self, dout):
        """dout: (B, dim_out, H/stride, W/stride) -> dx (B, dim, H, W); fills `self.grads`."""
        owner = "HaloAttention.backward"
        if self._cache is None:
            raise HaloRefError(f"{owner}: call forward before backward")
        expected = self.output_shape(self._cache.x_shape)
        if not isinstance(dout, np.ndarray) or dout.shape != expected:
            got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
            raise HaloRefError(f"{owner}: dout must have the output's shape {expected}, got {got}")
        if dout.dtype != self.dtype:
            raise HaloRefError(
                f"{owner}: dout has dtype {dout.dtype} but the layer is {self.dtype}; "
                f"cast with dout.astype(np.{self.dtype})"
            )
        if self.pool:
            dout = avgpool2x2_backward(dout, self._cache.pool)
        dx, grads = self._cache.backend.halo_layer_backward(dout, self._cache.core)
        self._grads = self._grads_from_core(grads)
        return dx

    # A layer that stores its projections differently (`BottleneckAttention`: one qkv
    # convolution) hands the core timm's HaloAttn parameters and takes their gradients back.
    def _core_params(self) -> dict[str, np.ndarray]:
        """The parameters under the core's names (q.weight, kv.weight, pos_embed.*)."""
        return self._params

    def _grads_from_core(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The core's gradients (the keys of `_core_params`) under this layer's names."""
        return grads
