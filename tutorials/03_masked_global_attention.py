"""
3. Halo attention is masked global attention
============================================

Blocked local attention is global attention restricted to a neighbourhood (paper, section 3.1).
Write every query against *every* key of the zero-padded map, add ``-inf`` to the logits of keys
outside the query's halo window, and the softmax gives exactly halo attention. halo_ref keeps
that formulation as an independent oracle, :mod:`halo_ref.attention.dense`, which knows nothing about
gathering windows. This tutorial draws the mask, shows the equality numerically, and compares
the two ways of treating the image border.
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
from halo_ref.viz import draw_mask, scene_image

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"

# %%
# The mask
# --------
# :func:`~halo_ref.attention.dense.halo_neighbourhood` returns an additive mask of shape
# ``(H W, (H + 2h)(W + 2h))``: queries are the pixels of the map in row-major order, keys the
# pixels of the map zero-padded by ``h``. Entry ``(i, j)`` is 0 when key ``j`` lies in the window
# of query ``i``'s block, ``-inf`` otherwise. We use a small ``8 x 8`` map with ``b = 4``,
# ``h = 1`` so every pair is visible.
H = W = 8
b, h = 4, 1
mask, idx_h, idx_w = halo_neighbourhood(H, W, b, h)
mask_inside, _, _ = halo_neighbourhood(H, W, b, h, border="mask")
print("mask:", mask.shape, f"- {np.isfinite(mask).mean():.1%} of the pairs are kept")

# %%
# In row-major order a block's queries are scattered over ``b`` separate runs of rows, so the
# mask looks like a staircase of bands. Sorting the queries *by block* (what
# :func:`~halo_ref.attention.blocking.blocks_from_map` does) makes each block one run of ``b*b`` rows that
# share one set of columns: halo attention is a *block-sparse* global attention, and only the
# kept blocks need computing.
qy, qx = np.divmod(np.arange(H * W), W)
by_block = np.lexsort((qx % b, qy % b, qx // b, qy // b))  # sort by block row, column, then pixel
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
draw_mask(mask, ax=axes[0], title="queries in image order (border='zeros')")
draw_mask(
    mask[by_block],
    ax=axes[1],
    block_lines=(b * b, W + 2 * h),
    title="queries sorted by block (border='zeros')",
)
draw_mask(
    mask_inside[by_block],
    ax=axes[2],
    block_lines=(b * b, W + 2 * h),
    title="sorted, border='mask': padding removed",
)
for ax in axes:
    ax.set_xlabel(f"key (padded {H + 2 * h}x{W + 2 * h} map, row-major)")
fig.suptitle("Halo attention as a mask on global attention (bright = attended)")

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

fig, axes = plt.subplots(1, 4, figsize=(14, 3.8), layout="constrained")
axes[0].imshow(image)
axes[0].set_title("input (values = colours)")
axes[1].imshow(np.clip(out_zeros[0].transpose(1, 2, 0), 0, 1))
axes[1].set_title("border='zeros' (timm): dark rim")
axes[2].imshow(np.clip(out_mask[0].transpose(1, 2, 0), 0, 1))
axes[2].set_title("border='mask': no rim")
im = axes[3].imshow(diff, cmap="magma")
fig.colorbar(im, ax=axes[3], shrink=0.8, label="max |difference| over channels")
axes[3].set_title("where they differ: border blocks only")
for ax in axes:
    ax.set_xticks(np.arange(0, S + 1, b2) - 0.5, [])
    ax.set_yticks(np.arange(0, S + 1, b2) - 0.5, [])
    ax.grid(color="white", lw=0.4, alpha=0.5)
fig.suptitle("Attention output with the colours as values: zero padding darkens the border")
