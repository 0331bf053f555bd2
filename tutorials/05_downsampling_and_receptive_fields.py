"""
5. Downsampling and receptive fields
====================================

HaloNet downsamples inside attention (paper, section 3.2): with ``stride=2`` the layer keeps
only every second query in each direction, but each query block still attends to the full
``(b + 2h) x (b + 2h)`` window of the full-resolution keys. This tutorial shows which queries
survive, checks that the strided layer equals "full attention, then keep every second pixel",
and measures how the receptive field grows through a stack of halo layers, by running the
hand-written backward pass from a single output pixel.

*Prerequisites:* :doc:`01_blocks_and_halos` and :doc:`02_relative_positions`; the backward pass
as a tool (:doc:`04_backward_passes`). The strided query map is step 1 of the forward pass on
the :doc:`../derivations` page.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from halo_ref import HaloAttention
from halo_ref.viz import (
    MARKERS,
    PALETTE,
    draw_blocks,
    draw_receptive_field,
    scene_image,
    show_figures,
    use_figure_style,
)

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"
use_figure_style()

# %%
# Strided queries
# ---------------
# With block ``b = 8`` and ``stride = 2`` the query map is ``H/2 x W/2`` and a query block is
# ``4 x 4`` query pixels, sitting on the even pixels of the ``8 x 8`` image block; the keys and
# values still come from the whole ``14 x 14`` window. Query ``(i, j)`` of the strided layer is
# the query of image pixel ``(2i, 2j)``. Its *content* logits are those of that pixel in the
# stride-1 layer, so with the position tables set to zero the strided output must be every
# second pixel of the full output.
S = 32
b, h = 8, 3
image = scene_image(S, seed=3)
x = image.transpose(2, 0, 1)[None].copy()  # 1, 3, S, S
full = HaloAttention(3, 8, num_heads=2, block_size=b, halo_size=h, dtype=np.float64, rng=0)
strided = HaloAttention(3, 8, num_heads=2, block_size=b, halo_size=h, stride=2, dtype=np.float64)
strided.load_state_dict(full.state_dict())
print("stride 1 output:", full.forward(x).shape, "  stride 2 output:", strided.forward(x).shape)
print("query block of the strided layer:", strided.block_size_q, "x", strided.block_size_q)


def subsampling_error(a, b_):
    out_full, out_strided = a.forward(x), b_.forward(x)
    return np.max(np.abs(out_strided - out_full[:, :, ::2, ::2])) / np.max(np.abs(out_full))


for layer in (full, strided):
    for name in ("pos_embed.height_rel", "pos_embed.width_rel"):
        layer.params[name][...] = 0.0
err = subsampling_error(full, strided)
print(f"no position term: strided vs every second pixel of full, relative error {err:.1e}")
# same products and sums of the same float64 numbers (only summation order may differ): 1e-12
assert err < 1e-12

# %%
# The position term is different, by design (timm's convention, which halo_ref follows): the
# table index uses the query's position *in the strided block*, ``q_y`` in ``0..3``, not its
# image position ``2 q_y`` in ``0..7``. So a strided query is positioned as if the block were
# squeezed, and with nonzero tables the outputs differ:
rng = np.random.default_rng(1)
for name in ("pos_embed.height_rel", "pos_embed.width_rel"):
    full.params[name][...] = rng.standard_normal(full.params[name].shape)
strided.load_state_dict(full.state_dict())
print(f"with position tables: relative difference {subsampling_error(full, strided):.2f}")

fig, ax = plt.subplots(figsize=(4.6, 4.8), layout="constrained")
draw_blocks(image, b, h, block=(1, 2), ax=ax, title="stride 2: the queries (dots) of block (1, 2)")
qy, qx = np.mgrid[8:16:2, 16:24:2]
ax.plot(qx.ravel(), qy.ravel(), "o", color="#ff2d55", ms=6, mec="white", mew=1.0)

# %%
# How far does one output pixel see?
# ----------------------------------
# The receptive field of an output pixel is the set of input pixels it depends on. The backward
# pass computes exactly that dependence: feed a ``dout`` that is 1 at one output pixel and 0
# elsewhere, and ``|dx|`` is nonzero precisely on the receptive field (and its size says how
# strongly each input pixel matters). We stack halo layers in the pattern of a HaloNet stage:
# stride-1 layers at full resolution, then a stride-2 layer that halves the map, and so on. A
# ReLU between layers makes the stack non-linear, like the real network.


def relu_forward(x):
    return np.maximum(x, 0), x > 0


def stack(depth, size, channels=8, seed=0):
    """Halo layers: at each resolution one stride-1 layer, then a stride-2 layer."""
    rng = np.random.default_rng(seed)
    layers, dim, s = [], 3, size
    for i in range(depth):
        stride = 2 if i % 2 == 1 and s >= 2 * b else 1
        layers.append(
            HaloAttention(
                dim,
                channels,
                num_heads=2,
                block_size=b,
                halo_size=h,
                stride=stride,
                dtype=np.float64,
                rng=rng,
            )
        )
        dim, s = channels, s // stride
    return layers


def influence(layers, x, pixel):
    """|d out[pixel] / d x| summed over channels, by one backward pass through the stack."""
    masks, out = [], x
    for layer in layers:
        out, m = relu_forward(layer.forward(out))
        masks.append(m)
    dout = np.zeros_like(out)
    scale = x.shape[2] // out.shape[2]
    dout[0, :, pixel[0] // scale, pixel[1] // scale] = 1.0
    for layer, m in zip(reversed(layers), reversed(masks), strict=True):
        dout = layer.backward(dout * m)
    return np.abs(dout[0]).sum(axis=0), out.shape[2:]


# The image is large enough that four layers' fields fit inside it (a field cut by the image
# edge would understate the growth); the full run adds two more layers, whose fields the edge
# does cut.
S = 128
image = scene_image(S, seed=5)
x = image.transpose(2, 0, 1)[None].copy()
pixel = (S // 2 + 3, S // 2 - 6)
depths = [1, 2, 3, 4] if QUICK else [1, 2, 3, 4, 5, 6]
layers_all = stack(max(depths), S)
strides = [layer.stride for layer in layers_all]


def analytic_field(strides, p):
    """The input rows (or columns) [lo, hi] that output coordinate p of the stack depends on.

    Walk the layers backwards with an interval of map coordinates: a strided layer's query at
    i sits at input pixel 2i; the queries [lo, hi] lie in the blocks floor(lo/b) .. floor(hi/b),
    whose windows span those blocks grown by h on each side. Not clipped to the image.
    """
    scale = int(np.prod(strides))
    lo = hi = p // scale  # the output pixel, in the last map's coordinates
    for s in reversed(strides):
        lo, hi = lo * s, hi * s  # query positions on this layer's input
        lo, hi = (lo // b) * b - h, (hi // b + 1) * b - 1 + h  # union of the windows
    return lo, hi


fields = []
for depth in depths:
    inf, out_hw = influence(layers_all[:depth], x, pixel)
    rows, cols = np.nonzero(inf)
    extent = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    (r0, r1), (c0, c1) = (analytic_field(strides[:depth], p) for p in pixel)
    analytic = (r1 - r0 + 1, c1 - c0 + 1)
    fields.append((depth, inf, out_hw, extent, analytic))
    print(
        f"{depth} layer(s) (strides {strides[:depth]}): output {out_hw[0]}x{out_hw[1]}, "
        f"field measured {extent[0]}x{extent[1]}, analytic {analytic[0]}x{analytic[1]}"
    )
    # the measured field is the analytic one cut to the image: the same rows and columns
    assert (rows.min(), rows.max()) == (max(r0, 0), min(r1, S - 1)), (depth, r0, r1)
    assert (cols.min(), cols.max()) == (max(c0, 0), min(c1, S - 1)), (depth, c0, c1)

# %%
# Each layer grows the field to the union of the windows of the blocks its input interval
# touches: block edges moved out by ``h``, never a smooth disc, because halo attention sees in
# blocks. Through the stack (stride 1, then 2, then 1, then 2) the sides grow
# 14 -> 30 -> 54 -> 86 pixels: the first layer gives one window, ``b + 2h = 14``; every later
# layer adds whole blocks of its own input, and a block of a map after a stride-2 layer covers
# twice as many image pixels, so the steps grow. The measured field (from the backward pass)
# matches the analytic one row for row while the image contains it (the circles and squares
# coincide). Run without quick mode, the stack has six layers: from five on, the image edge
# cuts the measured field, and the plot shows the two apart.
panels = [f for f in fields if f[0] in (1, 2, 3, 4)]
fig, axes = plt.subplots(2, 2, figsize=(6.8, 6.8), layout="constrained")
for ax, (depth, inf, _, extent, _) in zip(axes.flat, panels, strict=True):
    title = f"{depth} layer(s): {extent[0]}x{extent[1]} pixels"
    draw_receptive_field(image, inf, pixel, ax=ax, title=title, colorbar=False)
fig.colorbar(axes[0, 0].images[-1], ax=axes, shrink=0.7, label="log10 influence / max")
fig.suptitle(f"Receptive field of one output pixel (star), b={b}, h={h}")

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
ds = [f[0] for f in fields]
ax.plot(ds, [f[4][0] for f in fields], marker=MARKERS[0], ms=12, mfc="none", mew=2,
        color=PALETTE[0], label="analytic")  # fmt: skip
ax.plot(ds, [f[3][0] for f in fields], marker=MARKERS[1], ms=5, color=PALETTE[3], ls="--",
        label="measured (backward pass)")  # fmt: skip
for d in ds:
    if strides[d - 1] == 2:
        ax.axvline(d, color="gray", lw=8, alpha=0.2)
ax.axhline(S, color="black", lw=1, ls=":", label=f"image size {S}")
ax.plot([], [], color="gray", lw=8, alpha=0.2, label="stride-2 layer")
ax.set_xlabel("number of halo layers")
ax.set_xticks(ds)
ax.set_ylabel("receptive field side (pixels)")
ax.grid(alpha=0.3)
ax.legend()
ax.set_title("Growth of the receptive field (rows)")

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 2
