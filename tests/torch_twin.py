"""Build the PyTorch twin of a halo_ref network: same structure, same names, same weights.

`torch_twin(model)` walks halo_ref's module tree and builds the matching `torch.nn` module for
every node (Conv2d, BatchNorm2d, activations, pooling, Linear, the bottleneck block, and timm's
`HaloAttn` for `HaloAttention`, loaded through `halo_ref.verification.torch_side`), then copies the
state dict across. Because the child names are the same, the two state dicts have the same keys,
so weights move both ways with `load_state_dict`. Used by tests/test_torch_twin.py and
benchmarks/bench_model.py; it needs torch (and timm for the attention).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from halo_ref import nn as hnn
from halo_ref.attention import HaloAttention
from halo_ref.models.halonet import HaloBottleneck
from halo_ref.verification.torch_side import timm_halo_attn_from


class TwinSequential(nn.Module):
    """Named children applied in order (like halo_ref's Sequential, keeping its names)."""

    def __init__(self, named):
        super().__init__()
        for name, module in named:
            self.add_module(name, module)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


class TwinGlobalAvgPool(nn.Module):
    """Mean over H and W: (B, C, H, W) -> (B, C)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class TwinBottleneck(nn.Module):
    """halo_ref's HaloBottleneck in torch, including the zero padding to whole blocks."""

    def __init__(self, block: HaloBottleneck):
        super().__init__()
        self.stride, self.block_size = block.stride, block.block_size
        self.conv1 = convert(block.conv1)
        self.attn = convert(block.attn)
        self.post_attn = convert(block.post_attn)
        self.conv3 = convert(block.conv3)
        self.shortcut = convert(block.shortcut) if block.shortcut is not None else None
        self.act = convert(block.act)

    def forward(self, x):
        y = self.conv1(x)
        H, W = y.shape[2:]
        m = int(np.lcm(self.block_size, self.stride))
        y = F.pad(y, (0, -W % m, 0, -H % m))  # right, then bottom: zeros, as halo_ref
        y = self.attn(y)[:, :, : -(-H // self.stride), : -(-W // self.stride)]
        y = self.conv3(self.post_attn(y))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


def convert(m):
    """The torch module mirroring the halo_ref module `m` (weights not yet copied)."""
    if isinstance(m, HaloAttention):
        return timm_halo_attn_from(m)  # also copies the attention's weights
    if isinstance(m, HaloBottleneck):
        return TwinBottleneck(m)
    if isinstance(m, hnn.Sequential):
        return TwinSequential([(name, convert(c)) for name, c in m.children().items()])
    if isinstance(m, hnn.Conv2d):
        return nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            bias="bias" in m.params,
        )
    if isinstance(m, hnn.BatchNorm2d):
        return nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
    if isinstance(m, hnn.Linear):
        return nn.Linear(m.in_features, m.out_features, bias="bias" in m.params)
    if isinstance(m, hnn.MaxPool2d):
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    simple = {
        hnn.ReLU: nn.ReLU,
        hnn.SiLU: nn.SiLU,
        hnn.Identity: nn.Identity,
        hnn.GlobalAvgPool: TwinGlobalAvgPool,
    }
    if type(m) in simple:
        return simple[type(m)]()
    raise TypeError(f"no torch twin for {type(m).__name__}")


def to_torch_state(state):
    """halo_ref state dict -> torch tensors (copies)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}


def torch_twin(model):
    """The torch twin of `model` with its weights and buffers, in the model's dtype and mode."""
    twin = convert(model)
    twin = twin.to(torch.float64 if model.dtype == np.float64 else torch.float32)
    twin.load_state_dict(to_torch_state(model.state_dict()), strict=True)
    twin.train(model.training)
    return twin
