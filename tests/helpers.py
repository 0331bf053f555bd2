"""Helpers shared by several test modules: a stand-in model for the training loop, small
HaloNet configurations, CIFAR-10 archives in the official format, and checkpoints and image
files for predict and export; a copy of lucidrains' halo attention with a planted bug."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import os
import struct
import tarfile

import numpy as np

from halo_ref.models import CONFIGS, halonet
from halo_ref.nn.module import Module
from halo_ref.training.checkpoint import save_checkpoint
from halo_ref.training.data import cifar10


# -- a stand-in model: what the training loop's tests train ------------------------------------
class StandIn(Module):
    """Flatten -> linear -> tanh -> linear: logits (B, K) from images (B, C, H, W)."""

    def __init__(self, n_in, num_classes, *, hidden=16, dtype=np.float32, rng=0, multiple=1):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.add_param(
            "fc1.weight", (rng.standard_normal((hidden, n_in)) / n_in**0.5).astype(dtype)
        )
        self.add_param("fc1.bias", np.zeros(hidden, dtype))
        self.add_param("fc2.weight", (rng.standard_normal((num_classes, hidden)) / 4).astype(dtype))
        self.add_param("fc2.bias", np.zeros(num_classes, dtype))
        self.input_multiple = multiple

    def forward(self, x):
        p = self._params
        self._shape = x.shape
        self._x = x.reshape(len(x), -1)  # B, C*H*W
        self._h = np.tanh(self._x @ p["fc1.weight"].T + p["fc1.bias"])  # B, hidden
        return self._h @ p["fc2.weight"].T + p["fc2.bias"]

    def backward(self, dout):
        p, g = self._params, self._grads
        g["fc2.weight"] = dout.T @ self._h
        g["fc2.bias"] = dout.sum(axis=0)
        dpre = (dout @ p["fc2.weight"]) * (1 - self._h**2)  # tanh' = 1 - tanh^2
        g["fc1.weight"] = dpre.T @ self._x
        g["fc1.bias"] = dpre.sum(axis=0)
        return (dpre @ p["fc1.weight"]).reshape(self._shape)


def standin_factory(name, *, num_classes, in_chans, dtype, rng, multiple=1, image=8):
    return StandIn(in_chans * (-(-image // multiple) * multiple) ** 2, num_classes, dtype=dtype,
                   rng=rng, multiple=multiple)  # fmt: skip


# -- small HaloNets -------------------------------------------------------------------------------
def perturb(model, rng, scale=0.2):
    """Move every parameter off its initial value: BN's weight 1 / bias 0 and the zeroed last
    BN of each block would make some gradients vanish and the checks weaker."""
    for p in model.params.values():
        p[...] = p + scale * rng.standard_normal(p.shape)


def reduced_config(name="h1", depths=(1, 1, 2, 1), image=40, pool=True):
    """A small member of the H family: the paper's config with 1/8 of the widths, fewer
    blocks and small images.

    image=40 gives 10x10 maps at stage 1 with b = 8 (20x20 with pool=False), so every
    attention pads to whole blocks (the H7 code path) and the strided blocks see odd sizes.
    """
    cfg = CONFIGS[name]
    stages = tuple(
        dataclasses.replace(s, depth=d, mid=s.mid // 8, out=max(8, s.out // 8), num_heads=2)
        for s, d in zip(cfg.stages, depths, strict=True)
    )
    stem = ((8, 7, 2),)
    return dataclasses.replace(cfg, stages=stages, stem=stem, image_size=image, stem_pool=pool)


# -- CIFAR-10 in its official format: Python 2 pickles, written opcode by opcode ----------------
# (Python 3's pickler cannot produce Python 2's byte strings)
def py2_pickle(obj) -> bytes:
    """Pickle dicts, lists, ints, bytes and uint8 arrays the way Python 2's cPickle did."""
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2

    def s(b: bytes):  # SHORT_BINSTRING / BINSTRING: Python 2 str, read back as bytes
        out.write(
            b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b
        )

    def i(v: int):
        out.write(b"J" + struct.pack("<i", v))  # BININT

    def dump(o):
        if isinstance(o, dict):
            out.write(b"}(")  # EMPTY_DICT, MARK
            for k, v in o.items():
                dump(k)
                dump(v)
            out.write(b"u")  # SETITEMS
        elif isinstance(o, list):
            out.write(b"](")  # EMPTY_LIST, MARK
            for v in o:
                dump(v)
            out.write(b"e")  # APPENDS
        elif isinstance(o, bytes):
            s(o)
        elif isinstance(o, int):
            i(o)
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.write(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            i(0)
            out.write(b"\x85")  # TUPLE1
            s(b"b")
            out.write(b"\x87R(")  # TUPLE3, REDUCE, MARK (the state tuple)
            i(1)
            for n in o.shape:
                i(n)
            out.write({1: b"\x85", 2: b"\x86"}[o.ndim])
            out.write(b"cnumpy\ndtype\n")
            s(b"u1")
            i(0)
            i(1)
            out.write(b"\x87R(")  # dtype('u1', 0, 1), then its state
            i(3)
            s(b"|")
            out.write(b"NNN")
            i(-1)
            i(-1)
            i(0)
            out.write(b"tb\x89")  # TUPLE, BUILD; NEWFALSE (C order)
            s(o.tobytes())
            out.write(b"tb")
        else:
            raise TypeError(type(o))

    dump(obj)
    out.write(b".")
    return out.getvalue()


def cifar_batch(n, seed, label):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{k}.png".encode() for k in range(n)],
    }


