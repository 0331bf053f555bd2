"""HaloNet models: the paper's H0..H7 and small variants for CPU training
("micro", "tiny28", "tiny", "tiny64").

`configs` holds the configurations and their channel rules, `halonet` the network built from
one.
"""

from .configs import CONFIGS, NAMES, PAPER_TABLE, HaloNetConfig, StageConfig
from .halonet import HaloBottleneck, HaloNet, count_params, halonet

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
