"""
2. Relative position embeddings
===============================

Attention by itself ignores where a key is. HaloNet adds to every content logit ``q . k`` a
*relative position logit* that depends only on the offset between key and query (paper,
section 3.1, following Bello et al. 2019 and Ramachandran et al. 2019). It is *factorized*: one
learned table for row offsets and one for column offsets, each with ``2 win - 1`` rows:

.. math::

    \\mathrm{bias}(q, k) = q \\cdot r^H_{k_y - q_y + win - 1} + q \\cdot r^W_{k_x - q_x + win - 1}

where ``(q_y, q_x)`` is the query's position in its block and ``(k_y, k_x)`` the key's position
in the window. This tutorial builds the index arithmetic, draws the bias of one query over its
window, and checks :func:`halo_ref.attention.relpos.relpos_forward` against the formula.

*Prerequisites:* :doc:`01_blocks_and_halos` (blocks, windows, the ``(N, b^2, C)`` and
``(N, (b+2h)^2, C)`` layouts). The :doc:`../shapes` page gives every parameter's shape; the
:doc:`../derivations` page derives the backward pass of these logits, which
:doc:`04_backward_passes` checks.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from halo_ref import HaloAttention
from halo_ref.attention.relpos import relative_indices, relpos_forward
from halo_ref.viz import draw_position_bias, show_figures, use_figure_style

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"
use_figure_style()

# %%
# The index arithmetic
# --------------------
# With block ``b = 4`` and halo ``h = 2`` the window is ``win = 8`` wide. A key row ``k_y`` in
# ``0..7`` and a query row ``q_y`` in ``0..3`` (in window coordinates the query sits at
# ``q_y + h``) have an offset ``k_y - q_y`` from ``-3`` to ``7``; adding ``win - 1 = 7`` turns it
# into a table row from ``4`` to ``14``. So of the ``2 win - 1 = 15`` rows only ``b + win - 1``
# are ever used; timm (and halo_ref, for weight compatibility) keep the full table.
b, h = 4, 2
win = b + 2 * h
idx_h, idx_w = relative_indices(b, win)  # (b*b, win) each
print("idx_h shape", idx_h.shape, "- one row of table indices per query, one column per key row")
for p in (0, 5, 15):
    qy, qx = divmod(p, b)
    print(f"query {p:2d} at ({qy}, {qx}): height rows {idx_h[p]}, width rows {idx_w[p]}")
print(
    "table rows used:", np.unique(idx_h).min(), "to", np.unique(idx_h).max(), f"of 0..{2 * win - 2}"
)

# %%
# A table we can read: "prefer nearby keys"
# -----------------------------------------
# Note that ``k_y - q_y`` mixes two frames: ``k_y`` counts rows of the *window*, ``q_y`` rows of
# the *block*, and the block starts ``h`` rows into the window. The geometric offset of a key
# from its query is ``k_y - (q_y + h)``, so the table row of "same row as the query" is
# ``win - 1 + h``, not the middle row ``win - 1``. To see this at work we hand-build tables
# whose logit is minus the squared geometric offset: with ``d = 1`` and ``q = 1``, row ``r``
# holds ``-(r - (win - 1) - h)^2 / 4``. The bias of a query is then a round bump centred on the
# query, and it moves with the query: translation equivariance, the property that lets one
# table serve every query of every block.
offsets = np.arange(2 * win - 1) - (win - 1) - h  # geometric offset of each table row
table = (-(offsets**2) / 4.0)[:, None]  # 2*win-1, d=1
q = np.ones((b * b, 1))  # every query of the block, d = 1
bias, _ = relpos_forward(q, table, table, b)  # b*b, win*win

shown = [(0, 0), (1, 2), (2, 1), (3, 3)]
lo, hi = bias.min(), bias.max()  # one colour scale for all four panels, so they compare
fig, axes = plt.subplots(2, 2, figsize=(6.6, 6.4), layout="constrained")
for ax, (qy, qx) in zip(axes.flat, shown, strict=True):
    draw_position_bias(
        bias[qy * b + qx], b, h, (qy, qx), ax=ax, cmap="viridis", vmin=lo, vmax=hi, colorbar=False
    )
for ax in axes[0]:
    ax.set_xlabel("")
for ax in axes[:, 1]:
    ax.set_ylabel("")
fig.colorbar(axes[0, 0].images[-1], ax=axes, shrink=0.7, label="position logit")
fig.suptitle("Logit -(offset)^2/4 over the window: the bump follows the query")
# the peak of each map is exactly at its query: an exact integer-valued check, no tolerance
for qy, qx in shown:
    peak = np.unravel_index(np.argmax(bias[qy * b + qx]), (win, win))
    assert peak == (qy + h, qx + h), peak

# %%
# Checking the fast path against the formula
# ------------------------------------------
# :func:`~halo_ref.attention.relpos.relpos_forward` computes ``q @ table.T`` once (one logit per offset)
# and then *picks* entries by index, instead of forming a ``win*win`` vector per query. We check
# it against a loop over the definition with random queries and tables. Both sides add the same
# two float64 dot products of length ``d``, only in a different order, so they agree to a few
# ulps: a tolerance of ``1e-12`` relative is ample and still catches any indexing slip (which
# would be an O(1) error).
rng = np.random.default_rng(0)
d = 3
qr = rng.standard_normal((b * b, d))
th, tw = rng.standard_normal((2 * win - 1, d)), rng.standard_normal((2 * win - 1, d))
fast, _ = relpos_forward(qr, th, tw, b)
slow = np.empty((b * b, win * win))
for p in range(b * b):
    qy, qx = divmod(p, b)
    for ky in range(win):
        for kx in range(win):
            row_h, row_w = ky - qy + win - 1, kx - qx + win - 1
            slow[p, ky * win + kx] = qr[p] @ th[row_h] + qr[p] @ tw[row_w]
err = np.max(np.abs(fast - slow)) / np.max(np.abs(slow))
print(f"relpos_forward vs the formula: relative error {err:.1e}")
assert err < 1e-12

# %%
# The bias of a freshly initialised layer
# ---------------------------------------
# A real layer starts from random tables (truncated normal with std ``d**-0.5``), so its bias is
# noise, but it is already *factorized noise*: each map is a row profile plus a column profile,
# which shows as stripes. Both panels share one colour scale, centred on zero. Training shapes
# these profiles: :doc:`08_trained_attention` draws the tables of a HaloNet trained on
# CIFAR-10 against their initial values.
layer = HaloAttention(16, 16, num_heads=2, block_size=b, halo_size=h, dtype=np.float64, rng=1)
rel_h, rel_w = layer.params["pos_embed.height_rel"], layer.params["pos_embed.width_rel"]
q_layer = rng.standard_normal((b * b, layer.dim_head_qk))
bias_layer, _ = relpos_forward(q_layer, rel_h, rel_w, b)
lim = np.abs(bias_layer).max()
fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), layout="constrained")
for ax, (qy, qx) in zip(axes, [(0, 0), (2, 1)], strict=True):
    draw_position_bias(
        bias_layer[qy * b + qx], b, h, (qy, qx), ax=ax, vmin=-lim, vmax=lim, colorbar=False
    )
axes[1].set_ylabel("")
fig.colorbar(axes[0].images[-1], ax=axes, shrink=0.8, label="position logit")
fig.suptitle("Random initial tables: a row profile plus a column profile")

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 1
