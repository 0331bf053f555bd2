"""Bit identity of halo_ref's results across a change that must not change them (a refactor).

Computes, from fixed seeds, float32 and float64 outputs and every gradient of `HaloAttention`
for every option (stride 1 and 2 by subsampled queries and by average pooling, both borders,
scale_pos_embed, qkv_bias, an odd block, a halo wider than the block, qk_ratio != 1, dim_head
set) on each backend (numpy; numba with its two work families, blocks and strips), one
training step of the `tiny` HaloNet (gradients, parameters and buffers after one AdamW step;
Numba layer kernels and the NumPy formulas), and a one-epoch `halo-ref train` run on the
bundled digits (checkpoint arrays and metrics). Each array is reduced to the SHA-256 of its
bytes (with dtype and shape), so the reference is a small JSON file.

    python tests/bit_identity.py --record tests/fixtures/bit_identity.json   # before a change
    python tests/bit_identity.py --check tests/fixtures/bit_identity.json    # after it
    ... --arrays DIR      also write (--record) or compare with (--check) the full arrays

Kernel cache: this script always runs its work in a child process whose NUMBA_CACHE_DIR is a
new empty folder, so the reference and every check use kernels compiled from the source as it
is, whatever the state of the user's cache (compiled and loaded kernels give the same bits since
issue 13, tests/test_cache_state.py; a fresh compile also rules out a stale cache). That costs a
full compile (one to four minutes on two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

import numpy as np

_CHILD = "_HALO_REF_BIT_IDENTITY_CHILD"

# name -> (dim, dim_out, layer keyword arguments, input (B, H, W)); every option at least once
LAYER_CASES = {
    "basic": (16, 16, dict(num_heads=2, block_size=4, halo_size=1), (2, 8, 12)),
    "stride2": (16, 16, dict(num_heads=2, block_size=4, halo_size=1, stride=2), (2, 8, 12)),
    "avg_down": (
        16, 16, dict(num_heads=2, block_size=4, halo_size=2, stride=2, avg_down=True), (2, 8, 8)
    ),
    "odd_block": (8, 8, dict(num_heads=2, block_size=3, halo_size=1, stride=2), (2, 6, 12)),
    "mask": (16, 16, dict(num_heads=2, block_size=4, halo_size=2, border="mask"), (2, 8, 12)),
    "scale_pos_bias": (
        12, 16, dict(num_heads=4, block_size=4, halo_size=1, scale_pos_embed=True, qkv_bias=True),
        (2, 8, 8),
    ),
    "wide_halo": (8, 8, dict(num_heads=1, block_size=2, halo_size=3), (1, 4, 6)),
    "qk_ratio": (16, 32, dict(num_heads=4, block_size=4, halo_size=1, qk_ratio=0.5), (2, 8, 8)),
    "dim_head": (10, 12, dict(num_heads=3, dim_head=5, block_size=2, halo_size=2), (1, 6, 4)),
    "everything": (
        16, 24,
        dict(num_heads=2, dim_head=6, block_size=4, halo_size=2, stride=2, qkv_bias=True,
             scale_pos_embed=True, border="mask"),
        (2, 8, 12),
    ),
    "tiny_stage1": (32, 32, dict(num_heads=2, block_size=8, halo_size=2), (2, 16, 16)),
    "tiny_stage2": (32, 64, dict(num_heads=4, block_size=4, halo_size=2, stride=2), (2, 16, 16)),
}  # fmt: skip
BACKENDS = ("numpy", "numba-blocks", "numba-strips")
DTYPES = (np.float32, np.float64)


# -- the only part that depends on halo_ref's layout ---------------------------------------------
# (recorded with the layout before issue 15, through attention_numba.FAMILY and
# layers.numpy_kernels(); now the same choices through halo_ref.backend)
def _layer(dim, dim_out, kwargs, dtype, backend):
    """A seeded HaloAttention on `backend` ("numpy", "numba-blocks" or "numba-strips")."""
    from halo_ref import HaloAttention
    from halo_ref.backend import NUMPY, Backend

    name, _, family = backend.partition("-")
    chosen = NUMPY if name == "numpy" else Backend("numba", family=family)
    return HaloAttention(dim, dim_out, **kwargs, dtype=dtype, rng=7, backend=chosen)


def _numpy_formulas():
    """A context in which every layer runs its NumPy formula."""
    from halo_ref.backend import use

    return use("numpy")


def _loss():
    from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward

    return cross_entropy_forward, cross_entropy_backward


def _train_digits(out):
    from halo_ref.training.checkpoint import load_checkpoint
    from halo_ref.training.config import TrainConfig
    from halo_ref.training.loop import train

    train(TrainConfig(dataset="digits", epochs=1, out=out), log=lambda *a: None, progress=False)
    return load_checkpoint(os.path.join(out, "checkpoint.npz"))


# -- the computations ----------------------------------------------------------------------------
def layer_results():
    for name, (dim, dim_out, kwargs, (B, H, W)) in LAYER_CASES.items():
        for dtype in DTYPES:
            for backend in BACKENDS:
                rng = np.random.default_rng([3, zlib.crc32(name.encode())])
                x = rng.standard_normal((B, dim, H, W)).astype(dtype)
                layer = _layer(dim, dim_out, kwargs, dtype, backend)
                out = layer.forward(x)
                dout = rng.standard_normal(out.shape).astype(dtype)
                dx = layer.backward(dout)
                prefix = f"layer/{name}/{np.dtype(dtype).name}/{backend}/"
                yield prefix + "out", out
                yield prefix + "dx", dx
                for key, g in sorted(layer.grads.items()):
                    yield prefix + "grad/" + key, g


def training_step_results():
    from halo_ref.models import halonet
    from halo_ref.training.optim import AdamW, clip_grad_norm

    fwd, bwd = _loss()
    for dtype in DTYPES:
        for kind in ("numba", "numpy"):
            model = halonet(
                "tiny", num_classes=10, in_chans=3, dtype=dtype, rng=0,
                backend=None if kind == "numba" else "numpy",
            )  # fmt: skip
            rng = np.random.default_rng(11)
            x = rng.standard_normal((8, 3, 32, 32)).astype(dtype)
            y = rng.integers(0, 10, 8)
            optimizer = AdamW(model.params, weight_decay=0.05)
            ctx = _numpy_formulas() if kind == "numpy" else contextlib.nullcontext()
            with ctx:
                logits = model.forward(x)
                loss, cache = fwd(logits, y, label_smoothing=0.1)
                model.zero_grad()
                model.backward(bwd(cache))
            grads = model.grads
            prefix = f"step/tiny/{np.dtype(dtype).name}/{kind}/"
            yield prefix + "logits", logits
            yield prefix + "loss", np.asarray(loss, np.float64)
            for key, g in sorted(grads.items()):
                yield prefix + "grad/" + key, g.copy()
            norm = clip_grad_norm(grads, 5.0)
            yield prefix + "grad_norm", np.asarray(norm, np.float64)
            optimizer.step(grads, 2e-3)
            for key, value in sorted(model.state_dict().items()):
                yield prefix + "after/" + key, value


def training_run_results():
    out = tempfile.mkdtemp(prefix="bit_identity_run_")
    try:
        model_state, optim_state, meta, _ = _train_digits(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    for key, value in sorted(model_state.items()):
        yield "run/digits/model/" + key, value
    for key, value in sorted(optim_state.items()):
        yield "run/digits/optim/" + key, value
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    yield "run/digits/metrics", np.array([[h[k] for k in keys] for h in meta["history"]])


def all_results():
    yield from layer_results()
    yield from training_step_results()
    yield from training_run_results()


def digest(array) -> str:
    a = np.ascontiguousarray(array)
    head = f"{a.dtype.str}{a.shape}".encode()
    return hashlib.sha256(head + a.tobytes()).hexdigest()


# -- record / check ------------------------------------------------------------------------------
def _work(args) -> int:
    hashes, arrays = {}, {}
    for name, value in all_results():
        hashes[name] = digest(value)
        arrays[name] = np.array(value)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(hashes, f, indent=1, sort_keys=True)
            f.write("\n")
        if args.arrays:
            os.makedirs(args.arrays, exist_ok=True)
            np.savez(os.path.join(args.arrays, "bit_identity.npz"), **arrays)
        print(f"recorded {len(hashes)} arrays in {args.record}")
        return 0
    with open(args.check) as f:
        expected = json.load(f)
    saved = None
    if args.arrays:
        saved = np.load(os.path.join(args.arrays, "bit_identity.npz"), allow_pickle=False)
    missing = sorted(set(expected) - set(hashes))
    extra = sorted(set(hashes) - set(expected))
    differ = [k for k in sorted(expected) if k in hashes and hashes[k] != expected[k]]
    for key in differ:
        line = f"DIFFERS {key}"
        if saved is not None and key in saved.files:
            ref = saved[key].astype(np.float64)
            got = arrays[key].astype(np.float64)
            if ref.shape == got.shape:
                scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-300)
                line += f" (max |diff| / max |ref| = {np.max(np.abs(got - ref)) / scale:.2e})"
            else:
                line += f" (shape {got.shape}, reference {ref.shape})"
        print(line)
    for key in missing:
        print(f"MISSING {key}")
    for key in extra:
        print(f"EXTRA {key}")
    same = len(expected) - len(differ) - len(missing)
    print(f"{same} of {len(expected)} arrays bit-identical to {args.check}")
    return 0 if not (differ or missing or extra) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", metavar="JSON", help="write the hashes to JSON")
    mode.add_argument("--check", metavar="JSON", help="compare with the hashes in JSON")
    parser.add_argument("--arrays", metavar="DIR", help="full arrays: write or compare")
    args = parser.parse_args(argv)
    if os.environ.get(_CHILD):
        return _work(args)
    cache = tempfile.mkdtemp(prefix="halo_ref_numba_cache_")
    env = {**os.environ, _CHILD: "1", "NUMBA_CACHE_DIR": cache}
    try:
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.run(
            [sys.executable, os.path.abspath(__file__), *argv], env=env
        ).returncode
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