def make_cifar_archive(folder, n_per_batch=4, tamper=None) -> tuple[str, str, dict]:
    """A tiny cifar-10-python.tar.gz in `folder`; returns (path, md5, batches)."""
    batches = {
        f"data_batch_{k}": cifar_batch(n_per_batch, k, f"training batch {k} of 5".encode())
        for k in range(1, 6)
    }
    batches["test_batch"] = cifar_batch(n_per_batch, 9, b"testing batch 1 of 1")
    meta = {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [c.encode() for c in cifar10.CLASS_NAMES],
        b"num_vis": 3072,
    }
    files = {name: py2_pickle(b) for name, b in batches.items()}
    files["batches.meta"] = py2_pickle(meta)
    files["readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=...'>\n"
    if tamper:
        files.update(tamper)
    path = os.path.join(folder, cifar10.ARCHIVE)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.md5(open(path, "rb").read()).hexdigest(), batches


# -- checkpoints and images for predict and export ----------------------------------------------
def fake_checkpoint(
    path, *, dataset, model, shape, class_names=(), pixel_max=255, seed=0, dtype="float64"
):
    """A checkpoint as `halo-ref train` writes it, holding a freshly initialised model.

    shape: (H, W, C) of the training images. The mean and std differ per channel so that a
    channel mix-up shows in the logits."""
    H, W, C = shape
    num_classes = max(len(class_names), 4)
    net = halonet(model, num_classes=num_classes, in_chans=C, dtype=np.dtype(dtype), rng=seed)
    meta = {
        "config": {"model": model, "dataset": dataset, "dtype": dtype},
        "num_classes": num_classes, "in_chans": C, "dataset_shape": [100, H, W, C],
        "mean": [0.3 * pixel_max + 5 * c for c in range(C)],
        "std": [0.2 * pixel_max + 3 * c for c in range(C)],
        "input_multiple": net.input_multiple, "class_names": list(class_names),
        "pixel_max": pixel_max,
    }  # fmt: skip
    save_checkpoint(str(path), model_state=net.state_dict(), optim_state={}, meta=meta)
    return str(path)


def write_png(path, pixels):
    """pixels: uint8 (H, W) or (H, W, 3|4)."""
    from PIL import Image  # Pillow: a dependency, imported where images are written

    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return str(path)


# -- a planted bug in an outside implementation ----------------------------------------------
def lucidrains_with_bool_mask():
    """A copy of lucidrains' HaloAttention with the mask of its issue #4 (before PR #6):
    `mask.bool()`, True inside the image, is the mask that masked_fill_ fills."""
    import halonet_pytorch.halonet_pytorch as lucid

    source = inspect.getsource(lucid.HaloAttention)
    fixed = "mask = ~mask.bool()"
    assert source.count(fixed) == 1, "halonet-pytorch changed; update the planted bug"
    namespace = dict(vars(lucid))
    exec(compile(source.replace(fixed, "mask = mask.bool()"), "<planted>", "exec"), namespace)
    return namespace["HaloAttention"]
