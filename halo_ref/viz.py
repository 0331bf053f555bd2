"""Pictures of halo attention (paper, section 3.1 and figure 2): blocks and halos over an image,
attention masks, relative-position biases, attention maps, receptive fields and training curves.

Every drawing function takes an optional matplotlib `ax` and returns it, so the tutorials and the
CLI compose them into figures of their own. Nothing here calls `plt.show()` or picks a backend:
library code must run headless (Agg) in tests, in the docs build and on servers. `save_figure`
writes a PNG atomically (a temporary file in the same folder, then `os.replace`).

Images are (H, W) grey or (H, W, 3) RGB floats in [0, 1]; channel-first (C, H, W) arrays are
accepted too and moved to the last axis for display.
"""

from __future__ import annotations

import os

import numpy as np

from ._atomic import atomic_write
from ._checks import HaloRefError
from .attention.core import halo_attention_forward
from .attention.layer import HaloAttention

# colours used consistently across the tutorials: the query block, its halo window, the query
BLOCK_COLOUR = "#ffb000"
WINDOW_COLOUR = "#00c2ff"
QUERY_COLOUR = "#ff2d55"

# Okabe and Ito's palette, told apart with every common colour-vision deficiency: the line colours
# of every plot (with a different marker per line as well, for greyscale printing)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

# Figures are drawn at most 7 in wide and saved at 100 dpi (plus a 2x copy for sharp screens), so
# on a page column of about 700 px they are shown at their own size and 11-pt text stays 15 px.
FIGURE_STYLE = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 12,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "image.interpolation": "nearest",  # a pixel is a pixel: no smoothing across block edges
    "lines.linewidth": 1.8,
    # constrained layout's default 3-px margin lets the tops of titles touch the image edge
    "figure.constrained_layout.h_pad": 0.1,
    "figure.constrained_layout.w_pad": 0.06,
}


def _plt():
    """pyplot, imported lazily so that `import halo_ref` never imports matplotlib."""
    import matplotlib.pyplot as plt

    return plt


def use_figure_style():
    """Apply `FIGURE_STYLE` and the colour-blind-safe `PALETTE` to matplotlib's defaults.

    The tutorials call it first, so their figures look the same run as scripts, in the tests and
    on the documentation site.
    """
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(FIGURE_STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)


def show_figures(argv=None, animations=()):
    """End a tutorial: show its figures, or save them with `--save DIR`.

    argv: the command-line arguments (default `sys.argv[1:]`). With `--save DIR` every open figure
    is written as DIR/figure_NN.png (the folder must exist) and each of `animations`
    (matplotlib `FuncAnimation`s) as DIR/animation_K.gif; otherwise `plt.show()` opens a window
    per figure on a desktop backend, animations playing. On a headless backend (Agg: tests, the
    documentation build, a server) nothing is shown, and a script run prints how to save the
    figures instead. Returns the paths written.
    """
    import sys

    import matplotlib as mpl

    plt = _plt()
    args = list(sys.argv[1:] if argv is None else argv)
    nums = plt.get_fignums()
    if "--save" in args:
        i = args.index("--save")
        if i + 1 >= len(args):
            raise HaloRefError("--save needs a folder: --save DIR")
        folder = args[i + 1]
        paths = [os.path.join(folder, f"figure_{n:02d}.png") for n in nums]
        for n, path in zip(nums, paths, strict=True):
            save_figure(plt.figure(n), path, dpi=200)
        for k, anim in enumerate(animations):
            gif = os.path.join(folder, f"animation_{k}.gif")
            anim.save(gif, writer="pillow", dpi=100)  # Pillow ships with matplotlib
            paths.append(gif)
        print(f"saved {len(paths)} file(s) into {folder}")
        return paths
    if mpl.get_backend().lower() == "agg":
        if nums:  # the documentation build has closed them all by now: silent there
            print(f"{len(nums)} figure(s) drawn; no display here: add --save DIR to write them")
        return []
    plt.show()
    return []


def _axes(ax, figsize=(4.5, 4.5)):
    if ax is None:
        _, ax = _plt().subplots(figsize=figsize, layout="constrained")
    return ax


