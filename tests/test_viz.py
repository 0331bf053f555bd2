"""Tests of halo_ref.viz: the data helpers are exact, the drawings put things where they belong,
bad input gets a one-line HaloRefError, and figures are written atomically."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # headless, whatever the environment says

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from halo_ref import (
    HaloAttention,  # noqa: E402
    viz,  # noqa: E402
)
from halo_ref._checks import HaloRefError  # noqa: E402
from halo_ref.attention.blocking import gather_windows, window_inside_image  # noqa: E402
from halo_ref.attention.dense import dense_halo_attention_forward  # noqa: E402
from halo_ref.nn.functional import conv1x1_forward  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_importing_viz_does_not_import_pyplot():
    # library code must not pick a backend or open windows on import
    code = "import sys, halo_ref.viz; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scene_image_is_a_deterministic_rgb_image():
    a, b = viz.scene_image(32, seed=1), viz.scene_image(32, seed=1)
    assert a.shape == (32, 32, 3)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)  # same seed, same picture: exact
    assert not np.array_equal(a, viz.scene_image(32, seed=2))
    assert a.std() > 0.1  # a picture, not a flat colour
    with pytest.raises(HaloRefError, match="size must be >= 8"):
        viz.scene_image(4)


def test_as_display_image_layouts_and_errors():
    rng = np.random.default_rng(0)
    chw = rng.uniform(size=(3, 5, 7))
    assert np.array_equal(viz.as_display_image(chw), chw.transpose(1, 2, 0))
    grey = viz.as_display_image(rng.standard_normal((1, 4, 4)) * 10)
    assert grey.shape == (4, 4)
    assert grey.min() == 0.0 and grey.max() == 1.0  # out-of-range values rescaled exactly
    with pytest.raises(HaloRefError, match="pass one image"):
        viz.as_display_image(np.zeros((2, 3, 4, 4)))


def test_window_to_image_places_gathered_windows_back():
    # the window of block n, placed with window_to_image, is the image on that window
    rng = np.random.default_rng(1)
    H, W, b, h = 12, 8, 4, 3
    x = rng.standard_normal((1, 1, H, W))
    windows = gather_windows(x, b, h)[0, :, :, 0]  # N, win*win
    inside = window_inside_image(H, W, b, h)
    rows, cols = np.mgrid[0:H, 0:W]
    for n in range(windows.shape[0]):
        i, j = divmod(n, W // b)
        placed = viz.window_to_image(windows[n], H, W, b, h, (i, j))
        keep = (np.abs(rows - (i * b + (b - 1) / 2)) < b / 2 + h) & (
            np.abs(cols - (j * b + (b - 1) / 2)) < b / 2 + h
        )
        assert np.array_equal(placed, np.where(keep, x[0, 0], 0.0))  # copies: exact
        assert keep.sum() == inside[n].sum()


@pytest.mark.parametrize("border", ["zeros", "mask"])
@pytest.mark.parametrize("stride", [1, 2])
def test_query_attention_matches_dense_oracle(border, stride):
    rng = np.random.default_rng(2)
    layer = HaloAttention(
        4, 6, num_heads=2, block_size=4, halo_size=1, stride=stride, border=border,
        dtype=np.float64, rng=rng,
    )  # fmt: skip
    x = rng.standard_normal((2, 4, 8, 12))
    p = layer.params
    q_map, _ = conv1x1_forward(x[1:], p["q.weight"], None, layer.query_stride)
    kv_map, _ = conv1x1_forward(x[1:], p["kv.weight"])
    _, cache = dense_halo_attention_forward(
        q_map, kv_map, p["pos_embed.height_rel"], p["pos_embed.width_rel"],
        num_heads=2, block_size=4, halo_size=1, query_stride=layer.query_stride,
        scale=layer.scale, border=border,
    )  # fmt: skip
    attn = cache.dense.attn  # 1, heads, Nq, Nk: the dense oracle's softmax weights
    Hq, Wq = q_map.shape[2:]
    for query in [(0, 0), (Hq - 1, Wq - 1), (Hq // 2, 1)]:
        got = viz.query_attention(layer, x, query, sample=1)
        row = attn[0, :, query[0] * Wq + query[1]].mean(axis=0).reshape(8 + 2, 12 + 2)
        want = row[1:-1, 1:-1]  # drop the zero padding of the key grid
        # the same softmax computed by two float64 code paths: agreement to rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        if border == "mask":  # every weight lands inside the image
            assert abs(got.sum() - 1.0) < 1e-12


def test_draw_blocks_puts_block_and_window_in_place():
    img = viz.scene_image(32)
    ax = viz.draw_blocks(img, 8, 3, block=(1, 2))
    window, block_fill, block_edge = ax.patches  # drawn in this order
    assert window.get_xy() == (2 * 8 - 0.5 - 3, 1 * 8 - 0.5 - 3)
    assert (window.get_width(), window.get_height()) == (14, 14)
    for block in (block_fill, block_edge):
        assert block.get_xy() == (2 * 8 - 0.5, 1 * 8 - 0.5)
        assert (block.get_width(), block.get_height()) == (8, 8)
    assert len(ax.lines) == 5 + 5  # grid lines every 8 pixels, both edges included
    with pytest.raises(HaloRefError, match="multiples of block_size"):
        viz.draw_blocks(np.zeros((10, 8)), 4, 1)


def test_draw_mask_counts_allowed_pairs():
    mask = np.where(np.eye(4, 8, dtype=bool), 0.0, -np.inf)
    ax = viz.draw_mask(mask)
    assert "12.5%" in ax.get_title()  # 4 of 32 pairs
    shown = ax.images[0].get_array()
    assert np.array_equal(np.asarray(shown), np.isfinite(mask))


def test_draw_position_bias_marks_the_query():
    b, h = 4, 2
    bias = np.arange((b + 2 * h) ** 2, dtype=float)
    ax = viz.draw_position_bias(bias, b, h, (1, 3))
    (star,) = ax.lines
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (h + 3, h + 1)
    assert np.array_equal(np.asarray(ax.images[0].get_array()), bias.reshape(8, 8))


def test_shape_mismatches_are_one_line_errors():
    img = np.zeros((8, 8))
    for call in (
        lambda: viz.draw_attention(img, np.zeros((4, 4)), (0, 0)),
        lambda: viz.draw_receptive_field(img, np.zeros((4, 4)), (0, 0)),
        lambda: viz.draw_neighbourhood(img, np.zeros((4, 4), bool), (0, 0)),
    ):
        with pytest.raises(HaloRefError) as exc:
            call()
        assert "\n" not in str(exc.value)


def test_draw_receptive_field_outlines_nonzero_influence():
    infl = np.zeros((16, 16))
    infl[4:10, 2:8] = np.linspace(1e-3, 1, 36).reshape(6, 6)
    ax = viz.draw_receptive_field(np.ones((16, 16)), infl, (6, 5))
    overlay = np.ma.getdata(ax.images[1].get_array())
    assert np.isnan(overlay[0, 0]) and overlay[9, 7] == 0.0  # log10(max / max) = 0 exactly


def test_plot_training_curves():
    history = {"epoch": [1, 2, 3], "train_loss": [2, 1, 0.5], "val_acc": [0.3, 0.6, 0.9]}
    ax_loss, ax_acc = viz.plot_training_curves(history)
    assert len(ax_loss.lines) == 1 and len(ax_acc.lines) == 1
    assert np.allclose(ax_acc.lines[0].get_ydata(), [30, 60, 90])  # shown in percent
    with pytest.raises(HaloRefError, match="'epoch'"):
        viz.plot_training_curves({"train_loss": [1.0]})


def test_save_figure_is_atomic(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = viz.save_figure(fig, tmp_path / "out.png")
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary file left behind
    with pytest.raises(HaloRefError, match="does not exist"):
        viz.save_figure(fig, tmp_path / "missing" / "out.png")


def test_show_figures_saves_every_figure_and_animation(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    plt.close("all")
    fig, ax = plt.subplots()
    (line,) = ax.plot([0, 1], [0, 1])
    anim = FuncAnimation(fig, lambda i: [line], frames=2)
    plt.subplots()
    paths = viz.show_figures(["--save", str(tmp_path)], animations=[anim])
    plt.close("all")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["animation_0.gif", "figure_01.png", "figure_02.png"]
    assert len(paths) == 3
    with pytest.raises(HaloRefError, match="--save needs a folder"):
        viz.show_figures(["--save"])


def test_figure_style_sets_fonts_and_a_colour_blind_safe_cycle():
    import matplotlib as mpl

    with mpl.rc_context():
        viz.use_figure_style()
        assert mpl.rcParams["font.size"] == 11
        colours = [c["color"] for c in mpl.rcParams["axes.prop_cycle"]]
        assert tuple(colours) == viz.PALETTE
