"""A trained checkpoint's weights for PyTorch: what `halo-ref export` writes.

The file holds the model's state dict (parameters and BatchNorm buffers) under halo_ref's own
names, which are the names of its PyTorch twin (`halo_ref.verification.torch_side.build_twin`:
torch.nn layers and timm's HaloAttn, child for child), so the twin loads it with
`load_state_dict` strictly. Two formats, chosen by the file's suffix:

- `.safetensors`: written with the safetensors package alone (no PyTorch needed here); its
  header's metadata also keeps, as JSON under "halo_ref", what rebuilding and feeding the model
  takes: the model name, classes and their names, channels, image size, the input statistics;
- `.pt`: `torch.save` of the state dict (PyTorch needed here); load it with
  `torch.load(path, weights_only=True)`.

The optimiser's state is not exported: a run continued in PyTorch starts its own optimiser.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from .._atomic import atomic_write
from .._checks import HaloRefError, arg
from ..training.checkpoint import load_checkpoint

SUFFIXES = (".pt", ".safetensors")


class Exported(NamedTuple):
    """What `export_checkpoint` wrote: the file, its tensor count and the model's description."""

    path: str
    tensors: int
    info: dict


def check_out(out: str) -> None:
    """Refuse an export path before any work: a known suffix, a new file, an existing folder."""
    if not out.endswith(SUFFIXES):
        raise HaloRefError(
            f"{arg('out', out)} must end in .pt (PyTorch's torch.save) or .safetensors"
        )
    if os.path.exists(out):
        raise HaloRefError(f"{arg('out', out)} already exists; choose a new file name")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise HaloRefError(f"{arg('out', out)}: folder {folder} does not exist; create it first")


def model_info(meta: dict) -> dict:
    """The description of a checkpoint's model that rebuilding and feeding it needs."""
    cfg = meta["config"]
    _, H, W, C = meta["dataset_shape"]
    names = meta.get("class_names") or [str(i) for i in range(meta["num_classes"])]
    return {
        "model": cfg["model"], "num_classes": meta["num_classes"], "in_chans": C,
        "class_names": list(names), "image_size": [H, W], "dtype": cfg["dtype"],
        "mean": meta["mean"], "std": meta["std"], "input_multiple": meta["input_multiple"],
        "pixel_max": meta.get("pixel_max", 255), "dataset": cfg["dataset"],
    }  # fmt: skip


def export_checkpoint(checkpoint: str, out: str) -> Exported:
    """Write the weights of checkpoint `checkpoint` to the new file `out` (.pt or .safetensors),
    atomically; returns what was written."""
    check_out(out)
    state, _, meta, _ = load_checkpoint(checkpoint)
    info = model_info(meta)
    # np.require keeps 0-d arrays 0-d (BatchNorm's num_batches_tracked), ascontiguousarray not
    state = {k: np.require(v, requirements="C") for k, v in state.items()}
    if out.endswith(".safetensors"):
        try:
            from safetensors.numpy import save
        except ImportError:
            raise HaloRefError(
                f"{arg('out', out)} needs the safetensors package: pip install safetensors "
                "(or export to .pt with PyTorch installed)"
            ) from None
        data = save(state, metadata={"halo_ref": json.dumps(info)})
        atomic_write(out, lambda f: f.write(data))
    else:
        try:
            from .torch_side import save_state
        except ImportError:
            raise HaloRefError(
                f"{arg('out', out)} needs PyTorch: pip install torch==2.13.0 (or export to "
                ".safetensors, which does not)"
            ) from None
        atomic_write(out, lambda f: save_state(state, f))
    return Exported(out, len(state), info)


def rebuild_lines(exported: Exported) -> list[str]:
    """The Python lines that rebuild the exported model in PyTorch (after `import torch`)."""
    i, path = exported.info, exported.path
    # a float64 run's weights would be rounded by the twin's default float32
    dtype = ", dtype=torch.float64" if i["dtype"] == "float64" else ""
    if path.endswith(".safetensors"):
        first, load = ["from safetensors.torch import load_file"], f"load_file({path!r})"
    else:
        first, load = [], f"torch.load({path!r}, weights_only=True)"
    return [
        *first,
        "from halo_ref.verification.torch_side import build_twin",
        f"net = build_twin({i['model']!r}, num_classes={i['num_classes']}, "
        f"in_chans={i['in_chans']}{dtype})",
        f"net.load_state_dict({load})",
    ]
