"""`halo-ref export`: a trained checkpoint's weights for PyTorch (.pt or .safetensors), under
the names of halo_ref's PyTorch twin, and the lines that rebuild the model there."""

from __future__ import annotations

from ..verification.export import export_checkpoint, rebuild_lines


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's weights for PyTorch (.pt or .safetensors)",
        description="Writes the model of a checkpoint (parameters and BatchNorm statistics) to "
        "a new .pt (needs PyTorch) or .safetensors file, under the names of halo_ref's PyTorch "
        "twin, and prints the lines that rebuild it in PyTorch to continue training there.",
    )
    p.add_argument("--checkpoint", required=True, help="a best.npz or checkpoint.npz")
    p.add_argument("--out", required=True, help="the new file: model.pt or model.safetensors")
    p.set_defaults(func=run)


def run(args) -> int:
    done = export_checkpoint(args.checkpoint, args.out)
    i = done.info
    print(f"wrote {done.tensors} tensors of {i['model']!r} ({i['num_classes']} classes) to "
          f"{done.path}; rebuild it in PyTorch (with timm installed) after `import torch`:")  # fmt: skip
    for line in rebuild_lines(done):
        print("    " + line)
    H, W = i["image_size"]
    scale = "" if i["pixel_max"] == 255 else f" in 0..{i['pixel_max']}"
    print(f"input: uint8 images (N, {H}, {W}, {i['in_chans']}){scale} as (N, C, H, W) floats "
          f"(x - mean) / std, mean {_short(i['mean'])}, std {_short(i['std'])}"
          + (f", zero-padded to multiples of {i['input_multiple']}"
             if H % i["input_multiple"] or W % i["input_multiple"] else ""))  # fmt: skip
    return 0


def _short(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
