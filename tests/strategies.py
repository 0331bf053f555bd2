"""Hypothesis strategies shared by the test modules (one home for every random shape)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass(frozen=True)
class CoreCase:
    """Arguments of the functional halo attention core (`halo_attention_forward`)."""

    batch: int
    num_heads: int
    d_qk: int
    d_v: int
    block_size: int
    halo_size: int
    query_stride: int
    blocks_h: int
    blocks_w: int
    border: str
    scale_pos_embed: bool
    seed: int

    @property
    def H(self):
        return self.blocks_h * self.block_size

    @property
    def W(self):
        return self.blocks_w * self.block_size

    @property
    def win(self):
        return self.block_size + 2 * self.halo_size

    def kwargs(self):
        return dict(
            num_heads=self.num_heads,
            block_size=self.block_size,
            halo_size=self.halo_size,
            query_stride=self.query_stride,
            scale=self.d_qk**-0.5,
            scale_pos_embed=self.scale_pos_embed,
            border=self.border,
        )

    def arrays(self, dtype=np.float64):
        """Random q_map, kv_map, height_rel, width_rel for this case."""
        rng = np.random.default_rng(self.seed)
        s, R = self.query_stride, 2 * self.win - 1
        q = rng.standard_normal((self.batch, self.num_heads * self.d_qk, self.H // s, self.W // s))
        kv = rng.standard_normal(
            (self.batch, self.num_heads * (self.d_qk + self.d_v), self.H, self.W)
        )
        rh = rng.standard_normal((R, self.d_qk)) * 0.5
        rw = rng.standard_normal((R, self.d_qk)) * 0.5
        return tuple(a.astype(dtype) for a in (q, kv, rh, rw))


@st.composite
def core_cases(draw, max_block=5, max_halo=6, max_blocks=3):
    """Core shapes including h = 0, h >= b, non-square maps and query stride 2 (even b)."""
    query_stride = draw(st.sampled_from([1, 2]))
    if query_stride == 2:
        block = draw(st.sampled_from([b for b in range(2, max_block + 1) if b % 2 == 0]))
    else:
        block = draw(st.integers(1, max_block))
    return CoreCase(
        batch=draw(st.integers(1, 2)),
        num_heads=draw(st.integers(1, 3)),
        d_qk=draw(st.integers(1, 4)),
        d_v=draw(st.integers(1, 4)),
        block_size=block,
        halo_size=draw(st.integers(0, max_halo)),
        query_stride=query_stride,
        blocks_h=draw(st.integers(1, max_blocks)),
        blocks_w=draw(st.integers(1, max_blocks)),
        border=draw(st.sampled_from(["zeros", "mask"])),
        scale_pos_embed=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclass(frozen=True)
class LayerCase:
    """Constructor arguments and input shape of a `HaloAttention` layer."""

    dim: int
    dim_out: int
    num_heads: int
    dim_head: int
    block_size: int
    halo_size: int
    stride: int
    avg_down: bool
    qkv_bias: bool
    scale_pos_embed: bool
    border: str
    batch: int
    H: int
    W: int
    seed: int

    def layer_kwargs(self):
        return dict(
            num_heads=self.num_heads,
            dim_head=self.dim_head,
            block_size=self.block_size,
            halo_size=self.halo_size,
            stride=self.stride,
            avg_down=self.avg_down,
            qkv_bias=self.qkv_bias,
            scale_pos_embed=self.scale_pos_embed,
            border=self.border,
        )

    def input(self, dtype=np.float64):
        rng = np.random.default_rng(self.seed + 1)
        return rng.standard_normal((self.batch, self.dim, self.H, self.W)).astype(dtype)


@st.composite
def layer_cases(draw, borders=("zeros", "mask"), max_block=4):
    """Small layers over every option; H and W are multiples of block size and stride."""
    heads = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    block = draw(st.integers(1, max_block))
    step = block if stride == 1 or block % 2 == 0 else 2 * block
    return LayerCase(
        dim=draw(st.integers(1, 6)),
        dim_out=heads * draw(st.integers(1, 3)),
        num_heads=heads,
        dim_head=draw(st.integers(1, 3)),
        block_size=block,
        halo_size=draw(st.integers(0, 4)),
        stride=stride,
        avg_down=draw(st.booleans()),
        qkv_bias=draw(st.booleans()),
        scale_pos_embed=draw(st.booleans()),
        border=draw(st.sampled_from(borders)),
        batch=draw(st.integers(1, 2)),
        H=step * draw(st.integers(1, 2)),
        W=step * draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


# -- halo_ref.verification.testing comparisons (tests/verification/test_testing.py) ------------
@dataclass(frozen=True)
class PerturbedArray:
    """An expected array and a copy with one entry moved by `delta` (relative to max |expected|)."""

    expected: np.ndarray
    index: tuple[int, ...]
    delta: float

    def actual(self):
        out = self.expected.copy()
        out[self.index] += self.delta * np.max(np.abs(self.expected))
        return out


@st.composite
def perturbed_arrays(draw, max_dims=4, max_side=5):
    """A random float64 array (not all zero), an index into it and a relative perturbation."""
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims)))
    seed = draw(st.integers(0, 2**31 - 1))
    expected = np.random.default_rng(seed).standard_normal(shape)
    index = tuple(draw(st.integers(0, n - 1)) for n in shape)
    delta = draw(st.sampled_from([-1.0, 1.0])) * draw(st.floats(1e-6, 10.0))
    return PerturbedArray(expected, index, delta)


# -- layers with manual backward (tests/nn/) ----------------------------------------------------
@dataclass(frozen=True)
class ConvCase:
    """A 2-D convolution or pooling window: input shape, kernel, stride, padding, channels."""

    batch: int
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    padding: int
    H: int
    W: int
    bias: bool
    seed: int

    def arrays(self, dtype=np.float64):
        """Random x (B, C, H, W), weight (O, C, k, k) and bias (O,)."""
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal((self.batch, self.in_ch, self.H, self.W))
        w = rng.standard_normal((self.out_ch, self.in_ch, self.kernel, self.kernel))
        b = rng.standard_normal(self.out_ch)
        return x.astype(dtype), w.astype(dtype), b.astype(dtype)


@st.composite
def conv_cases(draw, max_kernel=4, max_side=7, max_pad=None):
    """Kernels 1..max_kernel, strides 1..3, padding 0..k (or 0..max_pad), maps at least k wide
    after padding, odd and non-square sizes included."""
    k = draw(st.integers(1, max_kernel))
    p = draw(st.integers(0, k if max_pad is None else min(k, max_pad)))
    lo = max(1, k - 2 * p)
    return ConvCase(
        batch=draw(st.integers(1, 3)),
        in_ch=draw(st.integers(1, 3)),
        out_ch=draw(st.integers(1, 3)),
        kernel=k,
        stride=draw(st.integers(1, 3)),
        padding=p,
        H=draw(st.integers(lo, max(lo, max_side))),
        W=draw(st.integers(lo, max(lo, max_side))),
        bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def feature_maps(draw, max_batch=3, max_ch=4, max_side=6, even=False):
    """A random float64 (B, C, H, W) map; with even=True, H and W are even."""
    step = 2 if even else 1
    shape = (
        draw(st.integers(1, max_batch)),
        draw(st.integers(1, max_ch)),
        step * draw(st.integers(1, max_side // step)),
        step * draw(st.integers(1, max_side // step)),
    )
    return np.random.default_rng(draw(st.integers(0, 2**31 - 1))).standard_normal(shape)


@st.composite
def augment_cases(draw):
    """(crop_pad, flip, seed) for halo_ref.training.data.augment: pads 0..3 on small 5x6 images."""
    return draw(st.integers(0, 3)), draw(st.booleans()), draw(st.integers(0, 2**32 - 1))
