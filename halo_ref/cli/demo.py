"""`halo-ref demo`: build a halo attention layer and show that it agrees with its definitions."""

from __future__ import annotations

import time

import numpy as np

from .._checks import SEED
from ..attention.dense import dense_halo_attention_forward, halo_attention_loops
from ..attention.layer import HaloAttention
from ..verification.testing import check_layer_gradients, relative_error


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="check a halo attention layer against the dense oracle and the per-pixel definition",
        description="Builds a float64 HaloAttention layer, runs it on a random map, and prints its "
        "agreement with masked global attention and with a per-pixel loop, and a gradient check.",
    )
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    rng = np.random.default_rng(args.seed)
    layer = HaloAttention(16, 16, num_heads=4, block_size=4, halo_size=2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 16, 8, 12))
    print(f"layer: {layer}")
    print(
        f"input x: {x.shape}, blocks of {layer.block_size}x{layer.block_size}, "
        f"windows of {layer.win_size}x{layer.win_size}"
    )
    t0 = time.perf_counter()
    out = layer.forward(x)
    print(f"output: {out.shape} in {1e3 * (time.perf_counter() - t0):.1f} ms")

    q_map, kv_map = layer.project(x)
    kwargs = layer.core_kwargs()
    rel = (layer.params["pos_embed.height_rel"], layer.params["pos_embed.width_rel"])
    dense, _ = dense_halo_attention_forward(q_map, kv_map, *rel, **kwargs)
    loops = halo_attention_loops(q_map, kv_map, *rel, **kwargs)
    e_dense, e_loops = relative_error(out, dense), relative_error(out, loops)
    print(f"vs masked global attention (oracle): relative error {e_dense:.2e}")
    print(f"vs per-pixel definition (loops):     relative error {e_loops:.2e}")
    errors = check_layer_gradients(layer, x, rng=args.seed)
    worst = max(errors.values())
    print(
        f"finite-difference gradient check of dx and {len(errors) - 1} parameters: "
        f"worst relative error {worst:.2e}"
    )
    ok = e_dense < 1e-12 and e_loops < 1e-12 and worst < 1e-7
    print("all agree" if ok else "MISMATCH: please report this as a bug")
    return 0 if ok else 1
