"""Halo attention, the data path."""

from .core import (
    BACKENDS,
    BORDERS,
    HaloAttention,
    halo_attention_backward,
    halo_attention_forward,
    make_divisible,
)

__all__ = [
    "BACKENDS",
    "BORDERS",
    "HaloAttention",
    "halo_attention_backward",
    "halo_attention_forward",
    "make_divisible",
]
