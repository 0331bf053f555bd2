"""timm's HaloNets (`timm.models.byoanet`) in halo_ref: the same layers, names and shapes, so
that `model.load_state_dict(timm_model.state_dict())` works unchanged.

timm builds these networks from a "bring your own blocks" description: a stem, four stages of
residual blocks, an optional 1x1 conv-BN-act, then average pooling and a linear classifier.
Two block kinds appear:

    bottle:    conv1_1x1 -> conv2_kxk (3x3, stride, groups) -> attn (SE / ECA / none)
               -> conv3_1x1 (no act) -> + shortcut -> act
    self_attn: conv1_1x1 -> self_attn (halo attention, stride) -> post_attn (BN + act)
               -> conv3_1x1 (no act) -> + shortcut -> act

In halo2botnet50ts_256 and lamhalobotnet50ts_256 (whose second stage holds lambda layers,
`halo_ref.nn.layers.LambdaLayer`) the self_attn blocks of the last stage hold bottleneck attention
(`halo_ref.attention.bottleneck`: halo attention with one block over the whole map), whose map
size timm fixes from the model's image size: that model takes `img_size` x `img_size` images
only (timm's `fixed_input_size`).

The shortcut is the identity when the shape is kept and a strided 1x1 conv + BN otherwise (or
no residual at all for haloregnetz_b, whose `downsample` is empty). The bottleneck width is
make_divisible(out * br) (or of the input's width with `bottle_in`). Everything here is written
from the model descriptions in `TIMM_CONFIGS`; each layer's backward is its own (see
`halo_ref.nn.layers` and `halo_ref.attention.layer`).

Input sizes: timm's halo attention has no padding, so every attention map must be a multiple
of its block size, as in timm (`model.input_multiple`: 256 for halonet26t, for instance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .. import backend as backends
from .._checks import check_choice, check_positive_int, float_dtype
from ..attention.bottleneck import BottleneckAttention
from ..attention.layer import HaloAttention
from ..nn.init import as_generator, make_divisible
from ..nn.layers import (
    ACTIVATIONS,
    BatchNormAct2d,
    ConvBnAct,
    EfficientChannelAttention,
    GlobalAvgPool,
    LambdaLayer,
    Linear,
    MaxPool2d,
    Sequential,
    SqueezeExcite,
)
from ..nn.module import Module
from .classifier import ImageClassifier


@dataclass(frozen=True)
class StageSpec:
    """One stage: `kinds` is one letter per block, B (bottle) or A (self_attn, halo attention);
    out: output width; stride of the first block; gs: group size of the 3x3 convs (0: none);
    br: bottleneck ratio; self_attn: this stage's attention arguments (None: the model's);
    self_attn_layer: "halo", "bottleneck" (`BottleneckAttention`) or "lambda" (`LambdaLayer`).
    """

    kinds: str
    out: int
    stride: int
    gs: int = 0
    br: float = 0.25
    self_attn: dict | None = None
    self_attn_layer: str = "halo"


@dataclass(frozen=True)
class TimmHaloNetSpec:
    """A whole network, in the terms of timm's `ByoModelCfg`."""

    stages: tuple[StageSpec, ...]
    stem: str  # "tiered" (3x3 convs 3c/8, c/2, c), "7x7", "3x3" (one conv)
    stem_chs: int
    stem_pool: bool
    self_attn: dict
    act: str = "relu"
    num_features: int = 0  # width of the final 1x1 conv-BN-act, 0: none
    attn: str | None = None  # channel attention in bottle blocks: "se", "eca" or None
    se_rd_ratio: float = 1 / 16
    downsample: bool = True  # projection shortcut when the shape changes (else no residual)
    bottle_in: bool = False
    linear_out: bool = False
    image_size: int = 256
    extra: dict = field(default_factory=dict)


