"""HaloNet configurations (paper, section 4 and table 2): the paper's H0..H7, the small
"micro", "tiny28", "tiny" and "tiny64" for CPU training (8x8, 28x28, 32x32 and 64x64 images),
and the channel rules that turn a table row into widths.

Each block's width is set by three numbers: `mid` (the bottleneck width: input of the
attention and its query/key width), `mid * rv` (the attention's value and output width, rounded
by `make_divisible`) and `out` (the block's output width). See docs/models.md for every choice
the paper leaves open and why it was made this way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..nn.init import make_divisible


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

# "tiny28": 28x28 images (grey digits, clothing, letters), whose side is no multiple of tiny's 32:
# tiny would pad them to 32x32 and work on 31% more pixels. The stem halves 28x28 to 14x14,
# which cuts into 7x7 blocks; from 14x14 on, a map is small enough for one block to cover it,
# so the later stages attend globally (halo 0: a halo would only add zero keys):
#   14x14: 2 blocks, 2 heads, b=7, h=2 (4 windows of 11x11)
#    7x7 : 1 block strided from 14x14 (one 14x14 block, queries every other pixel), 4 heads
#    7x7 : 1 block, 8 heads, b=7 (global attention over the 49 pixels)
# About 0.7x tiny's time per image (CPU time of a training step at batch 128) and 192k
# parameters: datasets of this size (MNIST-like) need less capacity than CIFAR-10.
CONFIGS["tiny28"] = HaloNetConfig(
    name="tiny28",
    stem=((16, 3, 1), (32, 3, 2)),
    stem_pool=False,
    stages=(
        StageConfig(depth=2, out=64, mid=32, num_heads=2, stride=1, block_size=7, halo_size=2),
        StageConfig(depth=1, out=128, mid=64, num_heads=4, stride=2, block_size=14, halo_size=0),
        StageConfig(depth=1, out=256, mid=128, num_heads=8, stride=1, block_size=7, halo_size=0),
    ),
    final_chs=None,
    image_size=28,
)

# "tiny64": 64x64 images. tiny's attention stages behind a stem that halves twice (64 -> 32 ->
# 16), so the attention sees the maps it sees in tiny and a step costs about what tiny's costs
# on 32x32 images. Derived from tiny so that the two change together: its stages must take a
# 16x16 map of 32 channels (tests/models/test_halonet.py builds and runs it at 64x64).
CONFIGS["tiny64"] = dataclasses.replace(
    CONFIGS["tiny"], name="tiny64", stem=((24, 3, 2), (32, 3, 2)), image_size=64
)

NAMES = ("micro", "tiny28", "tiny", "tiny64") + tuple(row[0] for row in PAPER_TABLE)


def value_channels(stage: StageConfig) -> int:
    """The attention's value and output width of a block of `stage`: mid * rv, rounded."""
    return make_divisible(stage.mid * stage.value_mult, 8)


def input_multiple(cfg: HaloNetConfig) -> int:
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
