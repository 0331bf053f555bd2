"""HaloNet models: the paper's H0..H7 and small variants for CPU training ("micro", "tiny")."""

from .halonet import (
    CONFIGS,
    NAMES,
    PAPER_TABLE,
    HaloBottleneck,
    HaloNet,
    HaloNetConfig,
    StageConfig,
    count_params,
    halonet,
)

__all__ = [
    "CONFIGS",
    "NAMES",
    "PAPER_TABLE",
    "HaloBottleneck",
    "HaloNet",
    "HaloNetConfig",
    "StageConfig",
    "count_params",
    "halonet",
]
