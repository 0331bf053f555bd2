"""Layers of a network."""

from .layers import (
    ACTIVATIONS,
    AvgPool2x2,
    BatchNorm2d,
    BnAct,
    Conv2d,
    ConvBnAct,
    GlobalAvgPool,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    SiLU,
)
from .module import Module

__all__ = [
    "ACTIVATIONS",
    "AvgPool2x2",
    "BatchNorm2d",
    "BnAct",
    "Conv2d",
    "ConvBnAct",
    "GlobalAvgPool",
    "Identity",
    "Linear",
    "MaxPool2d",
    "Module",
    "ReLU",
    "Sequential",
    "SiLU",
]
