"""
1. Blocks and halos
===================

Halo attention (paper, section 3.1 and figure 2) cuts a feature map into non-overlapping
``b x b`` *query blocks*. All queries of a block share one neighbourhood: the block grown by a
*halo* of ``h`` pixels on every side, a ``(b + 2h) x (b + 2h)`` *window*. This tutorial redraws
the paper's figure 2 at the scale of single pixels, on an ``8 x 8`` map with ``b = 4`` and
``h = 1``: the blocks, the zero-padded map, the gathered windows laid out as the arrays the code
multiplies, a query walking across two blocks, and how many windows read each pixel (which is
why the backward pass of the gather is a scatter-*add*).

*Prerequisites:* NumPy arrays and reshapes; what attention computes (a softmax over
query-key dot products, then a weighted sum of values). Next: :doc:`02_relative_positions`
adds where a key sits; :doc:`03_masked_global_attention` shows the same function as masked
global attention; the :doc:`../derivations` page has every formula.

Run it as a script (``python tutorials/01_blocks_and_halos.py``, add ``--save DIR`` on a machine
without a display) or cell by cell in an editor that understands ``# %%``.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle

from halo_ref.attention.blocking import (
    blocks_from_map,
    gather_windows,
    map_from_blocks,
    scatter_windows,
)
from halo_ref.viz import (
    QUERY_COLOUR,
    draw_neighbourhood,
    scene_image,
    show_figures,
    use_figure_style,
)

use_figure_style()

# %%
# A map small enough to count
# ---------------------------
# An ``8 x 8`` map with ``b = 4`` has ``N = (8/4)^2 = 4`` blocks of ``b^2 = 16`` pixels. With
# ``h = 1`` each window is ``6 x 6 = 36`` pixels. halo_ref works on NCHW arrays; we give the map
# one channel holding each pixel's *block number plus one*, so that every array below can be
# coloured by where its entries came from (0 will mean zero padding).
H = W = 8
b, h = 4, 1
win = b + 2 * h
nh, nw = H // b, W // b
N = nh * nw
rows, cols = np.mgrid[0:H, 0:W]
block_of = (rows // b) * nw + cols // b  # H, W: the block each pixel belongs to
x = (block_of + 1.0)[None, None]  # 1, 1, H, W
print(f"map {H}x{W}, b={b}, h={h}: N={N} blocks of b^2={b * b} pixels, windows {win}x{win}")

# one colour per block (Okabe-Ito tints, told apart with common colour-vision deficiencies),
# light grey for the zero padding
BLOCK_TINTS = ["#d9d9d9", "#56B4E9", "#E69F00", "#009E73", "#CC79A7"]
tints = ListedColormap(BLOCK_TINTS)


def pixel_grid(ax, values, origin=(0, 0), numbers=None):
    """Draw `values` (block number + 1, 0 for padding) as gridded squares; `numbers` in them."""
    rows_, cols_ = values.shape
    y0, x0 = origin
    extent = (x0 - 0.5, x0 + cols_ - 0.5, y0 + rows_ - 0.5, y0 - 0.5)
    ax.imshow(values, cmap=tints, vmin=-0.5, vmax=4.5, extent=extent)
    for k in range(rows_ + 1):
        ax.axhline(y0 + k - 0.5, color="white", lw=1.5)
    for k in range(cols_ + 1):
        ax.axvline(x0 + k - 0.5, color="white", lw=1.5)
    if numbers is not None:
        for (r, c), n in np.ndenumerate(numbers):
            if n >= 0:
                ax.text(x0 + c, y0 + r, str(n), ha="center", va="center", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# %%
# The blocks and the padded map
# -----------------------------
# Left: the map, pixels numbered in row-major order (the order of a flattened image), each block
# in its own colour. Right: the map zero-padded by ``h = 1`` on every side (grey ring), with the
# window of block 1 (top right, orange) outlined in black. The window
# takes one ring of pixels from blocks 0, 2 and 3 and, on its top and right edges, the padding.
padded = np.pad(x[0, 0], h)  # H+2h, W+2h
pixel_number = np.pad(np.arange(H * W).reshape(H, W), h, constant_values=-1)

fig, axes = plt.subplots(1, 2, figsize=(7, 3.7), layout="constrained")
pixel_grid(axes[0], x[0, 0], numbers=pixel_number[h:-h, h:-h])
axes[0].set_title(f"{H}x{W} map, four {b}x{b} blocks")
pixel_grid(axes[1], padded, origin=(-h, -h), numbers=pixel_number)
blk = (0, 1)
y0, x0 = blk[0] * b - h - 0.5, blk[1] * b - h - 0.5
axes[1].add_patch(Rectangle((x0, y0), win, win, fill=False, ec="black", lw=3.5, zorder=5))
axes[1].set_title(f"padded by h={h}: window of block 1")
for ax in axes:
    ax.set_xlim(-h - 0.7, W + h - 0.3)
    ax.set_ylim(H + h - 0.3, -h - 0.7)
    ax.axis("off")

# %%
# Cutting into blocks is a reshape
# --------------------------------
# :func:`~halo_ref.attention.blocking.blocks_from_map` only reorders pixels:
# ``(B, C, H, W)`` becomes ``(B, N, b*b, C)``, blocks in row-major order and the pixels of each
# block in row-major order. It is a permutation, so
# :func:`~halo_ref.attention.blocking.map_from_blocks` undoes it exactly.
queries = blocks_from_map(x, b)  # 1, N, b*b, C
print("queries:", queries.shape, "= (B, N, b^2, C)")
assert np.array_equal(map_from_blocks(queries, H, W), x)  # a permutation: exact, no tolerance

# %%
# Gathering the windows
# ---------------------
# :func:`~halo_ref.attention.blocking.gather_windows` pads the map with ``h`` zeros on every side
# and copies out, for each block, the ``win x win`` patch that starts ``h`` pixels above and left
# of it: ``(B, N, win*win, C)``, window pixels in row-major order. Below, each row is one
# block's tensor, each square one ``C``-vector, coloured by the block it was copied from (grey:
# padding). The queries of a block are one colour; its 36 keys mix four colours and the
# padding. The attention of block ``n`` is then two dense matrix products,
# ``softmax(Q_n K_n^T) V_n`` with ``Q_n`` of shape ``(16, C)`` and ``K_n``, ``V_n`` of
# shape ``(36, C)``.
keys = gather_windows(x, b, h)  # 1, N, win*win, C
print("keys:   ", keys.shape, "= (B, N, (b+2h)^2, C)")
# the window of block 1, reshaped to win x win, is the padded map's crop around it: exact copies
assert np.array_equal(keys[0, 1, :, 0].reshape(win, win), padded[0:win, b : b + win])

fig, axes = plt.subplots(2, 1, figsize=(7, 2.9), layout="constrained")
pixel_grid(axes[0], queries[0, :, :, 0])
axes[0].set_xlim(-0.5, win * win - 0.5)
axes[0].set_title(f"queries: (N, b^2, C) = ({N}, {b * b}, C)", loc="left")
pixel_grid(axes[1], keys[0, :, :, 0])
for k in range(win, win * win, win):  # the window's rows, 6 pixels each
    axes[1].axvline(k - 0.5, color="black", lw=1.2)
axes[1].set_title(
    f"keys and values: (N, (b+2h)^2, C) = ({N}, {win * win}, C), one window row per 6 squares",
    loc="left",
)
for ax in axes:
    ax.set_yticks(range(N), [f"block {n}" for n in range(N)])
    ax.tick_params(length=0)

# %%
# A query walking across two blocks
# ---------------------------------
# Per-pixel local attention (SASA, Ramachandran et al. 2019) gives every pixel its own
# ``k x k`` window centred on it; we take ``k = 2h + 1 = 3``, the smallest window that, like a
# halo window, guarantees every query ``h`` pixels of context on every side. Halo attention
# gives every pixel of a block the same window. The animation moves one query along row 1,
# from column 0 to 7, across blocks 0 and 1: the per-pixel window (left) slides one pixel a
# step; the halo window (right) stays put for four steps, then jumps by ``b = 4``.
# Sharing is what makes halo attention cheap: one window is gathered per block and reused by
# all ``b^2`` queries as a dense matrix product, where the per-pixel form needs a window per
# pixel.
k = 2 * h + 1
path = [(1, c) for c in range(W)]

fig, axes = plt.subplots(1, 2, figsize=(7, 3.8), layout="constrained")
windows_drawn = []
for ax, name in zip(axes, (f"per-pixel {k}x{k} window", f"halo window {win}x{win}"), strict=True):
    pixel_grid(ax, padded, origin=(-h, -h))
    ax.set_xlim(-h - 0.7, W + h - 0.3)
    ax.set_ylim(H + h - 0.3, -h - 0.7)
    ax.axis("off")
    ax.set_title(name)
    patch = ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="black", lw=4, zorder=5))
    (star,) = ax.plot([], [], "*", ms=20, color=QUERY_COLOUR, mec="black", mew=1.2, zorder=6)
    windows_drawn.append((patch, star))
caption = fig.suptitle("")


def step(i):
    qy, qx = path[i]
    per_pixel_corner = (qx - k // 2 - 0.5, qy - k // 2 - 0.5)
    halo_corner = ((qx // b) * b - h - 0.5, (qy // b) * b - h - 0.5)
    for (patch, star), corner, size in zip(
        windows_drawn, (per_pixel_corner, halo_corner), (k, win), strict=True
    ):
        patch.set_xy(corner)
        patch.set_width(size)
        patch.set_height(size)
        star.set_data([qx], [qy])
    caption.set_text(f"query at row {qy}, column {qx} (block {block_of[qy, qx]})")
    return [p for pair in windows_drawn for p in pair] + [caption]


step(0)
walk = FuncAnimation(fig, step, frames=len(path), interval=700, blit=False)

# %%
# How many windows read each pixel
# --------------------------------
# Neighbouring windows overlap: the window of a block reaches ``h`` pixels into each neighbour,
# and the neighbour's window reaches ``h`` pixels back, so along every block edge a band
# ``2h`` pixels wide is read by two windows, and where two bands cross, by four. The backward
# pass follows from this picture. A pixel copied into several windows receives, from each
# copy, the gradient of that copy; the chain rule adds them up (``y_1 = x, y_2 = x`` gives
# ``dx = dy_1 + dy_2``). So the backward of the gather is a *scatter-add*,
# :func:`~halo_ref.attention.blocking.scatter_windows`, and scattering windows full of ones
# counts the copies. The drawing below is exactly that count, computed by the library.
count = scatter_windows(np.ones_like(keys), H, W, b, h)[0, 0]  # H, W
for n, pixels in zip(*np.unique(count, return_counts=True), strict=True):
    print(f"{pixels:2d} pixels are read by {n:.0f} window(s)")
assert set(np.unique(count)) == {1.0, 2.0, 4.0}

fig, ax = plt.subplots(figsize=(4.2, 4.2), layout="constrained")
reads = ListedColormap(["#f7f7f7", "#fdb863", "#b35806"])
ax.imshow(np.log2(count), cmap=reads, vmin=-0.5, vmax=2.5)
for (r, c), n in np.ndenumerate(count):
    ax.text(c, r, f"{n:.0f}", ha="center", va="center", color="white" if n == 4 else "black")
for e in range(0, H + 1):
    ax.axhline(e - 0.5, color="white", lw=1)
    ax.axvline(e - 0.5, color="white", lw=1)
for e in range(0, H + 1, b):
    ax.axhline(e - 0.5, color="black", lw=2.5)
    ax.axvline(e - 0.5, color="black", lw=2.5)
ax.set_xticks([])
ax.set_yticks([])
ax.set_title(f"windows that read each pixel (b={b}, h={h})")

# %%
# What one pixel attends to, on a picture
# ---------------------------------------
# The same comparison on a ``32 x 32`` picture with the paper's default ``b = 8``, ``h = 3``
# (windows of ``14 x 14``; per-pixel ``k = 2h + 1 = 7``). Two queries of one block (stars):
# their per-pixel windows differ, their halo window is the same. Global attention, not drawn,
# would let every query see all ``32 x 32`` pixels.
S, b8, h8 = 32, 8, 3
image = scene_image(S, seed=3)
k8 = 2 * h8 + 1
two_queries = [(10, 17), (13, 22)]  # both in block (1, 2)
R, C = np.mgrid[0:S, 0:S]


def per_pixel(q):
    return (np.abs(R - q[0]) <= k8 // 2) & (np.abs(C - q[1]) <= k8 // 2)


def halo(q):
    by, bx = q[0] // b8, q[1] // b8
    return (
        (R >= by * b8 - h8)
        & (R < by * b8 + b8 + h8)
        & (C >= bx * b8 - h8)
        & (C < bx * b8 + b8 + h8)
    )


fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.6), layout="constrained")
for r, q in enumerate(two_queries):
    draw_neighbourhood(
        image, per_pixel(q), q, ax=axes[r, 0], title=f"per-pixel {k8}x{k8}, query {q}"
    )
    draw_neighbourhood(image, halo(q), q, ax=axes[r, 1], title=f"halo b={b8}, h={h8}, query {q}")
    for ax in axes[r]:
        for e in range(0, S + 1, b8):
            ax.axhline(e - 0.5, color="white", lw=0.8, alpha=0.7)
            ax.axvline(e - 0.5, color="white", lw=0.8, alpha=0.7)
assert np.array_equal(halo(two_queries[0]), halo(two_queries[1]))  # same block, same keys

# %%
# What it costs
# -------------
# The attention logits are the bulk of the work and memory. For an ``H x W`` map:
#
# * per-pixel: ``H W k^2`` logits, and ``H W k^2`` key copies (every pixel its own window);
# * halo: ``H W (b + 2h)^2`` logits but only ``(H/b)(W/b)(b+2h)^2`` key copies, reused as a
#   ``b^2 x (b+2h)^2`` matrix product per block;
# * global: ``(H W)^2`` logits, no copies.
#
# With the same guaranteed context (``b = 8``, ``h = 3``, ``k = 7``), halo attention computes
# ``(b+2h)^2 / (2h+1)^2 = 4`` times more logits than per-pixel attention (a query near a block
# corner also sees keys up to ``b + h - 1`` pixels away on one side), but it turns an irregular
# per-pixel gather into dense matrix products and copies each key only
# ``((b+2h)/b)^2 ~ 3`` times instead of ``k^2 = 49``. :doc:`06_speed` times per-pixel, dense and
# halo attention side by side on this CPU.
sizes = [32, 64, 128, 256]
print(
    f"{'H=W':>5} {'per-pixel logits':>17} {'halo logits':>12} {'global logits':>14} "
    f"{'per-pixel copies':>17} {'halo copies':>12}"
)
for s in sizes:
    n = s * s
    print(
        f"{s:>5} {n * k8 * k8:>17,} {n * (b8 + 2 * h8) ** 2:>12,} {n * n:>14,} "
        f"{n * k8 * k8:>17,} {(s // b8) ** 2 * (b8 + 2 * h8) ** 2:>12,}"
    )

# %%
show_figures(animations=[walk])

# sphinx_gallery_thumbnail_number = 2
