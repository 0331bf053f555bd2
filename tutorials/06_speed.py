"""
6. Speed: why blocking is fast
==============================

Halo attention and masked global attention compute the same function (tutorial 3), but the
dense form spends ``(H W)^2`` logits to get the ``H W (b + 2h)^2`` that survive the mask; and
per-pixel local attention (tutorial 1) computes fewer logits than halo attention but gathers a
window for every pixel. This tutorial times one forward plus backward pass of four
implementations on growing maps: per-pixel local attention (written below in NumPy), the dense
masked oracle (:mod:`halo_ref.attention.dense`), the blocked NumPy reference
(:func:`halo_ref.attention.core.halo_attention_forward`) and the Numba kernels of
:mod:`halo_ref.attention.kernels`, both reached through :mod:`halo_ref.backend`. It plots the
measured times next to the work each one must do.

Timings here are illustrations on whatever machine runs the tutorial (in the documentation,
with small quick-mode sizes, on a machine that may be busy); the project's speed measurements
live in ``benchmarks/``.

*Prerequisites:* :doc:`01_blocks_and_halos` (the cost table) and
:doc:`03_masked_global_attention` (the dense oracle).
"""

# %%
import os
import time

import matplotlib.pyplot as plt
import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from halo_ref._blas import one_blas_thread
from halo_ref.attention.dense import dense_halo_attention_backward, dense_halo_attention_forward
from halo_ref.backend import NUMBA, NUMPY
from halo_ref.nn.functional import softmax_backward, softmax_forward
from halo_ref.viz import MARKERS, PALETTE, show_figures, use_figure_style

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"
use_figure_style()

# %%
# Per-pixel local attention, the baseline
# ---------------------------------------
# Every query attends to the ``k x k`` keys centred on it, ``k = 2h + 1`` (the same guaranteed
# context as a halo window, tutorial 1), reading zeros outside the map. The forward copies each
# pixel's window out of the padded key/value map, ``k^2`` copies of every key; the backward
# adds each copy's gradient back (a scatter-add, as for halo windows). To keep it short it has
# no relative-position term; the other three contenders compute theirs, so the baseline is, if
# anything, favoured.


def per_pixel_forward(q_map, kv_map, *, num_heads, halo_size, scale):
    """q_map: (1, heads*d, H, W), kv_map: (1, heads*2d, H, W) -> (1, heads*d, H, W)."""
    _, C, H, W = q_map.shape
    d, k, r = C // num_heads, 2 * halo_size + 1, halo_size
    padded = np.pad(kv_map[0], ((0, 0), (r, r), (r, r)))  # 2C, H+2r, W+2r
    win = sliding_window_view(padded, (k, k), axis=(1, 2))  # 2C, H, W, k, k (a view, no copy)
    win = win.reshape(num_heads, 2 * d, H * W, k * k).transpose(0, 2, 3, 1)  # heads, HW, k*k, 2d
    keys, values = win[..., :d].copy(), win[..., d:].copy()  # the k^2 copies of every key
    q = q_map[0].reshape(num_heads, d, H * W).transpose(0, 2, 1)  # heads, HW, d
    logits = scale * np.matmul(keys, q[..., None])[..., 0]  # heads, HW, k*k
    attn, _ = softmax_forward(logits)
    out = np.matmul(attn[:, :, None, :], values)[:, :, 0, :]  # heads, HW, d
    out_map = out.transpose(0, 2, 1).reshape(1, C, H, W)
    return out_map, (q, keys, values, attn, scale, num_heads, halo_size, (H, W))