def as_display_image(image):
    """Return `image` as (H, W) or (H, W, 3) floats in [0, 1] for `imshow`.

    image: (H, W), (H, W, 3), (1, H, W) or (3, H, W); values are rescaled to [0, 1] when they
    fall outside it.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # C, H, W -> H, W, C
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise HaloRefError(
            f"image must be (H, W), (H, W, 3) or (3, H, W), got shape {img.shape}; "
            "pass one image, not a batch (use x[0])"
        )
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def scene_image(size=64, seed=0):
    """A synthetic but natural-looking RGB landscape: sky, sun, mountains, a lake and trees.

    Returns (size, size, 3) floats in [0, 1]. Deterministic for a given seed; no download.
    """
    size = int(size)
    if size < 8:
        raise HaloRefError(f"scene_image: size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)  # rows go down, columns go right, both in [0, 1]
    img = np.empty((size, size, 3))
    # sky: deep blue at the top fading to a warm haze at the horizon
    horizon = 0.62
    t = np.clip(y / horizon, 0, 1)[..., None]
    img[:] = (1 - t) * np.array([0.20, 0.42, 0.80]) + t * np.array([0.98, 0.80, 0.62])
    # sun: a bright disc with a soft glow
    r = np.hypot(x - 0.72, y - 0.30)
    glow = np.exp(-((r / 0.16) ** 2))[..., None]
    img = img * (1 - 0.6 * glow) + 0.6 * glow * np.array([1.0, 0.93, 0.70])
    img[r < 0.07] = np.array([1.0, 0.97, 0.85])

    # mountains: two ridges of summed sines; nearer ridges are darker and lower
    def ridge(base, amp, freqs, colour, snow):
        phases = rng.uniform(0, 2 * np.pi, len(freqs))
        line = base + amp * sum(
            np.sin(2 * np.pi * f * x[0] + p) / (i + 1)
            for i, (f, p) in enumerate(zip(freqs, phases, strict=True))
        )
        below = y >= line[None, :]
        shade = 0.85 + 0.15 * np.cos(9 * x + 3 * y)  # gentle light and shadow on the slopes
        img[below] = (colour * shade[..., None])[below]
        cap = below & (y < line[None, :] + snow)
        img[cap] = np.array([0.93, 0.95, 0.98])

    ridge(0.42, 0.08, [1.3, 3.1, 7.0], np.array([0.45, 0.45, 0.62]), 0.035)
    ridge(0.55, 0.05, [2.2, 5.3, 11.0], np.array([0.22, 0.36, 0.30]), 0.0)
    # lake: reflects the sky, with ripples
    lake = y > horizon
    ripple = 0.06 * np.sin(60 * y + 4 * np.sin(12 * x))
    img[lake] = (np.array([0.25, 0.45, 0.70]) + ripple[..., None] * np.array([1, 1, 1]))[lake]
    # trees on the near shore: dark triangles of random heights
    for cx in np.sort(rng.uniform(0.02, 0.98, 7)):
        height = rng.uniform(0.10, 0.22)
        top = horizon + 0.04 - height
        inside = (y > top) & (y < horizon + 0.05) & (np.abs(x - cx) < 0.35 * (y - top))
        img[inside] = np.array([0.08, 0.25, 0.14])
    img += rng.normal(0, 0.015, img.shape)  # a little sensor noise, like a photograph
    return np.clip(img, 0.0, 1.0)


def draw_blocks(image, block_size, halo_size, *, block=None, ax=None, title=None):
    """Draw the block grid over an image and, for one block, its (b+2h) x (b+2h) halo window.

    image: (H, W) or (H, W, 3); block: (row, column) of the highlighted block, or None.
    The window is drawn where it falls, also beyond the image edge, where it reads zeros.
    """
    ax = _axes(ax)
    img = as_display_image(image)
    H, W = img.shape[:2]
    b, h = int(block_size), int(halo_size)
    if H % b or W % b:
        raise HaloRefError(f"draw_blocks: H={H} and W={W} must be multiples of block_size={b}")
    cmap = "gray" if img.ndim == 2 else None
    ax.imshow(img, cmap=cmap, vmin=0, vmax=1, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    for k in range(0, H + 1, b):
        ax.axhline(k - 0.5, color="white", lw=0.8, alpha=0.8)
    for k in range(0, W + 1, b):
        ax.axvline(k - 0.5, color="white", lw=0.8, alpha=0.8)
    pad = h + 0.5
    if block is not None:
        Rect = _plt().Rectangle
        i, j = block
        y0, x0 = i * b - 0.5, j * b - 0.5
        ax.add_patch(
            Rect(
                (x0 - h, y0 - h),
                b + 2 * h,
                b + 2 * h,
                fill=False,
                lw=2.5,
                ls="--",
                ec=WINDOW_COLOUR,
                label=f"halo window {b + 2 * h}x{b + 2 * h}",
            )
        )
        ax.add_patch(Rect((x0, y0), b, b, fill=True, alpha=0.35, lw=0, fc=BLOCK_COLOUR))
        # a solid outline of its own: the translucent fill alone vanishes on warm colours
        ax.add_patch(
            Rect((x0, y0), b, b, fill=False, lw=3, ec=BLOCK_COLOUR, label=f"query block {b}x{b}")
        )
    ax.set_xlim(-pad - 0.5, W - 0.5 + pad)
    ax.set_ylim(H - 0.5 + pad, -pad - 0.5)
    ax.set_facecolor("#d9d9d9")  # the zero padding outside the image
    ax.set_xticks([])
    ax.set_yticks([])
    if title is None:
        title = f"{H}x{W} image, blocks b={b}, halo h={h}"
        if block is not None:
            title += f"\nblock {tuple(block)} (orange), window {b + 2 * h}x{b + 2 * h} (blue)"
    ax.set_title(title)
    return ax


def draw_neighbourhood(image, keep, query, *, ax=None, title=None):
    """Tint the pixels one query attends to.

    image: (H, W) or (H, W, 3); keep: bool (H, W), True where the query may attend;
    query: (row, column) of the query pixel.
    """
    ax = _axes(ax)
    img = as_display_image(image)
    grey = img if img.ndim == 2 else img @ np.array([0.299, 0.587, 0.114])
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != grey.shape:
        raise HaloRefError(f"draw_neighbourhood: keep has shape {keep.shape}, image {grey.shape}")
    rgb = np.repeat(0.35 + 0.3 * grey[..., None], 3, axis=-1)  # dimmed grey for the ignored
    shown = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
    rgb[keep] = shown[keep]
    ax.imshow(rgb)
    ax.contour(keep.astype(float), levels=[0.5], colors=[WINDOW_COLOUR], linewidths=1.5)
    ax.plot(query[1], query[0], marker="*", ms=12, color=QUERY_COLOUR, mec="white", mew=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def draw_mask(mask, *, ax=None, title=None, block_lines=None, xlabel="key", ylabel="query"):
    """Draw an attention mask: allowed pairs bright, masked pairs dark.

    mask: (Nq, Nk), additive (0 / -inf) or boolean (True = allowed);
    block_lines: optional (query_step, key_step) to draw a grid every so many rows/columns.
    """
    ax = _axes(ax, figsize=(6, 4))
    m = np.asarray(mask)
    allowed = m if m.dtype == bool else np.isfinite(m)
    ax.imshow(allowed, cmap="magma", vmin=0, vmax=1.25, interpolation="nearest", aspect="auto")
    if block_lines is not None:
        rstep, cstep = block_lines
        for r in range(rstep, allowed.shape[0], rstep):
            ax.axhline(r - 0.5, color=WINDOW_COLOUR, lw=1.2)
        for c in range(cstep, allowed.shape[1], cstep):
            ax.axvline(c - 0.5, color=WINDOW_COLOUR, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    frac = allowed.mean()
    ax.set_title(title or f"attention mask ({100 * frac:.1f}% of pairs allowed)")
    return ax


def draw_position_bias(
    bias,
    block_size,
    halo_size,
    query,
    *,
    ax=None,
    title=None,
    cmap="RdBu_r",
    symmetric=True,
    vmin=None,
    vmax=None,
    colorbar=True,
):
    """Heat map of the relative-position logits of one query over its window.

    bias: (win, win) or (win*win,), win = block_size + 2*halo_size; query: (row, column) of the
    query inside its block. The query block is outlined and the query starred (black with a
    white rim: visible on every colour of a diverging map). symmetric: a colour scale centred on
    zero (for a diverging `cmap`); False spans min..max. vmin, vmax: a fixed scale instead, to
    share one scale between panels that are compared. Returns the axes; the image is
    `ax.images[-1]` (for a colour bar shared by several panels, with `colorbar=False`).
    """
    b, h = int(block_size), int(halo_size)
    win = b + 2 * h
    bias = np.asarray(bias, dtype=np.float64).reshape(win, win)
    ax = _axes(ax)
    if vmin is None and vmax is None and symmetric:
        lim = float(np.max(np.abs(bias))) or 1.0
        vmin, vmax = -lim, lim
    im = ax.imshow(bias, cmap=cmap, vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label="position logit")
    Rect = _plt().Rectangle
    ax.add_patch(Rect((h - 0.5, h - 0.5), b, b, fill=False, ec=BLOCK_COLOUR, lw=2.5))
    ax.plot(h + query[1], h + query[0], "*", ms=15, color="black", mec="white", mew=1.2)
    ax.set_xlabel("key column in window")
    ax.set_ylabel("key row in window")
    ax.set_title(title or f"position bias of query {tuple(query)}")
    return ax


def draw_attention(image, weights, query, *, ax=None, title=None, cmap="Blues", colorbar=True):
    """Overlay attention weights (H, W) of one query on the image (H, W) or (H, W, 3).

    The image stays visible where the weight is small: each pixel's overlay opacity grows with
    its weight, and the window (every pixel with a nonzero weight) is outlined.
    """
    ax = _axes(ax)
    img = as_display_image(image)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != img.shape[:2]:
        raise HaloRefError(f"draw_attention: weights {w.shape} do not match image {img.shape[:2]}")
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    rel = w / (float(w.max()) or 1.0)
    # square root: weights spread over a window are small; this keeps the weaker ones visible
    overlay = ax.imshow(rel, cmap=cmap, alpha=0.85 * np.sqrt(rel), vmin=0, vmax=1)
    if colorbar:
        ax.figure.colorbar(overlay, ax=ax, shrink=0.8, label="weight / max")
    if (w > 0).any() and not (w > 0).all():
        ax.contour((w > 0).astype(float), levels=[0.5], colors=[WINDOW_COLOUR], linewidths=1.5)
    ax.plot(query[1], query[0], "*", ms=13, color=QUERY_COLOUR, mec="white", mew=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"attention of query {tuple(query)}")
    return ax


def draw_receptive_field(image, influence, output_pixel, *, ax=None, title=None, colorbar=True):
    """Show which input pixels influence one output pixel, e.g. |d out / d x| from a backward pass.

    image: (H, W) or (H, W, 3); influence: (H, W) non-negative; output_pixel: (row, column) in
    input coordinates. The outline encloses every pixel with nonzero influence.
    """
    ax = _axes(ax)
    img = as_display_image(image)
    inf = np.asarray(influence, dtype=np.float64)
    if inf.shape != img.shape[:2]:
        raise HaloRefError(
            f"draw_receptive_field: influence {inf.shape} does not match image {img.shape[:2]}"
        )
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    nz = inf > 0
    if nz.any():
        # log scale: influence decays by orders of magnitude towards the edge of the field
        logi = np.where(nz, np.log10(np.where(nz, inf, 1.0) / inf.max()), np.nan)
        shown = np.clip(logi, -6, 0)
        im = ax.imshow(shown, cmap="viridis", alpha=0.7, vmin=-6, vmax=0)
        if colorbar:
            ax.figure.colorbar(im, ax=ax, shrink=0.8, label="log10 influence / max")
        ax.contour(nz.astype(float), levels=[0.5], colors=["white"], linewidths=1.2)
    ax.plot(output_pixel[1], output_pixel[0], "*", ms=13, color=QUERY_COLOUR, mec="white", mew=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "receptive field")
    return ax


def plot_training_curves(history, *, axes=None, title=None):
    """Loss and accuracy against epoch.

    history: mapping with "epoch" and any of "<split>_loss" and "<split>_acc" for the splits
    "train", "val" and "test" (equal-length sequences; accuracies in [0, 1]).
    axes: two axes, or None for a new figure.
    Returns the two axes (loss, accuracy).
    """
    if "epoch" not in history:
        raise HaloRefError("plot_training_curves: history needs an 'epoch' entry")
    if axes is None:
        _, axes = _plt().subplots(1, 2, figsize=(7, 3.2), layout="constrained")
    ax_loss, ax_acc = axes
    epoch = np.asarray(history["epoch"])
    styles = {
        "train": dict(color="#1f77b4", marker="o"),
        "val": dict(color="#d62728", marker="s"),
        "test": dict(color="#d62728", marker="s"),
    }
    for split, style in styles.items():
        if f"{split}_loss" in history:
            ax_loss.plot(epoch, history[f"{split}_loss"], label=split, ms=3, **style)
        if f"{split}_acc" in history:
            acc = 100 * np.asarray(history[f"{split}_acc"], dtype=np.float64)
            ax_acc.plot(epoch, acc, label=split, ms=3, **style)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        ax_loss.figure.suptitle(title)
    return axes


def window_to_image(weights, H, W, block_size, halo_size, block):
    """Place window-shaped values (win*win,) of block (row, column) onto an (H, W) map.

    Window pixels outside the image are dropped. Used to show one query's attention in image
    coordinates.
    """
    b, h = int(block_size), int(halo_size)
    win = b + 2 * h
    w = np.asarray(weights, dtype=np.float64).reshape(win, win)
    out = np.zeros((H + 2 * h, W + 2 * h))
    i, j = block
    out[i * b : i * b + win, j * b : j * b + win] = w  # window (i, j) starts at padded (ib, jb)
    return out[h : h + H, h : h + W]


def halo_layers(module, prefix: str = "") -> list[tuple[str, HaloAttention]]:
    """(name, layer) of every `HaloAttention` inside `module` (a model), in the order the input
    meets them: the layers `query_attention` can show."""
    found = []
    for name, child in module.children().items():
        if isinstance(child, HaloAttention):
            found.append((f"{prefix}{name}", child))
        found.extend(halo_layers(child, f"{prefix}{name}."))
    return found


def query_attention(layer, x, query, *, sample=0):
    """Attention weights of one query of a `HaloAttention` layer, placed on the input grid.

    layer: a `halo_ref.HaloAttention`; x: its input (B, dim, H, W); query: (row, column) in the
    layer's query map (H/s, W/s for query stride s). Recomputes the attention of image `sample`
    with the NumPy core and returns the weights averaged over heads, (H, W).
    """
    p = layer.params
    xs = np.asarray(x)[sample : sample + 1]
    H, W = xs.shape[2:]
    q_map, kv_map = layer.project(xs)
    rel = p["pos_embed.height_rel"], p["pos_embed.width_rel"]
    _, cache = halo_attention_forward(q_map, kv_map, *rel, **layer.core_kwargs())
    attn = cache.attn  # 1, heads, N, Pq, Pw: the softmax weights kept for the backward pass
    bq = layer.block_size_q
    qy, qx = query
    nw = W // layer.block_size
    n, pix = (qy // bq) * nw + qx // bq, (qy % bq) * bq + qx % bq
    weights = attn[0, :, n, pix, :].mean(axis=0)  # Pw
    return window_to_image(weights, H, W, layer.block_size, layer.halo_size, (qy // bq, qx // bq))


def save_figure(fig, path, *, dpi=120):
    """Write `fig` as a PNG at `path` atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise HaloRefError(f"save_figure: folder {folder!r} does not exist; create it first")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
