"""Adapters: how `halo_ref.verification.verify` reaches an implementation, and how the CLI
names one (`resolve_adapter`, for `halo-ref verify --against`).

`halo_ref_adapter(backend)` is halo_ref itself on a backend (to check a new one); timm's
`HaloAttn`, halo_ref's from-scratch PyTorch attention (with its planted bugs), and the halo
attentions others wrote (lucidrains' `halonet-pytorch`, kecam, FlexAttention) are the adapters
of `halo_ref.verification.torch_side`, loaded only when asked for (PyTorch is optional).

Each adapter carries the `Semantics` of its implementation (`halo_ref.verification.semantics`):
a vector outside them is "not applicable", with the reason, never a failure.
"""

from __future__ import annotations

import importlib
import importlib.util

from .. import backend as backends
from .._checks import HaloRefError
from ..attention.layer import HaloAttention
from ..models import halonet
from ..nn.functional import cross_entropy_backward, cross_entropy_forward
from .semantics import EVERYTHING
from .vectors import pad_then_crop
from .verify import Adapter

# The keyword arguments of `HaloAttention` that a layer vector's configuration holds.
LAYER_KEYS = (
    "num_heads",
    "dim_head",
    "block_size",
    "halo_size",
    "stride",
    "avg_down",
    "qkv_bias",
    "scale_pos_embed",
    "border",
)


# `halo-ref verify --against NAME` for the halo attentions others wrote (torch_side builds them)
OUTSIDE_NAMES = ("lucidrains", "kecam", "flex", "flex:backward")


# -- halo_ref itself ------------------------------------------------------------------------------
def halo_ref_adapter(backend="numba") -> Adapter:
    """halo_ref itself, every layer on `backend` ("numba", "numpy" or a `Backend`)."""
    backend = backends.resolve(backend)

    def run(config, x, weights, dout):
        kw = {k: config[k] for k in LAYER_KEYS}
        layer = HaloAttention(
            config["dim"], config["dim_out"], **kw, dtype=x.dtype, backend=backend
        )
        layer.load_state_dict(weights)
        padded = config["derived"].get("padded_input_shape", x.shape)[2:]
        out, dx = pad_then_crop(layer.forward, layer.backward, x, dout, padded)
        return out, dx, layer.grads

    def run_model(config, x, labels, weights):
        model = halonet(
            config["model"],
            num_classes=config["num_classes"],
            in_chans=config["in_chans"],
            dtype=x.dtype,
            rng=0,
            backend=backend,
        )
        model.load_state_dict(weights)
        logits = model.forward(x)
        loss, cache = cross_entropy_forward(logits, labels)
        dx = model.backward(cross_entropy_backward(cache))
        return logits, loss, dx, model.grads

    return Adapter(
        f"halo_ref (backend {backend.name!r})",
        run,
        run_model=run_model,
        pad_to_blocks=True,
        semantics=EVERYTHING,
    )


def kecam_param_counts(names) -> dict[str, int] | None:
    """kecam's parameter counts of the paper's HaloNets `names` ("h0".."h7"), or None when
    PyTorch or kecam is not installed (for `halo-ref params`, which then leaves them out)."""
    if any(importlib.util.find_spec(m) is None for m in ("torch", "keras_cv_attention_models")):
        return None
    try:
        return _torch_side().kecam_param_counts(names)
    except HaloRefError:  # kecam's h5py missing, or kecam imported on another backend
        return None


def _torch_side():
    """`halo_ref.verification.torch_side`, imported when an adapter needs PyTorch (optional)."""
    try:
        from . import torch_side
    except ImportError as exc:
        raise HaloRefError(
            f"this adapter needs PyTorch ({exc}): pip install torch==2.13.0 (CPU is enough)"
        ) from None
    return torch_side


def resolve_adapter(spec: str) -> Adapter:
    """An adapter from a command-line name: "timm", "torch", "torch:<bug>", one of
    `OUTSIDE_NAMES` ("lucidrains", "kecam", "flex", "flex:backward"), "halo_ref:<backend>" or
    "module:name".

    "module:name" imports `module`; `name` is either an `Adapter` or a function
    run(config, x, weights, dout) -> (out, dx, grads) (then every configuration is tried).
    """
    if spec == "timm":
        return _torch_side().timm_adapter()
    if spec == "torch" or spec.startswith("torch:"):
        bug = spec.split(":", 1)[1] if ":" in spec else None
        return _torch_side().torch_adapter(bug)
    if spec in OUTSIDE_NAMES:
        return _torch_side().outside_adapter(spec)
    if spec.startswith("halo_ref:"):
        return halo_ref_adapter(spec.split(":", 1)[1])
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HaloRefError(
            f"--against {spec!r} is not known; use timm, torch, torch:<bug>, "
            f"{', '.join(OUTSIDE_NAMES)}, halo_ref:<backend> or module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HaloRefError(f"--against {spec!r}: cannot import {module_name!r} ({exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise HaloRefError(f"--against {spec!r}: {module_name!r} has no attribute {attr!r}")
    if isinstance(obj, Adapter):
        return obj
    if isinstance(obj, type) or not callable(obj):
        raise HaloRefError(f"--against {spec!r}: {attr!r} is not a function or an Adapter")
    return Adapter(spec, obj)