def per_pixel_backward(dout, cache):
    """Gradients of the query and key/value maps, shapes as their forward inputs."""
    q, keys, values, attn, scale, num_heads, r, (H, W) = cache
    heads, HW, d = q.shape
    k = 2 * r + 1
    do = dout[0].reshape(heads, d, HW).transpose(0, 2, 1)  # heads, HW, d
    dattn = np.matmul(values, do[..., None])[..., 0]  # heads, HW, k*k
    dvalues = attn[..., None] * do[:, :, None, :]  # heads, HW, k*k, d
    dlogits = softmax_backward(dattn, attn)
    dq = scale * np.matmul(dlogits[:, :, None, :], keys)[:, :, 0, :]  # heads, HW, d
    dkeys = scale * dlogits[..., None] * q[:, :, None, :]  # heads, HW, k*k, d
    dwin = np.concatenate([dkeys, dvalues], axis=-1)  # heads, HW, k*k, 2d
    dwin = dwin.transpose(0, 3, 1, 2).reshape(heads * 2 * d, H, W, k, k)
    dpadded = np.zeros((heads * 2 * d, H + 2 * r, W + 2 * r), dwin.dtype)
    for dy in range(k):  # scatter-add: each window offset shifts the whole map's gradient
        for dx in range(k):
            dpadded[:, dy : dy + H, dx : dx + W] += dwin[..., dy, dx]
    dq_map = dq.transpose(0, 2, 1).reshape(1, heads * d, H, W)
    return dq_map, dpadded[None, :, r : r + H, r : r + W]


# %%
# The contenders
# --------------
# Each is a (forward, backward) pair taking projected maps and returning the attended map. We
# time forward plus backward, the cost of one training step of the layer, as the best of a few
# repeats after a warm-up call (the warm-up also pays Numba's one-off compilation, which we
# time separately; the best, not the median, because other programs on the machine only ever
# slow a run down). Everything runs on one thread: Numba's kernels with one thread, and the
# BLAS behind NumPy's matrix products pinned to one thread too
# (:func:`halo_ref._blas.one_blas_thread`), so we compare algorithms, not core counts.
b, h, heads, d = 8, 3, 4, 16
win = b + 2 * h
kw = dict(num_heads=heads, block_size=b, halo_size=h, scale=d**-0.5)


def per_pixel_pair():
    fwd = lambda q, kv, rh, rw, **kw: per_pixel_forward(  # noqa: E731
        q, kv, num_heads=kw["num_heads"], halo_size=kw["halo_size"], scale=kw["scale"]
    )
    return fwd, per_pixel_backward


contenders = {
    "per-pixel 7x7": per_pixel_pair(),
    "dense oracle": (dense_halo_attention_forward, dense_halo_attention_backward),
    "NumPy blocked": (NUMPY.halo_attention_forward, NUMPY.halo_attention_backward),
    "Numba kernels": (NUMBA.halo_attention_forward, NUMBA.halo_attention_backward),
}
numba.set_num_threads(1)
sizes = [8, 16, 24, 32, 48] if QUICK else [16, 32, 48, 64, 96]
dense_max = 32 if QUICK else 48  # the dense oracle's memory grows as (H W)^2: stop it early
repeats = 3 if QUICK else 5
dtype = np.float32
rng = np.random.default_rng(0)


def time_once(fwd, bwd, arrays):
    t0 = time.perf_counter()
    out, cache = fwd(*arrays, **kw)
    bwd(np.ones_like(out), cache)
    return time.perf_counter() - t0


# the per-pixel baseline against a plain loop over its definition, on a small map: same terms
# summed in another order, float64 rounding only
small = [rng.standard_normal(shape) for shape in ((1, 2 * 3, 5, 6), (1, 2 * 6, 5, 6))]
out_pp, _ = per_pixel_forward(*small, num_heads=2, halo_size=1, scale=0.5)
qs, kvs = small[0][0].reshape(2, 3, 5, 6), np.pad(small[1][0], ((0, 0), (1, 1), (1, 1)))
for n, y, x_ in [(0, 0, 0), (1, 4, 5), (1, 2, 3)]:
    kk = kvs.reshape(2, 6, 7, 8)[n, :3, y : y + 3, x_ : x_ + 3].reshape(3, 9)
    vv = kvs.reshape(2, 6, 7, 8)[n, 3:, y : y + 3, x_ : x_ + 3].reshape(3, 9)
    a = np.exp(0.5 * qs[n, :, y, x_] @ kk)
    expected = vv @ (a / a.sum())
    assert np.allclose(out_pp[0].reshape(2, 3, 5, 6)[n, :, y, x_], expected, rtol=1e-12, atol=0)

