"""HaloNet models: the paper's H0..H7, small variants for CPU training ("micro", "tiny28",
"tiny", "tiny64"), and timm's HaloNets.

`configs` holds the configurations and their channel rules, `halonet` the network built from
one, `timm_byobnet` timm's HaloNets (timm's layers and state-dict keys), `classifier` what
both share around their layers.
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
