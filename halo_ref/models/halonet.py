"""HaloNet (paper, section 4 "HaloNet"): a ResNet whose 3x3 convolutions are replaced by halo
attention, with its bottleneck block, stem, stages and head.

    stem -> stage 1 .. stage 4 (bottleneck blocks, each: 1x1 conv -> halo attention(stride)
    -> BN + act -> 1x1 conv -> BN -> + shortcut -> act) -> [1x1 conv to df] -> mean -> linear

The paper's family H0..H7 and the small models for CPU training ("micro", "tiny28", "tiny",
"tiny64") are named
configurations (`halo_ref.models.configs`) of this one network.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend as backends
from .._checks import (
    HaloRefError,
    check_choice,
    check_positive_int,
    float_dtype,
)
from ..attention.layer import HaloAttention
from ..nn.init import as_generator
from ..nn.layers import ACTIVATIONS, BnAct, ConvBnAct, GlobalAvgPool, Linear, MaxPool2d, Sequential
from ..nn.module import Module
from .classifier import ImageClassifier
from .configs import CONFIGS, NAMES, HaloNetConfig, StageConfig, input_multiple, value_channels
from .timm_byobnet import TIMM_NAMES, timm_halonet


# -- the bottleneck block --------------------------------------------------------------------
class HaloBottleneck(Module):
    """The paper's block: conv1 (1x1, BN, act) -> attn (halo attention, stride) ->
    post_attn (BN, act) -> conv3 (1x1, BN) -> + shortcut -> act.

    x: (B, in_ch, H, W) -> (B, out, ceil(H/stride), ceil(W/stride)). The shortcut is the
    identity when the shape is kept, otherwise a strided 1x1 conv + BN (ResNet's projection).
    With pad_to_blocks, the attention's input is zero-padded at the bottom and right up to a
    multiple of the block size and its output cropped back: padded pixels project to zero
    keys and values (the attention has no bias), exactly like the zeros outside the image.
    backend: None (follow `halo_ref.backend.current()`) or the backend of the whole block.
    """

    def __init__(
        self, in_ch, stage: StageConfig, stride, *, act, pad_to_blocks, dtype, rng, backend=None
    ):
        super().__init__()
        s = stage
        self.stride, self.block_size, self.pad_to_blocks = stride, s.block_size, pad_to_blocks
        self.backend = None if backend is None else backends.resolve(backend)
        dim_v = value_channels(s)
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
        with backends.use(self.backend):
            return self._forward(x)

    def _forward(self, x):
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
        y = backends.current().add(y, x if self.shortcut is None else self.shortcut.forward(x))
        return self.act.forward(y)

    def backward(self, dout):
        """dout: like the output -> dx like the input; fills every child's grads."""
        if self._pads is None:
            raise HaloRefError("HaloBottleneck.backward: call forward before backward")
        with backends.use(self.backend):
            return self._backward(dout)

    def _backward(self, dout):
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
        return backends.current().add(dx, self.conv1.backward(dy))


# -- the network -----------------------------------------------------------------------------
class HaloNet(ImageClassifier):
    """A whole HaloNet: children `stem`, `stages` (`stages.<i>.<j>` is block j of stage i),
    optional `final_conv`, `pool`, `fc`.

    forward: x (B, in_chans, H, W) -> logits (B, num_classes), H and W multiples of
    `input_multiple`; backward: dlogits (B, num_classes) -> dx (B, in_chans, H, W).
    backend: None (follow `halo_ref.backend.current()`) or the backend of the whole network.
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
        self.config = cfg
        self._set_io(
            name=cfg.name,
            num_classes=num_classes,
            in_chans=in_chans,
            dtype=dt,
            input_multiple=1 if cfg.pad_to_blocks else input_multiple(cfg),
            backend=backend,
        )

    def __repr__(self):
        return f"HaloNet({self.config.name!r}, params={count_params(self)})"


def halonet(name, *, num_classes=None, in_chans=3, dtype=np.float32, rng=None, backend=None):
    """Build the named HaloNet: "micro" (8x8 digits), "tiny" (CIFAR-10), "h0".."h7", or one of
    timm's (`halo_ref.models.timm_byobnet.TIMM_NAMES`, e.g. "halonet26t": timm's layers, with
    timm's state-dict keys and shapes).

    num_classes: width of the logits (default 10; 1000, ImageNet's, for timm's models);
    in_chans: input channels (1 for grayscale); dtype: np.float32 or np.float64; rng: seed or
    Generator for the initial weights; backend: None (each call follows
    `halo_ref.backend.current()`, Numba's kernels by default), "numba", "numpy" or a
    `halo_ref.backend.Backend`, for every layer.
    Returns a `HaloNet` (or a `TimmHaloNet`) with forward(x (B, in_chans, H, W)) -> (B, num_classes).
    """
    if name in TIMM_NAMES:
        return timm_halonet(
            name,
            num_classes=1000 if num_classes is None else num_classes,
            in_chans=in_chans,
            dtype=dtype,
            rng=rng,
            backend=backend,
        )
    check_choice(name, "name", NAMES + TIMM_NAMES)
    num_classes = check_positive_int(10 if num_classes is None else num_classes, "num_classes")
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
