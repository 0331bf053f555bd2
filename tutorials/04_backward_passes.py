"""
4. Backward passes, derived and checked
=======================================

halo_ref has no autograd: every forward has a backward written by hand. This tutorial derives
the three that make up halo attention (softmax, attention itself, relative position logits),
checks each against float64 finite differences with :func:`halo_ref.verification.testing.check_gradients`,
and then plants a bug to show what a failing check looks like. The full derivations, with every
index, are on the *Derivations* page of the documentation.

The recipe for every backward: the forward computes ``y = f(x)``; the backward receives
``dy = dL/dy`` for some scalar loss ``L`` and returns ``dx = dL/dx``, the chain rule written
out: ``dx_i = sum_j dy_j * dy_j/dx_i``.

*Prerequisites:* :doc:`01_blocks_and_halos` (why the gather's backward is a scatter-add),
:doc:`02_relative_positions`, and the chain rule. Every formula used here is derived with all
its indices on the :doc:`../derivations` page; ``halo-ref exercises DIR`` (the
:doc:`../exercises` page) has you write these backward passes yourself, graded by halo_ref.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import halo_ref.attention.core as attention
from halo_ref.attention.core import halo_attention_backward, halo_attention_forward
from halo_ref.attention.relpos import relpos_backward, relpos_forward
from halo_ref.nn.functional import softmax_backward, softmax_forward
from halo_ref.verification.testing import GradientCheckError, check_gradients
from halo_ref.viz import PALETTE, show_figures, use_figure_style

QUICK = os.environ.get("HALO_REF_TUTORIAL_QUICK", "0") == "1"
rng = np.random.default_rng(0)
use_figure_style()

# %%
# How a gradient is checked
# -------------------------
# For a random cotangent ``c`` the loss ``L(x) = sum(c * f(x))`` has gradient ``dx =
# backward(c)``. Pick a random direction ``u``; the central difference
# ``(L(x + eps u) - L(x - eps u)) / (2 eps)`` must equal ``sum(dx * u)``. With ``eps = 1e-6`` in
# float64 the truncation error of the central difference is about ``eps^2 = 1e-12`` relative
# (it is ``eps^2 / 6`` times the third derivative along ``u``), and the rounding error about
# ``1e-16 / eps = 1e-10`` relative (the two losses are rounded to 16 digits, then their
# difference is divided by ``eps``). So the default tolerance ``rtol = 1e-7`` is loose enough
# never to fail a correct gradient and tight enough to catch any wrong one (those are off by
# order 1).
#
# Softmax
# -------
# ``p_i = exp(z_i) / sum_k exp(z_k)`` has Jacobian ``dp_i/dz_j = p_i (delta_ij - p_j)``, so
#
# .. math::
#
#     dz_j = \sum_i dp_i \, p_i (\delta_{ij} - p_j) = p_j \Big(dp_j - \sum_i dp_i \, p_i\Big).
#
# One row at a time, no ``n x n`` Jacobian is ever built.
z = rng.standard_normal((3, 5))
c = rng.standard_normal((3, 5))
p, cache = softmax_forward(z)
errs = check_gradients(
    lambda: float(np.sum(c * softmax_forward(z)[0])), {"z": z}, {"z": softmax_backward(c, cache)}
)
print(f"softmax: relative error {errs['z']:.1e}")

# %%
# Attention
# ---------
# Per head and block: logits ``S = s Q K^T + B`` (``s = d^{-1/2}``, ``B`` the position bias),
# weights ``A = softmax(S)`` row by row, output ``O = A V``. Going backwards:
#
# .. math::
#
#     dV = A^T dO, \qquad dA = dO \, V^T, \qquad dS = \mathrm{softmax\_backward}(dA, A),
#
#     dQ = s \, dS \, K + dQ_{\mathrm{rel}}, \qquad dK = s \, dS^T Q, \qquad dB = dS.
#
# Windows overlap, so one pixel's key lands in several windows: the backward of the gather is
# a scatter-*add* (:func:`~halo_ref.attention.blocking.scatter_windows`). We check the whole core,
# :func:`~halo_ref.attention.core.halo_attention_backward`, with respect to all four inputs.
b, h, heads, d_qk, d_v = 4, 2, 2, 3, 2
H, W = 8, 12
win = b + 2 * h
arrays = {
    "q_map": rng.standard_normal((2, heads * d_qk, H, W)),
    "kv_map": rng.standard_normal((2, heads * (d_qk + d_v), H, W)),
    "height_rel": 0.5 * rng.standard_normal((2 * win - 1, d_qk)),
    "width_rel": 0.5 * rng.standard_normal((2 * win - 1, d_qk)),
}
kw = dict(num_heads=heads, block_size=b, halo_size=h, scale=d_qk**-0.5)
names = list(arrays)


def core_loss(cot):
    return float(np.sum(cot * halo_attention_forward(*arrays.values(), **kw)[0]))


def core_grads(cot):
    _, cache = halo_attention_forward(*arrays.values(), **kw)
    return dict(zip(names, halo_attention_backward(cot, cache), strict=True))


cot = rng.standard_normal((2, heads * d_v, H, W))
core_errors = check_gradients(lambda: core_loss(cot), arrays, core_grads(cot), rng=1)
for name, e in core_errors.items():
    print(f"attention core, d{name}: relative error {e:.1e}")

# %%
# Relative position logits
# ------------------------
# The forward computes ``T^H = q (r^H)^T`` (one logit per table row) and picks
# ``B[p, k_y, k_x] = T^H[p, i^H(p, k_y)] + T^W[p, i^W(p, k_x)]`` with the index arrays of
# :func:`~halo_ref.attention.relpos.relative_indices`. Backwards, each part sees the sum over the other
# axis, the picks become scatters, and the products are ordinary matrix products:
#
# .. math::
#
#     dT^H[p, i^H(p, k_y)] = \sum_{k_x} dB[p, k_y, k_x], \qquad
#     dq = dT^H r^H + dT^W r^W, \qquad dr^H = (dT^H)^T q.
#
# Within one query the indices ``i^H(p, \cdot)`` are distinct, so the scatter may *put* instead
# of add; across queries the table gradient *sums* through the matrix product.
q = rng.standard_normal((b * b, d_qk))
rel = {"q": q, "height_rel": arrays["height_rel"].copy(), "width_rel": arrays["width_rel"].copy()}
cot_b = rng.standard_normal((b * b, win * win))


def rel_loss():
    return float(
        np.sum(cot_b * relpos_forward(rel["q"], rel["height_rel"], rel["width_rel"], b)[0])
    )


def rel_grads(backward):
    _, cache = relpos_forward(rel["q"], rel["height_rel"], rel["width_rel"], b)
    return dict(zip(rel, backward(cot_b, cache), strict=True))


rel_errors = check_gradients(rel_loss, rel, rel_grads(relpos_backward), rng=2)
for name, e in rel_errors.items():
    print(f"relative logits, d{name}: relative error {e:.1e}")

# %%
# Planting a bug: swapped axes
# ----------------------------
# A classic slip: scatter the *height* gradient with the *width* indices. The shapes all agree,
# so nothing crashes; only the check can tell. We write that buggy backward and check it.


def relpos_backward_swapped(dbias, cache):
    """relpos_backward with idx_h and idx_w exchanged: a planted bug."""
    q, rh, rw, idx_h, idx_w = cache
    return relpos_backward(dbias, (q, rh, rw, idx_w, idx_h))


try:
    check_gradients(rel_loss, rel, rel_grads(relpos_backward_swapped), rng=2)
except GradientCheckError as exc:
    print("planted bug caught:", str(exc)[:300], "...")
else:
    raise AssertionError("the planted bug was not caught")

# %%
# What the bug looks like, entry by entry: we compute the finite-difference gradient of every
# entry of the height table (2 forward passes per entry) and set it beside the correct and the
# buggy hand-written gradients. The correct one matches everywhere. The buggy one touches the
# same table rows (4 to 14: with ``b = 4`` rows 0 to 3 are never used) but fills them with the
# wrong values.


def numeric_gradient(loss, arr, eps=1e-6):
    """Central differences, one entry at a time (fine for small arrays)."""
    g = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        saved = arr[i]
        arr[i] = saved + eps
        plus = loss()
        arr[i] = saved - eps
        minus = loss()
        arr[i] = saved
        g[i] = (plus - minus) / (2 * eps)
    return g


numeric = numeric_gradient(rel_loss, rel["height_rel"])
good = rel_grads(relpos_backward)["height_rel"]
bad = rel_grads(relpos_backward_swapped)["height_rel"]
# float64 central differences of a function that is linear in the table: error ~1e-9 relative
assert np.max(np.abs(good - numeric)) < 1e-6 * np.max(np.abs(numeric))

fig, axes = plt.subplots(2, 2, figsize=(6.8, 6.6), layout="constrained")
# one colour scale for all four panels (they are compared), wide enough that none is clipped
lim = max(np.max(np.abs(numeric)), np.max(np.abs(bad)), np.max(np.abs(bad - numeric)))
panels = [
    (numeric, "finite differences"),
    (good, "hand-written (correct)"),
    (bad, "hand-written (planted bug)"),
    (bad - numeric, "bug minus finite differences"),
]
for ax, (g, title) in zip(axes.flat, panels, strict=True):
    im = ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_title(title)
    ax.set_xticks(range(g.shape[1]))
for ax in axes[1]:
    ax.set_xlabel("channel")
for ax in axes[:, 0]:
    ax.set_ylabel("table row")
fig.colorbar(im, ax=axes, shrink=0.7, label="dL / d height_rel")
fig.suptitle("Gradient of the height table: the planted bug is visible entry by entry")

# %%
# A second planted bug: softmax without its correction term
# ---------------------------------------------------------
# Dropping ``- sum(dp * p)`` from the softmax backward is another classic. We plant it in the
# attention core and run the core's check again. The relative errors say *which* inputs are
# wrong: every input that reaches the output through the softmax (queries, keys, tables) fails,
# while the values (inside ``kv_map`` together with the keys) would pass on their own.
good_softmax = attention.softmax_backward
attention.softmax_backward = lambda dp, p: p * dp  # the bug
try:
    # rtol=inf: never raise, just return the relative error of each input
    buggy_errors = check_gradients(
        lambda: core_loss(cot), arrays, core_grads(cot), rng=1, rtol=np.inf
    )
finally:
    attention.softmax_backward = good_softmax
print("relative errors with the softmax bug:", {k: f"{v:.2g}" for k, v in buggy_errors.items()})
assert min(buggy_errors.values()) > 1e-3

fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
pos = np.arange(len(names))
ax.bar(pos - 0.2, [max(core_errors[n], 1e-17) for n in names], 0.4, label="correct backward",
       color=PALETTE[0])  # fmt: skip
ax.bar(pos + 0.2, [buggy_errors[n] for n in names], 0.4, label="softmax bug", color=PALETTE[3],
       hatch="//", edgecolor="white")  # fmt: skip
ax.axhline(1e-7, color="black", ls="--", lw=1.2, label="tolerance rtol = 1e-7")
ax.set_yscale("log")
ax.set_xticks(pos, names)
ax.set_ylabel("relative error")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3, fontsize=9)
ax.set_title("Gradient check of the attention core: correct versus planted bug")

# %%
show_figures()

# sphinx_gallery_thumbnail_number = 1
