"""Blocking: blocks round-trip, windows match their definition, scatter is gather's adjoint."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from halo_ref.attention.blocking import (
    blocks_from_map,
    gather_windows,
    map_from_blocks,
    scatter_windows,
    window_inside_image,
)

geometry = st.tuples(
    st.integers(1, 2),  # B
    st.integers(1, 3),  # C
    st.integers(1, 4),  # block
    st.integers(0, 5),  # halo (>= block too)
    st.integers(1, 3),  # blocks down
    st.integers(1, 3),  # blocks across
    st.integers(0, 2**31 - 1),  # seed
)


@given(geometry)
def test_blocks_round_trip_and_order(g):
    B, C, b, _, nh, nw, seed = g
    x = np.random.default_rng(seed).standard_normal((B, C, nh * b, nw * b))
    blocks = blocks_from_map(x, b)
    assert blocks.shape == (B, nh * nw, b * b, C)
    # block n, pixel p is image pixel (n // nw * b + p // b, n % nw * b + p % b)
    n, p = nh * nw - 1, b * b - 1
    np.testing.assert_array_equal(blocks[:, n, p], x[:, :, nh * b - 1, nw * b - 1])
    np.testing.assert_array_equal(map_from_blocks(blocks, nh * b, nw * b), x)


@given(geometry)
def test_gather_windows_matches_definition(g):
    B, C, b, h, nh, nw, seed = g
    H, W, win = nh * b, nw * b, b + 2 * h
    x = np.random.default_rng(seed).standard_normal((B, C, H, W))
    windows = gather_windows(x, b, h)
    assert windows.shape == (B, nh * nw, win * win, C)
    for n in range(nh * nw):
        for wy in range(win):
            for wx in range(win):
                y, xx = n // nw * b - h + wy, n % nw * b - h + wx
                inside = 0 <= y < H and 0 <= xx < W
                expected = x[:, :, y, xx] if inside else np.zeros((B, C))
                np.testing.assert_array_equal(windows[:, n, wy * win + wx], expected)


@given(geometry)
def test_scatter_is_the_adjoint_of_gather(g):
    # <gather(x), w> == <x, scatter(w)> for all x, w defines the adjoint; backward relies on it.
    B, C, b, h, nh, nw, seed = g
    H, W, win = nh * b, nw * b, b + 2 * h
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W))
    w = rng.standard_normal((B, nh * nw, win * win, C))
    lhs = np.sum(gather_windows(x, b, h) * w)
    rhs = np.sum(x * scatter_windows(w, H, W, b, h))
    # both sides sum the same products in different orders: float64 round-off only
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12 * np.abs(w).sum())


@given(geometry)
def test_inside_mask_marks_exactly_the_image_pixels(g):
    B, C, b, h, nh, nw, seed = g
    H, W = nh * b, nw * b
    x = np.random.default_rng(seed).uniform(1, 2, (1, 1, H, W))  # never zero inside
    inside = window_inside_image(H, W, b, h)
    np.testing.assert_array_equal(inside, gather_windows(x, b, h)[0, :, :, 0] != 0)


def test_gather_keeps_dtype():
    x = np.ones((1, 2, 4, 4), dtype=np.float32)
    assert gather_windows(x, 2, 1).dtype == np.float32
    assert scatter_windows(gather_windows(x, 2, 1), 4, 4, 2, 1).dtype == np.float32
