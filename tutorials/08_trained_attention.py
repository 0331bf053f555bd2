"""
8. What a trained HaloNet attends to
====================================

Tutorial 7 trained a small HaloNet on 8 x 8 digits. Here we open one trained on CIFAR-10
photographs: the ``tiny`` model whose weights ship with halo_ref (float16, about 0.7 MB; how it
was trained, and its test accuracy, are in ``halo_ref/data/README.md`` and printed below),
together with ten CIFAR-10 test photographs, so everything runs offline in seconds. We look at
its first halo-attention layer: one query's weights over its whole window, padding ring
included; all the queries of one block, which share one window but weigh it differently; the
logit split into its content and position parts; and the learned position tables against
their initial values.

*Prerequisites:* :doc:`01_blocks_and_halos` (windows and padding), :doc:`02_relative_positions`
(the position tables and the offset arithmetic), :doc:`07_train_tiny_halonet` (what training
does). The :doc:`../shapes` page gives the layer's sizes.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from halo_ref import backend
from halo_ref.attention.blocking import gather_windows
from halo_ref.attention.core import halo_attention_forward
from halo_ref.attention.relpos import relpos_forward
from halo_ref.data import initial_tables, load_photos, load_tiny_cifar10, prepare
from halo_ref.nn.functional import softmax_forward
from halo_ref.viz import BLOCK_COLOUR, WINDOW_COLOUR, halo_layers, show_figures, use_figure_style

use_figure_style()

# %%
# The model and the photographs
# -----------------------------
# ``load_tiny_cifar10`` builds the model, loads the shipped weights and switches it to
# evaluation mode; ``prepare`` normalises photographs with the training set's statistics,
# exactly as in training. We run everything on the NumPy backend: a few photographs need no
# compiled kernels.
model, meta = load_tiny_cifar10(backend="numpy")
photos = load_photos()
names = photos.class_names
print(f"model {meta['model']!r}: {meta['command']}")
print(
    f"trained {meta['epochs']} epochs; test accuracy {100 * meta['test_accuracy_float16']:.1f}% "
    f"on the 10,000 CIFAR-10 test images (weights stored as float16)"
)
x = prepare(photos.images, meta)  # N, 3, 32, 32


# run the model once, keeping the input of its first attention layer
name, layer = halo_layers(model)[0]  # (name, layer) of each HaloAttention, in order
recorded, forward = {}, layer.forward


def recording_forward(inp):
    recorded["x"] = inp
    return forward(inp)


layer.forward = recording_forward
try:
    with backend.use("numpy"):
        logits = model.forward(x)
finally:
    layer.forward = forward
probs, _ = softmax_forward(logits.astype(np.float64))
feat = recorded["x"]  # N, dim, H, W: what the first attention layer sees
b, h, heads = layer.block_size, layer.halo_size, layer.num_heads
win, H, W = b + 2 * h, feat.shape[2], feat.shape[3]
up = photos.images.shape[1] // H  # photo pixels per map pixel
print(
    f"first attention layer {name}: {H}x{W} map, b={b}, h={h}, windows {win}x{win}, {heads} heads"
)

shown = [3, 7, 8, 0]  # cat, horse, ship, airplane
fig, axes = plt.subplots(2, 2, figsize=(6, 6.4), layout="constrained")
for ax, k in zip(axes.flat, shown, strict=True):
    ax.imshow(photos.images[k])
    guess = int(np.argmax(probs[k]))
    ax.set_title(f"{names[photos.labels[k]]}: model says\n{names[guess]} ({probs[k, guess]:.0%})")
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"CIFAR-10 test photographs (32 x 32), and the {meta['model']!r} model's answer")

# %%
# One query, its whole window
# ---------------------------
# We recompute the layer's attention from its recorded input: the projections, then the
# logits of every query of every block over its window, ``(N, heads, blocks, b^2, win^2)``.
# The window of a border block reaches ``h`` map pixels beyond the photograph; the layer pads
# with zeros (timm's ``border="zeros"``), so those keys are zero vectors that still get a
# position logit and a share of the softmax. Left: the photograph on the map's grid (each map
# pixel is ``up x up`` photo pixels), the padding ring grey, the query's block orange, its
# window blue. Right: the query's weights (mean of the heads) over the *whole* window, padding
# ring included (outlined cells), on one colour scale per figure.
q_map, kv_map = layer.project(feat)
d, dv = layer.dim_head_qk, layer.dim_head_v
nb = W // b
q_blocks = q_map.reshape(len(feat), heads, d, H // b, b, nb, b).transpose(0, 1, 3, 5, 4, 6, 2)
q_blocks = q_blocks.reshape(len(feat), heads, (H // b) * nb, b * b, d)  # N, heads, blocks, b^2, d
kv = kv_map.reshape(len(feat), heads, d + dv, H, W)  # per head [k | v]: the (d + d_v) blocks
keys = np.stack(
    [gather_windows(kv[:, n, :d], b, h) for n in range(heads)], 1
)  # N, heads, blocks, win^2, d
rel_h = layer.params["pos_embed.height_rel"]
rel_w = layer.params["pos_embed.width_rel"]
content = layer.scale * np.einsum("znbpd,znbkd->znbpk", q_blocks, keys)
position, _ = relpos_forward(q_blocks, rel_h, rel_w, b)  # N, heads, blocks, b^2, win^2
attn, _ = softmax_forward((content + position).astype(np.float64))
# the same weights as the layer's own core computes (float32 there: 1e-5 is its rounding)
_, core_cache = halo_attention_forward(q_map, kv_map, rel_h, rel_w, **layer.core_kwargs())
assert np.allclose(attn, core_cache.attn, rtol=0, atol=1e-5)


def in_image(block):
    """bool (win, win): which window cells of `block` (row, column) lie inside the map."""
    rows = block[0] * b - h + np.arange(win)
    cols = block[1] * b - h + np.arange(win)
    return ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]


def draw_photo_window(ax, k, block, query):
    """The photograph on the map's grid with the padding ring, block, window and query."""
    ax.set_facecolor("#bdbdbd")  # the zero padding around the photograph
    ax.imshow(photos.images[k], extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    by, bx = block[0] * b - 0.5, block[1] * b - 0.5
    ax.add_patch(Rectangle((bx - h, by - h), win, win, fill=False, ec=WINDOW_COLOUR, lw=3))
    ax.add_patch(Rectangle((bx, by), b, b, fill=False, ec=BLOCK_COLOUR, lw=2.5, ls="--"))
    ax.plot(query[1], query[0], "*", ms=15, color="white", mec="black", mew=1.2)
    ax.set_xlim(-h - 0.5, W + h - 0.5)
    ax.set_ylim(H + h - 0.5, -h - 0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_window_weights(ax, values, block, query_in_block, vmax, cmap="viridis", vmin=0.0):
    """Window values (win, win) as a heat map; padding cells outlined; the query starred."""
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    outside = ~in_image(block)
    for r, c in zip(*np.nonzero(outside), strict=True):
        ax.add_patch(
            Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="white", lw=0.8, hatch="//")
        )
    ax.add_patch(Rectangle((h - 0.5, h - 0.5), b, b, fill=False, ec=BLOCK_COLOUR, lw=2.5, ls="--"))
    py, px = query_in_block
    ax.plot(h + px, h + py, "*", ms=13, color="white", mec="black", mew=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


block, query_in_block = (0, 0), (1, 2)  # a border block: its window reaches the padding
blk_index = block[0] * nb + block[1]
p = query_in_block[0] * b + query_in_block[1]
query = (block[0] * b + query_in_block[0], block[1] * b + query_in_block[1])
pair = shown[:2]
weights = [attn[k, :, blk_index, p].mean(axis=0).reshape(win, win) for k in pair]
vmax = max(w.max() for w in weights)
fig, axes = plt.subplots(2, 2, figsize=(6.6, 6.4), layout="constrained")
for row, (k, w) in enumerate(zip(pair, weights, strict=True)):
    draw_photo_window(axes[row, 0], k, block, query)
    axes[row, 0].set_title(f"{names[photos.labels[k]]}: query {query} of the map")
    im = draw_window_weights(axes[row, 1], w, block, query_in_block, vmax)
    pad_share = w[~in_image(block)].sum()
    axes[row, 1].set_title(f"weights, {pad_share:.0%} on the padding")
    print(
        f"{names[photos.labels[k]]}: {pad_share:.1%} of the query's weight is on the padding ring"
    )
    assert abs(w.sum() - 1) < 1e-9  # the whole window, padding included, holds all the weight
fig.colorbar(im, ax=axes[:, 1], shrink=0.6, label="attention weight (mean of heads)")
fig.suptitle(f"{name}: one query's {win}x{win} window, padding ring hatched")

# %%
# All the queries of one block
# ----------------------------
# Every query of a block reads the same ``win x win`` keys (the window gathered once), but each
# has its own weights: the block's attention is a ``(b^2, win^2)`` matrix per head. Four queries
# of the bottom-left block of the horse photograph (on a ``16 x 16`` map with ``b = 8`` every
# block touches the border), head 0, on one colour scale.
k_photo, head = shown[1], 0
block2 = (H // b - 1, 0) if H // b > 1 else (0, 0)
blk2 = block2[0] * nb + block2[1]
picks = [(0, 0), (0, b - 1), (b - 1, 0), (b // 2, b // 2)]
maps = [attn[k_photo, head, blk2, r * b + c].reshape(win, win) for r, c in picks]
vmax = max(m.max() for m in maps)
fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.2), layout="constrained")
for ax, (r, c), m in zip(axes.flat, picks, maps, strict=True):
    im = draw_window_weights(ax, m, block2, (r, c), vmax)
    ax.set_title(f"query ({r}, {c}) of block {block2}")
fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight, head 0")
fig.suptitle(
    f"One shared window, {b * b} queries, different weights ({names[photos.labels[k_photo]]})"
)

# %%
# Content and position, split
# ---------------------------
# A logit is a content part, ``scale * q . k`` (what the key holds), plus a position part,
# ``q . R^H + q . R^W`` (where the key sits relative to the query, tutorial 2). For one query
# (head 0, the horse, the query of the last panel above) we draw both parts and their sum on
# one colour scale, and the softmax weight beside them. Zero keys on the padding have content
# logit 0: their logit is their position part alone.
r, c = picks[-1]
parts = [
    (content[k_photo, head, blk2, r * b + c], "content: scale * q . k"),
    (position[k_photo, head, blk2, r * b + c], "position: q . R^H + q . R^W"),
    ((content + position)[k_photo, head, blk2, r * b + c], "logit: their sum"),
]
lim = max(np.abs(v).max() for v, _ in parts)
fig, axes = plt.subplots(2, 2, figsize=(6.6, 6.4), layout="constrained")
for ax, (v, title) in zip(axes.flat, parts, strict=False):
    im = draw_window_weights(ax, v.reshape(win, win), block2, (r, c), lim, cmap="RdBu_r", vmin=-lim)
    ax.set_title(title)
fig.colorbar(im, ax=axes[0, :], shrink=0.8, label="logit")
wmap = attn[k_photo, head, blk2, r * b + c].reshape(win, win)
im2 = draw_window_weights(axes[1, 1], wmap, block2, (r, c), wmap.max())
axes[1, 1].set_title("weight: softmax of the logit")
fig.colorbar(im2, ax=axes[1, 1], shrink=0.8, label="weight")
fig.suptitle("One query's logits: content plus position")

# %%
# The learned position tables
# ---------------------------
# The tables started as small random numbers (truncated normal, std ``d^-1/2``) and training
# moved them. Top: the height table, one row per offset and one column per channel, before and
# after training, on one colour scale; the rows no query of this layer reads (offsets beyond
# the window, tutorial 2) are greyed out: only weight decay moved them. Bottom: what the tables
# do to attention, the mean position logit a key receives for each *geometric* offset (key row
# minus query row, or column), over every query of every photograph; with the trained tables
# and with their initial values (the queries are the trained ones in both).
init = initial_tables()
offsets = np.arange(2 * win - 1) - (win - 1) - h  # the geometric offset of each table row
used = (offsets >= -(b - 1) - h) & (offsets <= b - 1 + h)
qs = q_blocks.reshape(-1, d)
start_h = init[f"{name}.pos_embed.height_rel"]
lim = max(np.abs(start_h).max(), np.abs(rel_h).max())
fig, axes = plt.subplots(2, 2, figsize=(7, 6.6), layout="constrained")
for ax, table, title in ((axes[0, 0], start_h, "height table, initial"),
                         (axes[0, 1], rel_h, "height table, trained")):  # fmt: skip
    im = ax.imshow(table, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto",
                   extent=(-0.5, d - 0.5, offsets[-1] + 0.5, offsets[0] - 0.5))  # fmt: skip
    for off in offsets[~used]:
        ax.axhspan(off - 0.5, off + 0.5, color="#bdbdbd", alpha=0.85)
    ax.set_title(title)
    ax.set_xlabel("channel")
axes[0, 0].set_ylabel("row offset (key - query)")
fig.colorbar(im, ax=axes[0, :], shrink=0.8, label="table entry")
for ax, key, title in zip(axes[1], ("height_rel", "width_rel"), ("rows", "columns"), strict=True):
    trained = layer.params[f"pos_embed.{key}"]
    start = init[f"{name}.pos_embed.{key}"]
    for table, label, style, mark in (
        (start, "initial", "--", "s"),
        (trained, "trained", "-", "o"),
    ):
        profile = (qs @ table.T).mean(axis=0)  # mean position logit per table row
        ax.plot(offsets[used], profile[used], style, marker=mark, label=label)
    ax.axvline(0, color="gray", lw=1)
    ax.set_xlabel(f"offset in {title} (key - query)")
    ax.grid(alpha=0.3)
axes[1, 0].set_ylabel("mean position logit")
axes[1, 0].legend()
fig.suptitle(f"{name}: the position tables before and after training")

# %%
# What to read in these pictures: the weights of one query are spread over its window rather
# than focused on one key, and they change from query to query within a block although the keys
# are the same: that is the point of sharing a window. Near the border a share of the weight goes
# to the zero padding (printed above), which is why halo_ref offers ``border="mask"``
# (tutorial 3). The model here is small and briefly trained (see its accuracy above), so its
# maps are a start, not a finished picture; ``halo-ref train --dataset cifar10`` trains longer.

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 2
