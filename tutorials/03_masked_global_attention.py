"""
3. Halo attention is masked global attention
============================================

Blocked local attention is global attention restricted to a neighbourhood (paper, section 3.1).
Write every query against *every* key of the zero-padded map, add ``-inf`` to the logits of keys
outside the query's halo window, and the softmax gives exactly halo attention. halo_ref keeps
that formulation as an independent oracle, :mod:`halo_ref.attention.dense`, which knows nothing about
gathering windows. This tutorial draws the mask, shows the equality numerically, and compares
the two ways of treating the image border.

*Prerequisites:* :doc:`01_blocks_and_halos` and :doc:`02_relative_positions`. The
:doc:`../derivations` page states the oracle's mask exactly (section "Why masked global
attention is the same function"); :doc:`06_speed` times the two forms.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from halo_ref.attention.core import halo_attention_forward
from halo_ref.attention.dense import (
    dense_halo_attention_forward,
    halo_attention_loops,
    halo_neighbourhood,
)
from halo_ref.viz import draw_mask, scene_image, show_figures, use_figure_style

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"
use_figure_style()

# %%
# The mask
# --------
# :func:`~halo_ref.attention.dense.halo_neighbourhood` returns an additive mask of shape
# ``(H W, (H + 2h)(W + 2h))``: queries are the pixels of the map in row-major order, keys the
# pixels of the map zero-padded by ``h``. Entry ``(i, j)`` is 0 when key ``j`` lies in the window
# of query ``i``'s block, ``-inf`` otherwise. With ``border="mask"`` a key must also lie inside
# the image (not on the padding ring) to be kept. We use a ``12 x 12`` map with ``b = 4``,
# ``h = 1``: nine blocks, 144 queries against the 196 keys of the padded ``14 x 14`` map.
H = W = 12
b, h = 4, 1
mask, idx_h, idx_w = halo_neighbourhood(H, W, b, h)
mask_inside, _, _ = halo_neighbourhood(H, W, b, h, border="mask")
print("mask:", mask.shape, f"- {np.isfinite(mask).mean():.1%} of the pairs are kept")

# %%
# In row-major (image) order a block's queries are not together: each image row switches to
# the next block every ``b`` pixels, so the rows of the mask interleave the three blocks of a
# block row (top left panel: stripes). Sorting the queries *by block* (what
# :func:`~halo_ref.attention.blocking.blocks_from_map` does) makes each block one run of
# ``b^2 = 16`` rows with identical masks (top right; the blue lines mark the runs, and every
# ``W + 2h = 14`` keys, the rows of the padded map). Those rows keep ``(b+2h)^2 = 36`` keys, but
# in the padded map's row-major order the 36 keys are not one run of columns: they are
# ``b + 2h = 6`` separate runs of 6, one per window row. From block to block the runs move right
# by ``b`` keys (next block column) or down by ``b`` padded rows (next block row): a staircase.
# Halo attention is a *block-sparse* global attention, and only the kept pairs need computing.
# With ``border="mask"`` (bottom) the keys on the padding ring leave every window: border
# blocks keep fewer keys.
qy, qx = np.divmod(np.arange(H * W), W)
by_block = np.lexsort((qx % b, qy % b, qx // b, qy // b))  # sort by block row, column, then pixel
lines = (b * b, W + 2 * h)
fig, axes = plt.subplots(2, 2, figsize=(7, 6.4), layout="constrained")
draw_mask(mask, ax=axes[0, 0], title="image order, border='zeros'")
draw_mask(mask[by_block], ax=axes[0, 1], block_lines=lines, title="by block, border='zeros'")
draw_mask(mask_inside[by_block], ax=axes[1, 0], block_lines=lines, title="by block, border='mask'")
# one block's run of rows, enlarged: block 4 (the centre) keeps 6 runs of 6 keys
centre = by_block[4 * b * b : 5 * b * b]
draw_mask(mask[centre], ax=axes[1, 1], block_lines=(b * b, W + 2 * h), title="block 4 alone")
axes[1, 1].set_yticks([0, 5, 10, 15])
for ax in axes.flat:
    ax.set_xlabel(f"key ({H + 2 * h}x{W + 2 * h} padded map)")
    ax.set_ylabel("query")
fig.suptitle("Halo attention as a mask on global attention (bright = kept)")
runs = np.flatnonzero(np.diff(np.isfinite(mask[centre[0]]).astype(int)) == 1)
print(f"block 4 keeps {np.isfinite(mask[centre[0]]).sum()} keys in {len(runs)} runs")
assert len(runs) == b + 2 * h

# %%
# The equality, numerically
# -------------------------
# Three implementations of the same function: the windowed core
# :func:`~halo_ref.attention.core.halo_attention_forward`, the dense masked oracle
# :func:`~halo_ref.attention.dense.dense_halo_attention_forward`, and
# :func:`~halo_ref.attention.dense.halo_attention_loops`, written pixel by pixel from the definition.
# In float64 they sum the same terms in different orders, so they agree to rounding: relative
# errors around ``1e-15``; we assert ``1e-12``, far below any real mistake.
rng = np.random.default_rng(0)
heads, d_qk, d_v = 2, 4, 3
q_map = rng.standard_normal((1, heads * d_qk, H, W))
kv_map = rng.standard_normal((1, heads * (d_qk + d_v), H, W))
win = b + 2 * h
rel_h, rel_w = 0.5 * rng.standard_normal((2, 2 * win - 1, d_qk))
kwargs = dict(num_heads=heads, block_size=b, halo_size=h, scale=d_qk**-0.5)
for border in ("zeros", "mask"):
    fast, _ = halo_attention_forward(q_map, kv_map, rel_h, rel_w, border=border, **kwargs)
    dense, _ = dense_halo_attention_forward(q_map, kv_map, rel_h, rel_w, border=border, **kwargs)
    loops = halo_attention_loops(q_map, kv_map, rel_h, rel_w, border=border, **kwargs)
    e1 = np.max(np.abs(fast - dense)) / np.max(np.abs(dense))
    e2 = np.max(np.abs(fast - loops)) / np.max(np.abs(loops))
    print(f"border={border!r}: windowed vs dense {e1:.1e}, windowed vs loops {e2:.1e}")
    assert e1 < 1e-12 and e2 < 1e-12

# %%
# Zero-padded versus masked borders
# ---------------------------------
# timm's ``HaloAttn`` pads the key/value map with zeros. A zero key has content logit
# ``q . 0 = 0``, but it still gets its *position* logit and so a share of the softmax, and its
# value is zero: near the border the output is pulled towards zero. With ``border="mask"``
# halo_ref removes those keys from the softmax instead. The two agree wherever a block's window
# lies inside the image and differ only in border blocks. We run both on a picture (its three
# colour channels as values, the keys and queries from a fixed random projection) and map
# where they differ. Each output pixel is a weighted average of the colours in its block's
# window, so the outputs look like the picture blurred block by block.
S = 32 if QUICK else 64
b2, h2 = 8, 3
image = scene_image(S, seed=3)
x = image.transpose(2, 0, 1)[None]  # 1, 3, S, S
proj = np.random.default_rng(1)
q_img = np.einsum("oc,bchw->bohw", proj.standard_normal((4, 3)), x)
k_img = np.einsum("oc,bchw->bohw", proj.standard_normal((4, 3)), x)
kv_img = np.concatenate([k_img, x], axis=1)  # one head: 4 key channels, then the 3 colours
win2 = b2 + 2 * h2
rel = 0.3 * proj.standard_normal((2, 2 * win2 - 1, 4))
kw = dict(num_heads=1, block_size=b2, halo_size=h2, scale=0.5)
out_zeros, _ = halo_attention_forward(q_img, kv_img, *rel, border="zeros", **kw)
out_mask, _ = halo_attention_forward(q_img, kv_img, *rel, border="mask", **kw)
diff = np.abs(out_zeros - out_mask).max(axis=1)[0]  # S, S

# blocks whose window stays inside the image: rows/cols of blocks 1 .. nb-2 (needs h <= b)
interior = np.zeros((S, S), bool)
interior[b2 : S - b2, b2 : S - b2] = True
print(f"max |zeros - mask| inside interior blocks: {diff[interior].max():.1e}")
print(f"max |zeros - mask| in border blocks:        {diff[~interior].max():.2f}")
assert diff[interior].max() == 0.0  # identical arithmetic on identical windows: exactly equal

fig, axes = plt.subplots(2, 2, figsize=(6.8, 6.6), layout="constrained")
axes[0, 0].imshow(image)
axes[0, 0].set_title("input (values = colours)")
axes[0, 1].imshow(np.clip(out_zeros[0].transpose(1, 2, 0), 0, 1))
axes[0, 1].set_title("border='zeros' (timm): dark rim")
axes[1, 0].imshow(np.clip(out_mask[0].transpose(1, 2, 0), 0, 1))
axes[1, 0].set_title("border='mask': no rim")
im = axes[1, 1].imshow(diff, cmap="magma")
fig.colorbar(im, ax=axes[1, 1], shrink=0.8, label="max |difference|")
axes[1, 1].set_title("where they differ")
for ax in axes.flat:
    ax.set_xticks(np.arange(0, S + 1, b2) - 0.5, [])
    ax.set_yticks(np.arange(0, S + 1, b2) - 0.5, [])
    ax.grid(color="white", lw=1.0, alpha=0.8)
fig.suptitle("Colours as values: zero padding darkens the border blocks")

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 1