_RESNET_T = dict(stem="tiered", stem_chs=64)
TIMM_CONFIGS: dict[str, TimmHaloNetSpec] = {
    "halonet_h1": TimmHaloNetSpec(
        stages=(
            StageSpec("AAA", 64, 1, br=1.0),
            StageSpec("AAA", 128, 2, br=1.0),
            StageSpec("A" * 10, 256, 2, br=1.0),
            StageSpec("AAA", 512, 2, br=1.0),
        ),
        stem="7x7",
        stem_chs=64,
        stem_pool=True,
        self_attn=dict(block_size=8, halo_size=3),
    ),
    "halonet26t": TimmHaloNetSpec(
        stages=(
            StageSpec("BB", 256, 1),
            StageSpec("BB", 512, 2),
            StageSpec("BA", 1024, 2),
            StageSpec("AA", 2048, 2),
        ),
        **_RESNET_T,
        stem_pool=True,
        self_attn=dict(block_size=8, halo_size=2),
    ),
    "sehalonet33ts": TimmHaloNetSpec(
        stages=(
            StageSpec("BB", 256, 1),
            StageSpec("BBA", 512, 2),
            StageSpec("BBA", 1024, 2),
            StageSpec("AA", 1536, 2, br=0.333),
        ),
        **_RESNET_T,
        stem_pool=False,
        act="silu",
        num_features=1280,
        attn="se",
        self_attn=dict(block_size=8, halo_size=3),
    ),
    "halonet50ts": TimmHaloNetSpec(
        stages=(
            StageSpec("BBB", 256, 1),
            StageSpec("BBBA", 512, 2, self_attn=dict(block_size=8, halo_size=3, num_heads=4)),
            StageSpec("BABABA", 1024, 2),
            StageSpec("BAB", 2048, 2),
        ),
        **_RESNET_T,
        stem_pool=True,
        act="silu",
        self_attn=dict(block_size=8, halo_size=3),
    ),
    "eca_halonext26ts": TimmHaloNetSpec(
        stages=(
            StageSpec("BB", 256, 1, gs=16),
            StageSpec("BB", 512, 2, gs=16),
            StageSpec("BA", 1024, 2, gs=16),
            StageSpec("AA", 2048, 2, gs=16),
        ),
        **_RESNET_T,
        stem_pool=True,
        act="silu",
        attn="eca",
        self_attn=dict(block_size=8, halo_size=2, dim_head=16),
    ),
    "haloregnetz_b": TimmHaloNetSpec(
        stages=(
            StageSpec("BB", 48, 2, gs=16, br=3),
            StageSpec("B" * 6, 96, 2, gs=16, br=3),
            StageSpec("BBBA" * 3, 192, 2, gs=16, br=3),
            StageSpec("AA", 288, 2, gs=16, br=3),
        ),
        stem="3x3",
        stem_chs=32,
        stem_pool=False,
        act="silu",
        num_features=1536,
        attn="se",
        se_rd_ratio=0.25,
        downsample=False,
        bottle_in=True,
        linear_out=True,
        self_attn=dict(block_size=7, halo_size=2, qk_ratio=0.33),
        image_size=224,
    ),
    "lamhalobotnet50ts_256": TimmHaloNetSpec(
        stages=(
            StageSpec("BBB", 256, 1),
            StageSpec("BABA", 512, 2, self_attn=dict(r=13), self_attn_layer="lambda"),
            StageSpec("BABABA", 1024, 2, self_attn=dict(halo_size=3)),
            StageSpec("BAB", 2048, 2, self_attn={}, self_attn_layer="bottleneck"),
        ),
        **_RESNET_T,
        stem_pool=False,
        act="silu",
        self_attn=dict(block_size=8, halo_size=3),
    ),
    "halo2botnet50ts_256": TimmHaloNetSpec(
        stages=(
            StageSpec("BBB", 256, 1),
            StageSpec("BABA", 512, 2, self_attn=dict(halo_size=3)),
            StageSpec("BABABA", 1024, 2, self_attn=dict(halo_size=3)),
            StageSpec("BAB", 2048, 2, self_attn={}, self_attn_layer="bottleneck"),
        ),
        **_RESNET_T,
        stem_pool=False,
        act="silu",
        self_attn=dict(block_size=8, halo_size=3),
    ),
}
TIMM_NAMES = tuple(TIMM_CONFIGS)


