"""halo_ref: a from-scratch NumPy + Numba reference implementation of HaloNet's halo attention.

Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
CVPR 2021 (arXiv 2103.12731).
"""

from ._checks import HaloRefError
from .attention import HaloAttention, halo_attention_backward, halo_attention_forward

__version__ = "0.1.0"

__all__ = [
    "HaloAttention",
    "HaloRefError",
    "halo_attention_backward",
    "halo_attention_forward",
    "__version__",
]
