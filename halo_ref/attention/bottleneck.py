"""Bottleneck attention (BoTNet, Srinivas et al. 2021, arXiv 2101.11605) as timm's
`BottleneckAttn`: global self-attention over the whole feature map with 2-D relative position
logits, used in the last stage of timm's `halo2botnet50ts_256`.

It is halo attention with one block: a block as large as the map and no halo. With
`block_size = H = W` and `halo_size = 0`, the window of the single block is the whole map, the
position tables have 2H - 1 rows, and timm's `rel_logits_1d` indexes them as `HaloAttn` does;
no key is padding, so the border rule never applies. A stride of 2 attends at full resolution
and average-pools 2x2 afterwards (`avg_down`). So `BottleneckAttention` is a `HaloAttention`
whose only difference is how it stores its projections: timm's one 1x1 convolution `qkv`,
whose output channels are all queries, then all keys, then all values, each head-major,

    qkv.weight (heads*d_qk + heads*d_qk + heads*d_v, dim, 1, 1) = [q | k_0 k_1 ... | v_0 v_1 ...]

where halo attention keeps `q.weight` and `kv.weight` with keys and values interleaved per head,
[k_0 | v_0 | k_1 | v_1 | ...]. The layer rearranges those rows before each forward and the
gradients back after each backward; the attention itself is halo_ref's, unchanged.

The map size is fixed when the layer is built (timm's `feat_size`): an input of another size is
refused, since one block over a larger map would silently become several blocks.
"""

from __future__ import annotations

import numpy as np

from .._checks import HaloRefError, check_feature_map, check_positive_int
from ..nn.init import as_generator, trunc_normal, uniform_fan_in
from .layer import HaloAttention


class BottleneckAttention(HaloAttention):
    """timm's `BottleneckAttn`: global attention over a feat_size x feat_size map.

    Parameters (timm's names and shapes): `qkv.weight` (heads*(2*d_qk + d_v), dim, 1, 1),
    `qkv.bias` when qkv_bias, `pos_embed.height_rel` and `pos_embed.width_rel`
    (2*feat_size - 1, d_qk). d_qk = dim_head or make_divisible(dim_out * qk_ratio, 8) //
    num_heads; d_v = dim_out // num_heads.

    forward: x (B, dim, feat_size, feat_size) -> (B, dim_out, feat_size/stride, ...);
    backward: dout of that shape -> dx, filling `grads` under the names above.
    """

    def __init__(
        self,
        dim,
        dim_out=None,
        *,
        feat_size,
        stride=1,
        num_heads=4,
        dim_head=None,
        qk_ratio=1.0,
        qkv_bias=False,
        scale_pos_embed=False,
        dtype=np.float32,
        rng=None,
        backend=None,
    ):
        feat_size = check_positive_int(feat_size, "feat_size")
        if stride == 2 and feat_size % 2:
            raise HaloRefError(
                f"BottleneckAttention: feat_size={feat_size} is odd, so stride 2 cannot pool "
                "it 2x2; use an even map"
            )
        rng = as_generator(rng)
        super().__init__(
            dim,
            dim_out,
            num_heads=num_heads,
            dim_head=dim_head,
            block_size=feat_size,
            halo_size=0,
            stride=stride,
            qk_ratio=qk_ratio,
            qkv_bias=qkv_bias,
            avg_down=True,  # timm's BottleneckAttn attends at full resolution, then pools
            scale_pos_embed=scale_pos_embed,
            dtype=dtype,
            rng=rng,
            backend=backend,
        )
        self.feat_size = feat_size
        heads, d_qk, d_v = self.num_heads, self.dim_head_qk, self.dim_head_v
        width = heads * (2 * d_qk + d_v)
        for name in ("q.weight", "kv.weight", "q.bias", "kv.bias"):
            self._params.pop(name, None)
        # timm's initialisation: fan-in for the projection, then its own tables' std
        tables = {k: self._params.pop(k) for k in ("pos_embed.height_rel", "pos_embed.width_rel")}
        self.add_param(
            "qkv.weight", trunc_normal(rng, (width, self.dim, 1, 1), self.dim**-0.5, self.dtype)
        )
        if qkv_bias:
            self.add_param("qkv.bias", uniform_fan_in(rng, (width,), self.dim, self.dtype))
        for k, v in tables.items():
            self.add_param(k, v)

    def __repr__(self):
        return (
            f"BottleneckAttention(dim={self.dim}, dim_out={self.dim_out}, "
            f"feat_size={self.feat_size}, num_heads={self.num_heads}, "
            f"dim_head_qk={self.dim_head_qk}, dim_head_v={self.dim_head_v}, "
            f"stride={self.stride}, dtype={self.dtype})"
        )

    def forward(self, x):
        """x: (B, dim, feat_size, feat_size) -> (B, dim_out, feat_size/stride, ...)."""
        x = check_feature_map(
            x, "x", channels=self.dim, dtype=self.dtype, owner="BottleneckAttention.forward"
        )
        if x.shape[2:] != (self.feat_size, self.feat_size):
            raise HaloRefError(
                f"BottleneckAttention.forward: x is {x.shape[2]}x{x.shape[3]} but the layer "
                f"was built for {self.feat_size}x{self.feat_size} maps (timm's feat_size: the "
                "model's image size fixes it); resize the input or rebuild the model"
            )
        return super().forward(x)

    def _split(self, qkv):
        """qkv rows (or bias entries) -> (q rows, kv rows interleaved per head)."""
        heads, d_qk, d_v = self.num_heads, self.dim_head_qk, self.dim_head_v
        rest = qkv.shape[1:]
        q = qkv[: heads * d_qk]
        k = qkv[heads * d_qk : 2 * heads * d_qk].reshape(heads, d_qk, *rest)
        v = qkv[2 * heads * d_qk :].reshape(heads, d_v, *rest)
        kv = np.concatenate([k, v], axis=1)  # heads, d_qk + d_v, ...: per head [k | v]
        return np.ascontiguousarray(q), kv.reshape(heads * (d_qk + d_v), *rest)

    def _join(self, q, kv):
        """The inverse of `_split`: q rows and per-head interleaved kv rows -> qkv rows."""
        heads, d_qk = self.num_heads, self.dim_head_qk
        rest = kv.shape[1:]
        per_head = kv.reshape(heads, -1, *rest)  # heads, d_qk + d_v, ...
        k = per_head[:, :d_qk].reshape(heads * d_qk, *rest)
        v = per_head[:, d_qk:].reshape(-1, *rest)
        return np.concatenate([q, k, v], axis=0)

    def _core_params(self):
        p = self._params
        core = {k: v for k, v in p.items() if k.startswith("pos_embed.")}
        core["q.weight"], core["kv.weight"] = self._split(p["qkv.weight"])
        if "qkv.bias" in p:
            core["q.bias"], core["kv.bias"] = self._split(p["qkv.bias"])
        return core

    def _grads_from_core(self, grads):
        own = {k: v for k, v in grads.items() if k.startswith("pos_embed.")}
        own["qkv.weight"] = self._join(grads["q.weight"], grads["kv.weight"])
        if "q.bias" in grads:
            own["qkv.bias"] = self._join(grads["q.bias"], grads["kv.bias"])
        return own