class ResidualBlock(Module):
    """body (named children, applied in order) + shortcut, then an activation.

    shortcut: "identity" (x itself), a module (a projection), or None (no residual: the body
    alone). x: (B, in, H, W) -> (B, out, H/stride, W/stride).
    """

    def __init__(self, body, shortcut, act):
        super().__init__()
        self._body = []
        if isinstance(shortcut, Module):
            self.add_child("shortcut", shortcut)
        self.shortcut_mode = shortcut if not isinstance(shortcut, Module) else "module"
        for name, module in body:
            self._body.append(self.add_child(name, module))
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        y = x
        for m in self._body:
            y = m.forward(y)
        if self.shortcut_mode == "identity":
            y = backends.current().add(y, x)
        elif self.shortcut_mode == "module":
            y = backends.current().add(y, self._children["shortcut"].forward(x))
        return self.act.forward(y)

    def backward(self, dout):
        d = self.act.backward(dout)  # the sum passes its gradient to both branches
        dx = None
        if self.shortcut_mode == "identity":
            dx = d
        elif self.shortcut_mode == "module":
            dx = self._children["shortcut"].backward(d)
        for m in reversed(self._body):
            d = m.backward(d)
        return d if dx is None else backends.current().add(d, dx)


def _block(kind, in_ch, stage: StageSpec, stride, spec: TimmHaloNetSpec, dt, rng, feat):
    """One residual block of timm's byobnet with timm's child names; feat: the side of its
    input map (for bottleneck attention)."""
    act = spec.act
    mid = make_divisible((in_ch if spec.bottle_in else stage.out) * stage.br)
    groups = mid // stage.gs if stage.gs else 1
    if in_ch != stage.out or stride != 1:
        shortcut = (
            ConvBnAct(in_ch, stage.out, 1, stride=stride, act="identity", dtype=dt, rng=rng)
            if spec.downsample
            else None
        )
    else:
        shortcut = "identity"
    body = [("conv1_1x1", ConvBnAct(in_ch, mid, 1, act=act, dtype=dt, rng=rng))]
    if kind == "B":
        body.append(
            ("conv2_kxk", ConvBnAct(mid, mid, 3, stride=stride, groups=groups, act=act, dtype=dt, rng=rng))
        )  # fmt: skip
        if spec.attn == "se":
            rd = make_divisible(mid * spec.se_rd_ratio, 8, round_limit=0.0)
            body.append(("attn", SqueezeExcite(mid, rd, dtype=dt, rng=rng)))
        elif spec.attn == "eca":
            body.append(("attn", EfficientChannelAttention(mid, dtype=dt, rng=rng)))
    else:
        kwargs = dict(stage.self_attn if stage.self_attn is not None else spec.self_attn)
        if stage.self_attn_layer == "bottleneck":
            attn = BottleneckAttention(
                mid, mid, feat_size=feat, stride=stride, dtype=dt, rng=rng, **kwargs
            )
        elif stage.self_attn_layer == "lambda":
            attn = LambdaLayer(mid, mid, stride=stride, dtype=dt, rng=rng, **kwargs)
        else:
            attn = HaloAttention(mid, mid, stride=stride, dtype=dt, rng=rng, **kwargs)
        body.append(("self_attn", attn))
        body.append(("post_attn", BatchNormAct2d(mid, act=act, dtype=dt)))
    body.append(("conv3_1x1", ConvBnAct(mid, stage.out, 1, act="identity", dtype=dt, rng=rng)))
    return ResidualBlock(body, shortcut, "identity" if spec.linear_out else act)