results = {name: {} for name in contenders}
with one_blas_thread():
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
            results[name][S] = min(time_once(fwd, bwd, arrays) for _ in range(repeats))

print(
    f"\nbest forward+backward time (ms) of {repeats}, {heads} heads of {d} channels, b={b}, h={h}"
)
print(f"{'H=W':>5} " + " ".join(f"{n:>14}" for n in contenders))
for S in sizes:
    cells = [
        f"{1e3 * results[n][S]:14.2f}" if S in results[n] else f"{'-':>14}" for n in contenders
    ]
    print(f"{S:>5} " + " ".join(cells))
print(
    "\nthe dense oracle's time over the blocked NumPy's (it grows with the map, up to timing noise):"
)
for S in sizes:
    if S in results["dense oracle"]:
        print(f"  H=W={S}: {results['dense oracle'][S] / results['NumPy blocked'][S]:.1f}x")

# %%
# The work behind the times
# -------------------------
# The number of attention logits each form computes per head: dense ``(H W)((H + 2h)(W + 2h))``
# (every query against every padded key, most of them then masked away), blocked
# ``H W (b + 2h)^2`` and per-pixel ``H W k^2``. The dense count grows with the square of the
# number of pixels, the other two linearly.
fig, axes = plt.subplots(1, 2, figsize=(7, 3.8), layout="constrained")
for i, (name, res) in enumerate(results.items()):
    xs = sorted(res)
    axes[0].plot([s * s for s in xs], [1e3 * res[s] for s in xs], marker=MARKERS[i],
                 color=PALETTE[i], label=name)  # fmt: skip
axes[0].set_xscale("log")
axes[0].set_yscale("log")
axes[0].set_xlabel("pixels H x W")
axes[0].set_ylabel("forward + backward (ms)")
axes[0].set_title("Measured here, one thread")
axes[0].legend(fontsize=9)
axes[0].grid(alpha=0.3, which="both")

grid = np.array([16, 32, 64, 128, 256])
dense_logits = grid**2 * (grid + 2 * h) ** 2
blocked_logits = grid**2 * win**2
k = 2 * h + 1
axes[1].plot(
    grid**2, grid**2 * k**2, marker=MARKERS[0], color=PALETTE[0], label=f"per-pixel {k}x{k}"
)
axes[1].plot(grid**2, dense_logits, marker=MARKERS[1], color=PALETTE[1], label="dense (masked)")
axes[1].plot(grid**2, blocked_logits, marker=MARKERS[2], color=PALETTE[2], label="halo blocks")
axes[1].set_xscale("log")
axes[1].set_yscale("log")
axes[1].set_xlabel("pixels H x W")
axes[1].set_ylabel("attention logits")
axes[1].set_title("Work: logits per head")
axes[1].legend(fontsize=9)
axes[1].grid(alpha=0.3, which="both")
fig.suptitle("Same context, different cost")

# %%
# Reading the two panels together: the dense oracle's time grows with the square of the pixels
# (its slope on the log-log plot is twice the others'), as its logit count does. Halo blocks and
# per-pixel windows both grow linearly; halo attention computes four times the logits of the
# 7x7 per-pixel form, yet both halo implementations beat the per-pixel baseline here, the
# Numba kernels by far: a window shared by a block turns the work into products over whole
# blocks, where the per-pixel form handles a different small window for every pixel. (The
# blocked NumPy page is written to be read, not to be fast; the per-pixel baseline is written
# the same way.)

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 1
