"""A stand-in for the few torchvision names that `import timm` touches (tests only).

torchvision's wheel does not load against the CPU build of PyTorch used here, yet timm imports
it at import time only to define data transforms, dataset helpers, a frozen BatchNorm class and
an FX feature extractor, none of which building or running a model needs. `install()` puts
small placeholder modules into `sys.modules` under torchvision's names when the real package
cannot be imported, so that `import timm` and `timm.create_model(...)` work. Anything that
actually *uses* a placeholder (a transform, a dataset) raises, naming this stub, rather than
computing something wrong.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types

# The names timm reads at import time, by module (all others are resolved lazily, see _Stub).
MODULES = (
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.misc",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.datasets",
    "torchvision.models",
    "torchvision.models.feature_extraction",
    "torchvision.utils",
)


class InterpolationMode(enum.Enum):
    """torchvision's enum of resampling filters (timm maps its names onto these values)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _placeholder(qualname: str):
    """A class standing for torchvision's `qualname`: subclassable, but unusable."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f"{qualname} is a placeholder from tests/torchvision_stub.py (torchvision cannot "
            "load here); tests must not use torchvision's transforms or datasets"
        )

    name = qualname.rsplit(".", 1)[-1]
    return type(name, (), {"__init__": __init__, "__module__": qualname.rsplit(".", 1)[0]})


class _Stub(types.ModuleType):
    """A module that answers any attribute with a placeholder (PEP 562 style)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


def _frozen_batchnorm():
    import torch

    class FrozenBatchNorm2d(torch.nn.Module):
        """Placeholder: only `isinstance` checks of timm see it; building one is an error."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError("FrozenBatchNorm2d is a placeholder from tests/torchvision_stub.py")

    return FrozenBatchNorm2d


def install() -> bool:
    """Register the stand-in unless the real torchvision imports. Returns True if installed."""
    if "torchvision" in sys.modules:
        return isinstance(sys.modules["torchvision"], _Stub)
    try:
        importlib.import_module("torchvision")
        return False
    except Exception:  # not installed, or its compiled ops fail to load against this torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    modules = {name: _Stub(name) for name in MODULES}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
        sys.modules[name] = module
    modules["torchvision"].__version__ = "0.0.0+halo_ref_stub"
    modules["torchvision.transforms"].InterpolationMode = InterpolationMode
    modules["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = _frozen_batchnorm()
    return True


def import_timm():
    """`import timm` with the stand-in in place; returns the timm module."""
    install()
    return importlib.import_module("timm")
