"""halo_ref: a from-scratch NumPy + Numba reference implementation of HaloNet's halo attention.

Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
CVPR 2021 (arXiv 2103.12731). docs/architecture.md maps the package.
"""

from . import _runtime  # noqa: F401  (first: sets up Numba before any kernel is defined)
from ._checks import HaloRefError
from .attention.core import halo_attention_backward, halo_attention_forward
from .attention.layer import HaloAttention

__version__ = "0.1.0"

__all__ = [
    "HaloAttention",
    "HaloRefError",
    "halo_attention_backward",
    "halo_attention_forward",
    "__version__",
]
