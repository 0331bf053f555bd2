"""
6. Speed: why blocking is fast
==============================

Halo attention and masked global attention compute the same function (tutorial 3), but the
dense form spends ``(H W)^2`` logits to get the ``H W (b + 2h)^2`` that survive the mask. This
tutorial times one forward plus backward pass of three implementations of the same attention
core on growing maps: the dense masked oracle (:mod:`halo_ref.attention.dense`), the blocked NumPy
reference (:func:`halo_ref.attention.core.halo_attention_forward`) and the Numba kernels of
:mod:`halo_ref.attention.kernels`, both reached through :mod:`halo_ref.backend`. It plots the
measured times next to the work each one must do.

Timings here are illustrations on whatever machine runs the tutorial (in the documentation,
with tiny quick-mode sizes); the project's speed targets live in ``benchmarks/``.
"""

# %%
import os
import time

import matplotlib.pyplot as plt
import numba
import numpy as np

from halo_ref.attention.dense import dense_halo_attention_backward, dense_halo_attention_forward
from halo_ref.backend import NUMBA, NUMPY

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"

# %%
# The contenders
# --------------
# Each is a (forward, backward) pair with the signature of the functional core: projected maps
# in, attended map out. We time forward plus backward, the cost of one training step of the
# layer, as the median over a few repeats after a warm-up call (the warm-up also pays Numba's
# one-off compilation, which we time separately).
contenders = {"dense oracle": (dense_halo_attention_forward, dense_halo_attention_backward)}
contenders["NumPy blocked"] = (NUMPY.halo_attention_forward, NUMPY.halo_attention_backward)
contenders["Numba kernels"] = (NUMBA.halo_attention_forward, NUMBA.halo_attention_backward)
numba.set_num_threads(1)  # one thread each: we compare algorithms, not core counts

b, h, heads, d = 8, 3, 4, 16
win = b + 2 * h
sizes = [8, 16, 24, 32] if QUICK else [16, 32, 48, 64, 96]
dense_max = 24 if QUICK else 48  # the dense oracle's memory grows as (H W)^2: stop it early
repeats = 3 if QUICK else 5
dtype = np.float32
rng = np.random.default_rng(0)


def time_once(fwd, bwd, arrays):
    t0 = time.perf_counter()
    out, cache = fwd(*arrays, num_heads=heads, block_size=b, halo_size=h, scale=d**-0.5)
    bwd(np.ones_like(out), cache)
    return time.perf_counter() - t0


results = {name: {} for name in contenders}
for S in sizes:
    arrays = (
        rng.standard_normal((1, heads * d, S, S)).astype(dtype),
        rng.standard_normal((1, heads * 2 * d, S, S)).astype(dtype),
        (0.1 * rng.standard_normal((2 * win - 1, d))).astype(dtype),
        (0.1 * rng.standard_normal((2 * win - 1, d))).astype(dtype),
    )
    for name, (fwd, bwd) in contenders.items():
        if name == "dense oracle" and S > dense_max:
            continue
        first = time_once(fwd, bwd, arrays)  # warm-up (and compilation for Numba)
        if name == "Numba kernels" and S == sizes[0]:
            print(f"Numba first call (compilation or cache load): {first:.2f} s")
        times = [time_once(fwd, bwd, arrays) for _ in range(repeats)]
        results[name][S] = float(np.median(times))

print(f"\nmedian forward+backward time (ms), {heads} heads of {d} channels, b={b}, h={h}")
print(f"{'H=W':>5} " + " ".join(f"{n:>14}" for n in contenders))
for S in sizes:
    cells = [
        f"{1e3 * results[n][S]:14.2f}" if S in results[n] else f"{'-':>14}" for n in contenders
    ]
    print(f"{S:>5} " + " ".join(cells))
for S in sizes:
    if S in results["dense oracle"]:
        ratio = results["dense oracle"][S] / results["NumPy blocked"][S]
        print(f"H=W={S}: blocked NumPy is {ratio:.1f}x faster than dense")

# %%
# The work behind the times
# -------------------------
# The number of attention logits each form computes per head: dense ``(H W)((H + 2h)(W + 2h))``
# (every query against every padded key, most of them then masked away) against blocked
# ``H W (b + 2h)^2``. The dense count grows with the square of the number of pixels, the
# blocked one linearly, which is the slope difference in the measured times.
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
markers = {"dense oracle": "s", "NumPy blocked": "o", "Numba kernels": "^"}
for name, res in results.items():
    xs = sorted(res)
    axes[0].plot([s * s for s in xs], [1e3 * res[s] for s in xs], marker=markers[name], label=name)
axes[0].set_xscale("log")
axes[0].set_yscale("log")
axes[0].set_xlabel("pixels H x W")
axes[0].set_ylabel("forward + backward (ms, median)")
axes[0].set_title("Measured on this machine", fontsize=10)
axes[0].legend()
axes[0].grid(alpha=0.3, which="both")

grid = np.array([16, 32, 64, 128, 256])
dense_logits = grid**2 * (grid + 2 * h) ** 2
blocked_logits = grid**2 * win**2
axes[1].plot(grid**2, dense_logits, "s-", label="dense (masked global)")
axes[1].plot(grid**2, blocked_logits, "o-", label=f"blocked (b={b}, h={h})")
axes[1].set_xscale("log")
axes[1].set_yscale("log")
axes[1].set_xlabel("pixels H x W")
axes[1].set_ylabel("attention logits per head")
axes[1].set_title("Work: quadratic versus linear in the pixels", fontsize=10)
axes[1].legend()
axes[1].grid(alpha=0.3, which="both")
fig.suptitle("Same function, different cost: dense masked attention versus halo blocks")
