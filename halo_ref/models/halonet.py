"""HaloNet (paper, section 4 "HaloNet" and table 2): a ResNet whose 3x3 convolutions are
replaced by halo attention, with its bottleneck block, stem, stages and head.

    stem -> stage 1 .. stage 4 (bottleneck blocks, each: 1x1 conv -> halo attention(stride)
    -> BN + act -> 1x1 conv -> BN -> + shortcut -> act) -> [1x1 conv to df] -> mean -> linear

Each block's width is set by three numbers: `mid` (the bottleneck width: input of the
attention and its query/key width), `mid * rv` (the attention's value and output width) and
`out` (the block's output width). The paper's family H0..H7 and two small models for CPU
training ("micro", "tiny") are named configurations of the same code; see docs/models.md for
every choice the paper leaves open and why it was made this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._checks import (
    HaloRefError,
    check_choice,
    check_feature_map,
    check_positive_int,
    float_dtype,
)
from ..attention import HaloAttention, make_divisible
from ..nn.functional import add
from ..nn.init import as_generator
from ..nn.layers import ACTIVATIONS, BnAct, ConvBnAct, GlobalAvgPool, Linear, MaxPool2d, Sequential
from ..nn.module import Module


@dataclass(frozen=True)
class StageConfig:
    """One stage: `depth` bottleneck blocks, the first one with `stride`.

    mid: bottleneck width (attention input and query/key width); out: block output width;
    value_mult (rv): attention value/output width = mid * value_mult; num_heads heads of
    mid / num_heads query/key channels; block_size, halo_size: the attention's b and h.
    """

    depth: int
    out: int
    mid: int
    num_heads: int
    stride: int
    block_size: int
    halo_size: int
    value_mult: float = 1.0


@dataclass(frozen=True)
class HaloNetConfig:
    """A whole network.

    stem: (out_channels, kernel_size, stride) of each conv-BN-act of the stem;
    stem_pool: a 3x3 stride-2 max pool ends the stem (ResNet's); final_chs: width of the 1x1
    conv-BN-act before pooling (the paper's df), or None; act: "silu" or "relu";
    pad_to_blocks: zero-pad a feature map whose size the attention cannot block (H7's 600 px
    gives 75 px maps for b = 10); otherwise such an input is an error.
    image_size, paper_params, paper_top1: the paper's table 2 entries (None for ours).
    """

    name: str
    stem: tuple[tuple[int, int, int], ...]
    stem_pool: bool
    stages: tuple[StageConfig, ...]
    final_chs: int | None
    act: str = "silu"
    pad_to_blocks: bool = False
    image_size: int = 224
    paper_params: float | None = None
    paper_top1: float | None = None
    zero_init_last: bool = True


# -- the paper's family (table 2) ------------------------------------------------------------
#     name   b   h   rv    rb    l3  df    image  params(M) top-1
PAPER_TABLE = (
    ("h0", 8, 3, 1.0, 0.5, 7, None, 256, 5.5, 77.9),
    ("h1", 8, 3, 1.0, 1.0, 10, None, 256, 8.1, 79.9),
    ("h2", 8, 3, 1.0, 1.25, 11, None, 256, 9.4, 80.4),
    ("h3", 10, 3, 1.0, 1.5, 12, 1024, 320, 11.8, 81.9),
    ("h4", 12, 2, 1.0, 3.0, 12, 1280, 384, 19.1, 83.3),
    ("h5", 14, 2, 2.5, 2.0, 23, 1536, 448, 30.7, 84.0),
    ("h6", 8, 4, 3.0, 2.75, 24, 1536, 512, 43.4, 84.4),
    ("h7", 10, 3, 4.0, 3.5, 26, 2048, 600, 67.4, 84.9),
)


def _paper_config(name, b, h, rv, rb, l3, df, image, params, top1) -> HaloNetConfig:
    """ResNet-50's skeleton: 7x7/2 stem + max pool, bottleneck widths 64..512, output widths
    (64..512) x rb, depths [3, 3, l3, 3], 4 heads in stage 1 and 8 after, SiLU."""
    mids, heads, strides = (64, 128, 256, 512), (4, 8, 8, 8), (1, 2, 2, 2)
    stages = tuple(
        StageConfig(
            depth=d,
            out=make_divisible(m * rb, 8),
            mid=m,
            num_heads=nh,
            stride=s,
            block_size=b,
            halo_size=h,
            value_mult=rv,
        )
        for d, m, nh, s in zip((3, 3, l3, 3), mids, heads, strides, strict=True)
    )
    return HaloNetConfig(
        name=name,
        stem=((64, 7, 2),),
        stem_pool=True,
        stages=stages,
        final_chs=df,
        act="silu",
        pad_to_blocks=True,
        image_size=image,
        paper_params=params,
        paper_top1=top1,
    )


CONFIGS: dict[str, HaloNetConfig] = {row[0]: _paper_config(*row) for row in PAPER_TABLE}

# "micro": the bundled 8x8 digits. One 3x3 conv lifts the single channel to 16; then
# attention at 8x8 (blocks of 4 with a 1-pixel halo, so each window of 6x6 overlaps its
# neighbours) and a stride-2 attention block down to 4x4, where one 4x4 block with its halo
# covers the whole map. About 20k parameters: the data set has 1797 images.
CONFIGS["micro"] = HaloNetConfig(
    name="micro",
    stem=((16, 3, 1),),
    stem_pool=False,
    stages=(
        StageConfig(depth=1, out=32, mid=16, num_heads=2, stride=1, block_size=4, halo_size=1),
        StageConfig(depth=2, out=64, mid=32, num_heads=2, stride=2, block_size=4, halo_size=1),
    ),
    final_chs=None,
    image_size=8,
)

# "tiny": CIFAR-10 on two CPU cores. Cost follows resolution: attention at 32x32 dominates a
# HaloNet's time on a CPU (8-dimensional heads make its many small matrix products slow), so
# the stem does the 32x32 work with two cheap 3x3 convolutions (the second with stride 2) and
# attention starts at 16x16, with 16-dimensional heads everywhere:
#   16x16: 2 blocks, 2 heads, b=8, h=2 (4 windows of 12x12)
#    8x8 : 2 blocks, 4 heads, b=4, h=2 (the first strided from 16x16; windows of 8x8)
#    4x4 : 2 blocks, 8 heads, b=4, h=1 (the first strided from 8x8)
# Every residual block has attention (6 of the 8 conv-or-attention layers that mix pixels).
CONFIGS["tiny"] = HaloNetConfig(
    name="tiny",
    stem=((16, 3, 1), (32, 3, 2)),
    stem_pool=False,
    stages=(
        StageConfig(depth=2, out=64, mid=32, num_heads=2, stride=1, block_size=8, halo_size=2),
        StageConfig(depth=2, out=128, mid=64, num_heads=4, stride=2, block_size=4, halo_size=2),
        StageConfig(depth=2, out=256, mid=128, num_heads=8, stride=2, block_size=4, halo_size=1),
    ),
    final_chs=None,
    image_size=32,
)

NAMES = ("micro", "tiny") + tuple(row[0] for row in PAPER_TABLE)


# -- the bottleneck block --------------------------------------------------------------------
class HaloBottleneck(Module):
    """The paper's block: conv1 (1x1, BN, act) -> attn (halo attention, stride) ->
    post_attn (BN, act) -> conv3 (1x1, BN) -> + shortcut -> act.

    x: (B, in_ch, H, W) -> (B, out, ceil(H/stride), ceil(W/stride)). The shortcut is the
    identity when the shape is kept, otherwise a strided 1x1 conv + BN (ResNet's projection).
    With pad_to_blocks, the attention's input is zero-padded at the bottom and right up to a
    multiple of the block size and its output cropped back: padded pixels project to zero
    keys and values (the attention has no bias), exactly like the zeros outside the image.
    """

    def __init__(
        self, in_ch, stage: StageConfig, stride, *, act, pad_to_blocks, dtype, rng, backend=None
    ):
        super().__init__()
        s = stage
        self.stride, self.block_size, self.pad_to_blocks = stride, s.block_size, pad_to_blocks
        dim_v = make_divisible(s.mid * s.value_mult, 8)
        attn_kwargs = {} if backend is None else {"backend": backend}
        self.conv1 = self.add_child(
            "conv1", ConvBnAct(in_ch, s.mid, 1, act=act, dtype=dtype, rng=rng)
        )
        self.attn = self.add_child(
            "attn",
            HaloAttention(
                s.mid,
                dim_v,
                num_heads=s.num_heads,
                dim_head=s.mid // s.num_heads,
                block_size=s.block_size,
                halo_size=s.halo_size,
                stride=stride,
                dtype=dtype,
                rng=rng,
                **attn_kwargs,
            ),
        )
        self.post_attn = self.add_child("post_attn", BnAct(dim_v, act=act, dtype=dtype))
        self.conv3 = self.add_child(
            "conv3", ConvBnAct(dim_v, s.out, 1, act="identity", dtype=dtype, rng=rng)
        )
        if stride != 1 or in_ch != s.out:
            self.shortcut = self.add_child(
                "shortcut",
                ConvBnAct(in_ch, s.out, 1, stride=stride, act="identity", dtype=dtype, rng=rng),
            )
        else:
            self.shortcut = None
        self.act = ACTIVATIONS[act]()
        self._pads = None

    def _padding(self, H, W):
        """Bottom/right zero padding that makes (H, W) blockable, or raise a one-line error."""
        m = math.lcm(self.block_size, self.stride)
        if H % m == 0 and W % m == 0:
            return 0, 0
        if not self.pad_to_blocks:
            raise HaloRefError(
                f"HaloBottleneck: a {H}x{W} feature map cannot be cut into "
                f"{self.block_size}x{self.block_size} blocks; resize the input to a multiple of "
                "the model's input_multiple"
            )
        return -H % m, -W % m

    def forward(self, x):
        """x: (B, in_ch, H, W) -> (B, out, ceil(H/stride), ceil(W/stride))."""
        y = self.conv1.forward(x)  # B, mid, H, W
        H, W = y.shape[2:]
        ph, pw = self._padding(H, W)
        if ph or pw:
            y = np.pad(y, ((0, 0), (0, 0), (0, ph), (0, pw)))  # B, mid, H + ph, W + pw
        y = self.attn.forward(y)  # B, mid * rv, (H + ph) / stride, (W + pw) / stride
        Ho, Wo = -(-H // self.stride), -(-W // self.stride)
        padded_out = y.shape[2:]
        y = y[:, :, :Ho, :Wo]  # B, mid * rv, ceil(H / stride), ceil(W / stride)
        self._pads = (ph, pw, padded_out)
        y = self.post_attn.forward(y)
        y = self.conv3.forward(y)
        y = add(y, x if self.shortcut is None else self.shortcut.forward(x))
        return self.act.forward(y)

    def backward(self, dout):
        """dout: like the output -> dx like the input; fills every child's grads."""
        if self._pads is None:
            raise HaloRefError("HaloBottleneck.backward: call forward before backward")
        ph, pw, padded_out = self._pads
        d = self.act.backward(dout)  # the sum's gradient goes to both branches unchanged
        dx = d if self.shortcut is None else self.shortcut.backward(d)
        dy = self.post_attn.backward(self.conv3.backward(d))
        if ph or pw:  # adjoint of the crop: zeros for the cropped outputs
            full = np.zeros(dy.shape[:2] + tuple(padded_out), dtype=dy.dtype)
            full[:, :, : dy.shape[2], : dy.shape[3]] = dy
            dy = full
        dy = self.attn.backward(dy)
        if ph or pw:  # adjoint of the padding: drop the padded pixels' gradient
            dy = dy[:, :, : dy.shape[2] - ph, : dy.shape[3] - pw]
        return add(dx, self.conv1.backward(dy))


# -- the network -----------------------------------------------------------------------------
class HaloNet(Sequential):
    """A whole HaloNet: children `stem`, `stages` (`stages.<i>.<j>` is block j of stage i),
    optional `final_conv`, `pool`, `fc`.

    forward: x (B, in_chans, H, W) -> logits (B, num_classes), H and W multiples of
    `input_multiple`; backward: dlogits (B, num_classes) -> dx (B, in_chans, H, W).
    """

    def __init__(self, cfg: HaloNetConfig, *, num_classes, in_chans, dtype, rng, backend=None):
        dt = float_dtype(dtype)
        rng = as_generator(rng)
        act = cfg.act
        stem, ch = [], in_chans
        for i, (c, k, s) in enumerate(cfg.stem):
            stem.append((f"conv{i + 1}", ConvBnAct(ch, c, k, stride=s, act=act, dtype=dt, rng=rng)))
            ch = c
        if cfg.stem_pool:
            stem.append(("pool", MaxPool2d(3, 2, padding=1)))
        stages = []
        for st in cfg.stages:
            blocks = []
            for j in range(st.depth):
                stride = st.stride if j == 0 else 1
                blk = HaloBottleneck(
                    ch,
                    st,
                    stride,
                    act=act,
                    pad_to_blocks=cfg.pad_to_blocks,
                    dtype=dt,
                    rng=rng,
                    backend=backend,
                )
                if cfg.zero_init_last:
                    # each residual block starts as (nearly) the identity: deep nets train
                    # from the first step (Goyal et al. 2017; timm's zero_init_last)
                    blk.conv3.bn.params["weight"][...] = 0
                blocks.append(blk)
                ch = st.out
            stages.append(Sequential(*blocks))
        parts = [("stem", Sequential(*stem)), ("stages", Sequential(*stages))]
        if cfg.final_chs:
            parts.append(
                ("final_conv", ConvBnAct(ch, cfg.final_chs, 1, act=act, dtype=dt, rng=rng))
            )
            ch = cfg.final_chs
        parts += [("pool", GlobalAvgPool()), ("fc", Linear(ch, num_classes, dtype=dt, rng=rng))]
        super().__init__(*parts)
        self.config, self.num_classes, self.in_chans, self.dtype = cfg, num_classes, in_chans, dt
        self.input_multiple = 1 if cfg.pad_to_blocks else _input_multiple(cfg)

    def __repr__(self):
        return f"HaloNet({self.config.name!r}, params={count_params(self)})"

    def forward(self, x):
        """x: (B, in_chans, H, W) -> logits (B, num_classes)."""
        owner = f"halonet({self.config.name!r}).forward"
        x = check_feature_map(x, "x", channels=self.in_chans, dtype=self.dtype, owner=owner)
        H, W = x.shape[2:]
        m = self.input_multiple
        if H % m or W % m or min(H, W) < m:
            raise HaloRefError(
                f"{owner}: image size {H}x{W} cannot be cut into the model's attention blocks; "
                f"H and W must be multiples of {m} (e.g. resize or pad to "
                f"{max(m, -(-H // m) * m)}x{max(m, -(-W // m) * m)})"
            )
        return super().forward(x)

    def backward(self, dlogits):
        """dlogits: (B, num_classes) -> dx (B, in_chans, H, W); fills `grads`."""
        if not isinstance(dlogits, np.ndarray) or dlogits.shape[-1:] != (self.num_classes,):
            got = getattr(dlogits, "shape", type(dlogits).__name__)
            raise HaloRefError(
                f"halonet.backward: dlogits must have shape (B, {self.num_classes}), got {got}"
            )
        return super().backward(dlogits.astype(self.dtype, copy=False))


def _input_multiple(cfg: HaloNetConfig) -> int:
    """Smallest m such that every stride divides and every attention map cuts into blocks
    whenever H and W are multiples of m."""
    m, r = 1, 1  # r: how much the map has shrunk so far
    for _, _, s in cfg.stem:
        m, r = math.lcm(m, r * s), r * s
    if cfg.stem_pool:
        m, r = math.lcm(m, r * 2), r * 2
    for st in cfg.stages:
        m = math.lcm(m, r * math.lcm(st.block_size, st.stride))
        r *= st.stride
        if st.depth > 1:
            m = math.lcm(m, r * st.block_size)
    return m


def halonet(name, *, num_classes=10, in_chans=3, dtype=np.float32, rng=None, backend=None):
    """Build the named HaloNet: "micro" (8x8 digits), "tiny" (CIFAR-10) or "h0".."h7".

    num_classes: width of the logits; in_chans: input channels (1 for grayscale);
    dtype: np.float32 or np.float64; rng: seed or Generator for the initial weights;
    backend: the halo attention backend (None: `HaloAttention`'s default).
    Returns a `HaloNet` with forward(x (B, in_chans, H, W)) -> (B, num_classes).
    """
    check_choice(name, "name", NAMES)
    num_classes = check_positive_int(num_classes, "num_classes")
    in_chans = check_positive_int(in_chans, "in_chans")
    return HaloNet(
        CONFIGS[name],
        num_classes=num_classes,
        in_chans=in_chans,
        dtype=dtype,
        rng=rng,
        backend=backend,
    )


def count_params(model: Module) -> int:
    """Number of trainable scalars (buffers such as BatchNorm's running statistics excluded)."""
    return int(sum(p.size for p in model.params.values()))
