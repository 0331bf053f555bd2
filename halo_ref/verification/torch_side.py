"""Load timm's `HaloAttn` and map weights between it and halo_ref (torch is optional).

halo_ref never needs PyTorch; this module is used only to compare against timm, by the tests,
the benchmarks and `halo-ref verify --against timm`. `import timm` pulls in torchvision, which
is often not installable (there is no CPU build on some platforms), yet
`timm/layers/halo_attn.py` only needs `helpers.py`, `weight_init.py` and `trace_utils.py` beside
it. So we register a stand-in package whose search path is timm's `layers/` folder (its
`__init__.py` never runs) and import `halo_attn` from there.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

_PACKAGE = "_halo_ref_isolated_timm_layers"


def load_timm_halo_attn():
    """Return timm's `halo_attn` module, loaded without importing the timm package.

    Raises ImportError with the install command when torch or timm is missing.
    """
    name = _PACKAGE + ".halo_attn"
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec("torch") is None:
        raise ImportError("torch is not installed: pip install torch==2.13.0")
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed: pip install --no-deps timm")
    layers = Path(list(spec.submodule_search_locations)[0]) / "layers"
    if not (layers / "halo_attn.py").exists():
        raise ImportError(f"this timm has no layers/halo_attn.py (looked in {layers})")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(layers)]
    sys.modules[_PACKAGE] = package
    return importlib.import_module(name)


def timm_halo_attn_from(layer):
    """Build a timm `HaloAttn` with the configuration and weights of a halo_ref `HaloAttention`.

    Only border="zeros" exists in timm. The module is float64 or float32 like the layer.
    """
    import torch

    if layer.border != "zeros":
        raise ValueError("timm's HaloAttn has no border='mask'; use border='zeros' to compare")
    module = load_timm_halo_attn().HaloAttn(
        layer.dim,
        layer.dim_out,
        stride=layer.stride,
        num_heads=layer.num_heads,
        dim_head=layer.dim_head_qk,
        block_size=layer.block_size,
        halo_size=layer.halo_size,
        qkv_bias=layer.qkv_bias,
        avg_down=layer.avg_down,
        scale_pos_embed=layer.scale_pos_embed,
    )
    module = module.to(torch.float64 if layer.dtype.itemsize == 8 else torch.float32)
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.params.items()})
    return module