def _stem(spec: TimmHaloNetSpec, in_chans, dt, rng):
    """timm's stems: "tiered" (three 3x3 convs, the first with stride 2, the last too when no
    pool follows), "7x7" (one 7x7/2 conv) or "3x3" (one 3x3/2 conv, not wrapped in a Stem)."""
    c, act = spec.stem_chs, spec.act
    if spec.stem == "3x3":
        return ConvBnAct(in_chans, c, 3, stride=2, act=act, dtype=dt, rng=rng), c
    if spec.stem == "tiered":
        widths, kernel = (3 * c // 8, c // 2, c), 3
        strides = (2, 1, 1 if spec.stem_pool else 2)
    else:
        widths, kernel, strides = (c,), 7, (2,)
    parts, ch = [], in_chans
    for i, (w, s) in enumerate(zip(widths, strides, strict=True)):
        parts.append(
            (f"conv{i + 1}", ConvBnAct(ch, w, kernel, stride=s, act=act, dtype=dt, rng=rng))
        )
        ch = w
    if spec.stem_pool:
        parts.append(("pool", MaxPool2d(3, 2, padding=1)))
    return Sequential(*parts), ch


class TimmHaloNet(ImageClassifier):
    """One of timm's HaloNets: children `stem`, `stages` (`stages.<i>.<j>`), `final_conv` (when
    num_features), `head` (`head.fc`).

    forward: x (B, in_chans, H, W) -> logits (B, num_classes), H and W multiples of
    `input_multiple` (timm's attention has no padding: every attention map must be cut into
    whole blocks); backward: dlogits (B, num_classes) -> dx. backend: None (follow
    `halo_ref.backend.current()`) or the backend of the whole network.
    """

    def __init__(self, name, *, num_classes=1000, in_chans=3, dtype=np.float32, rng=None,
                 backend=None, self_attn_kwargs=None, img_size=None):  # fmt: skip
        check_choice(name, "name", TIMM_NAMES)
        spec = TIMM_CONFIGS[name]
        if self_attn_kwargs is not None:  # as timm's create_model(..., self_attn_kwargs=...)
            spec = replace(spec, self_attn=dict(self_attn_kwargs))
        if img_size is not None:  # as timm's create_model(..., img_size=...)
            spec = replace(spec, image_size=check_positive_int(img_size, "img_size"))
        dt, rng = float_dtype(dtype), as_generator(rng)
        stem, ch = _stem(spec, check_positive_int(in_chans, "in_chans"), dt, rng)
        reduction = 2 if spec.stem == "3x3" else 4  # the stem's: two stride-2 steps, or one
        multiple = 1
        stages = []
        for stage in spec.stages:
            blocks = []
            for j, kind in enumerate(stage.kinds):
                stride = stage.stride if j == 0 else 1
                block = _block(kind, ch, stage, stride, spec, dt, rng, spec.image_size // reduction)
                if kind == "A":  # its input map must hold whole blocks (and strides)
                    attn = block.children()["self_attn"]
                    block_size = getattr(attn, "block_size", 1)  # a lambda layer has none
                    multiple = math.lcm(multiple, reduction * math.lcm(block_size, attn.stride))
                blocks.append(block)
                reduction *= stride
                ch = stage.out
            stages.append(Sequential(*blocks))
        parts = [("stem", stem), ("stages", Sequential(*stages))]
        if spec.num_features:
            final = ConvBnAct(ch, spec.num_features, 1, act=spec.act, dtype=dt, rng=rng)
            parts.append(("final_conv", final))
            ch = spec.num_features
        num_classes = check_positive_int(num_classes, "num_classes")
        head = Sequential(
            ("global_pool", GlobalAvgPool()), ("fc", Linear(ch, num_classes, dtype=dt, rng=rng))
        )
        parts.append(("head", head))
        super().__init__(*parts)
        self.name, self.spec = name, spec
        self._set_io(
            name=name,
            num_classes=num_classes,
            in_chans=in_chans,
            dtype=dt,
            input_multiple=multiple,
            backend=backend,
            hint=" (timm's attention does not pad)",
            fixed_size=(
                spec.image_size
                if any(st.self_attn_layer == "bottleneck" for st in spec.stages)
                else None
            ),
        )

    def __repr__(self):
        return f"TimmHaloNet({self.name!r}, params={sum(p.size for p in self.params.values())})"


def timm_halonet(name, *, num_classes=1000, in_chans=3, dtype=np.float32, rng=None, backend=None,
                 self_attn_kwargs=None, img_size=None):  # fmt: skip
    """Build timm's HaloNet `name` (one of `TIMM_NAMES`) with timm's state-dict keys and shapes.

    self_attn_kwargs: replaces the model-wide halo attention arguments (stage-level ones stay),
    as `timm.create_model(name, self_attn_kwargs=...)` does; e.g. smaller blocks for small
    images in tests. img_size: the image size that fixes bottleneck attention's map
    (halo2botnet50ts_256; default 256), as `timm.create_model(name, img_size=...)`.
    """
    return TimmHaloNet(name, num_classes=num_classes, in_chans=in_chans, dtype=dtype, rng=rng,
                       backend=backend, self_attn_kwargs=self_attn_kwargs,
                       img_size=img_size)  # fmt: skip


__all__ = ["TIMM_CONFIGS", "TIMM_NAMES", "TimmHaloNet", "timm_halonet"]
