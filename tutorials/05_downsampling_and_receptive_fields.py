"""
5. Downsampling and receptive fields
====================================

HaloNet downsamples inside attention (paper, section 3.2): with ``stride=2`` the layer keeps
only every second query in each direction, but each query block still attends to the full
``(b + 2h) x (b + 2h)`` window of the full-resolution keys. This tutorial shows which queries
survive, checks that the strided layer equals "full attention, then keep every second pixel",
and measures how the receptive field grows through a stack of halo layers, by running the
hand-written backward pass from a single output pixel.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from halo_ref import HaloAttention
from halo_ref.viz import draw_blocks, draw_receptive_field, scene_image

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"

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

fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
draw_blocks(image, b, h, block=(1, 2), ax=ax, title="stride 2: the queries (dots) of block (1, 2)")
qy, qx = np.mgrid[8:16:2, 16:24:2]
ax.plot(qx.ravel(), qy.ravel(), "o", color="#ff2d55", ms=5, mec="white", mew=0.7)

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


S = 64 if QUICK else 128
image = scene_image(S, seed=5)
x = image.transpose(2, 0, 1)[None].copy()
pixel = (S // 2 + 3, S // 2 - 6)
depths = [1, 2, 3, 4] if QUICK else [1, 2, 3, 4, 6]
layers_all = stack(max(depths), S)
fields = []
for depth in depths:
    inf, out_hw = influence(layers_all[:depth], x, pixel)
    rows, cols = np.nonzero(inf)
    extent = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    fields.append((depth, inf, out_hw, extent))
    print(
        f"{depth} layer(s): output {out_hw[0]}x{out_hw[1]}, receptive field {extent[0]}x{extent[1]} pixels"
    )

# %%
# Each stride-1 layer grows the field to the union of windows of the blocks it touches, a step
# of ``b`` pixels at a time; after a stride-2 layer every later step counts double, because a
# block of the half-resolution map covers ``2b`` input pixels. The field is always aligned to
# block edges: halo attention sees in blocks, not in circles.
fig, axes = plt.subplots(1, len(fields), figsize=(3.3 * len(fields), 3.8), layout="constrained")
for ax, (depth, inf, _, extent) in zip(axes, fields, strict=True):
    title = f"{depth} layer(s): {extent[0]}x{extent[1]}"
    draw_receptive_field(image, inf, pixel, ax=ax, title=title, colorbar=False)
fig.colorbar(axes[-1].images[-1], ax=axes, shrink=0.8, label="log10 influence / max")
fig.suptitle("Receptive field of one output pixel (star) through a stack of halo layers, b=8, h=3")

fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
ax.plot([f[0] for f in fields], [f[3][0] for f in fields], "o-", label="rows")
ax.plot([f[0] for f in fields], [f[3][1] for f in fields], "s--", label="columns")
ax.axhline(S, color="gray", lw=1, ls=":", label=f"image size {S}")
ax.set_xlabel("number of halo layers")
ax.set_xticks(depths)
ax.set_ylabel("receptive field (pixels)")
ax.grid(alpha=0.3)
ax.legend()
ax.set_title("Growth of the receptive field (measured by backward passes)", fontsize=10)
