"""
1. Blocks and halos
===================

Halo attention (paper, section 3.1 and figure 2) cuts an image into non-overlapping
``b x b`` *query blocks*. All queries of a block share one neighbourhood: the block grown by a
*halo* of ``h`` pixels on every side, a ``(b + 2h) x (b + 2h)`` *window*. This tutorial cuts a
picture into blocks, gathers the windows with :func:`halo_ref.attention.blocking.gather_windows`, and
compares what one pixel attends to under per-pixel local attention, halo attention and global
attention, and what each costs.

Run it as a script (``python tutorials/01_blocks_and_halos.py``) or cell by cell in an editor
that understands ``# %%``. ``HALO_REF_TUTORIAL_QUICK=1`` makes every tutorial run in seconds.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from halo_ref.attention.blocking import blocks_from_map, gather_windows, map_from_blocks
from halo_ref.viz import draw_blocks, draw_neighbourhood, scene_image

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"

# %%
# A picture to cut up
# -------------------
# We use a synthetic landscape (no download needed). halo_ref works on NCHW arrays, so the
# ``(H, W, 3)`` image becomes a batch of one ``(1, 3, H, W)`` map. The paper's default block
# size is ``b = 8`` with a halo of ``h = 3``, so each window is ``14 x 14``.
image = scene_image(64, seed=3)  # H, W, 3
x = image.transpose(2, 0, 1)[None]  # 1, 3, H, W
b, h = 8, 3
win = b + 2 * h
H, W = image.shape[:2]
print(f"image {H}x{W}: {H // b}x{W // b} = {(H // b) * (W // b)} blocks of {b}x{b}")

# %%
# Cutting into blocks is a reshape
# --------------------------------
# :func:`~halo_ref.attention.blocking.blocks_from_map` only reorders pixels: ``(B, C, H, W)`` becomes
# ``(B, N, b*b, C)`` with the ``N`` blocks in row-major order. It is a permutation, so
# :func:`~halo_ref.attention.blocking.map_from_blocks` undoes it exactly.
blocks = blocks_from_map(x, b)
print("blocks:", blocks.shape)
assert np.array_equal(map_from_blocks(blocks, H, W), x)  # a permutation: exact, no tolerance

# %%
# Gathering the halo windows
# --------------------------
# :func:`~halo_ref.attention.blocking.gather_windows` pads the map with ``h`` zeros on every side and
# copies out, for each block, the ``win x win`` patch that starts ``h`` pixels above and left of
# it. Neighbouring windows overlap by ``2h`` pixels; windows of border blocks read the zero
# padding (drawn grey below, black inside a gathered window).
windows = gather_windows(x, b, h)  # 1, N, win*win, 3
print("windows:", windows.shape)
interior, corner = (3, 5), (0, 0)
nw = W // b


def window_picture(block):
    """The gathered window of block (row, column) as a (win, win, 3) image."""
    n = block[0] * nw + block[1]
    return windows[0, n].reshape(win, win, 3)


# the interior window is exactly the image crop around its block (copies, so exact equality)
i, j = interior
assert np.array_equal(
    window_picture(interior), image[i * b - h : i * b + b + h, j * b - h : j * b + b + h]
)

fig, axes = plt.subplots(1, 3, figsize=(11, 4.2), layout="constrained")
draw_blocks(image, b, h, block=interior, ax=axes[0], title=f"block {interior} and its halo")
for ax, blk in zip(axes[1:], (interior, corner), strict=True):
    ax.imshow(window_picture(blk), interpolation="nearest")
    ax.add_patch(plt.Rectangle((h - 0.5, h - 0.5), b, b, fill=False, ec="#ffb000", lw=2.5))
    ax.set_title(f"gathered window of block {blk}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Blocks (orange) and their (b+2h) x (b+2h) halo windows (blue)")

# %%
# What does one pixel attend to?
# ------------------------------
# * **Per-pixel local attention** (SASA, Ramachandran et al. 2019) gives every pixel its own
#   ``k x k`` window centred on it. Neighbouring pixels have different windows, so each pixel
#   needs its own copy of its keys.
# * **Halo attention** gives every pixel of a block the *same* window. Two pixels in one block
#   attend to exactly the same keys, which is what makes it cheap: one window is gathered per
#   block and reused by ``b*b`` queries as a dense matrix product.
# * **Global attention** lets every pixel see every other pixel.
#
# We draw the three for two queries that share a block. The per-pixel window uses
# ``k = 2h + 1 = 7``: the smallest window that, like a halo window, guarantees every query at
# least ``h`` pixels of context on every side.
k = 7
queries = [(27, 43), (30, 46)]  # both in block (3, 5)
rows, cols = np.mgrid[0:H, 0:W]


def per_pixel(q):
    return (np.abs(rows - q[0]) <= k // 2) & (np.abs(cols - q[1]) <= k // 2)


def halo(q):
    by, bx = q[0] // b, q[1] // b
    return (
        (rows >= by * b - h)
        & (rows < by * b + b + h)
        & (cols >= bx * b - h)
        & (cols < bx * b + b + h)
    )


fig, axes = plt.subplots(2, 3, figsize=(10, 7), layout="constrained")
for r, q in enumerate(queries):
    draw_neighbourhood(image, per_pixel(q), q, ax=axes[r, 0], title=f"per-pixel {k}x{k}, query {q}")
    draw_neighbourhood(image, halo(q), q, ax=axes[r, 1], title=f"halo b={b}, h={h}, query {q}")
    draw_neighbourhood(image, np.ones((H, W), bool), q, ax=axes[r, 2], title=f"global, query {q}")
fig.suptitle("What one query (star) attends to: per-pixel windows move, halo windows do not")
assert np.array_equal(halo(queries[0]), halo(queries[1]))  # same block, same keys

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
# With the same guaranteed context, halo attention computes ``(b+2h)^2 / (2h+1)^2 = 4`` times
# more logits than per-pixel attention (a query near a block corner also sees keys up to
# ``b + h - 1`` pixels away on one side), but it turns an irregular per-pixel gather into dense
# matrix products and copies each key only ``((b+2h)/b)^2 ~ 3`` times instead of ``k^2 = 49``.
# On real hardware that trade wins (paper, section 3.1); tutorial 6 measures it on a CPU.
sizes = [32, 64] if QUICK else [32, 64, 128, 256]
print(
    f"{'H=W':>5} {'per-pixel logits':>17} {'halo logits':>12} {'global logits':>14} "
    f"{'per-pixel copies':>17} {'halo copies':>12}"
)
for s in sizes:
    n = s * s
    print(
        f"{s:>5} {n * k * k:>17,} {n * win * win:>12,} {n * n:>14,} "
        f"{n * k * k:>17,} {(s // b) ** 2 * win * win:>12,}"
    )
