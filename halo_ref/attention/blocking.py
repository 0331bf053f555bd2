"""Blocking and halo gathering (paper, section 3.1 "Blocked local self-attention" and figure 2).

Halo attention cuts the feature map into non-overlapping b x b *query blocks*. Every query in a
block shares one neighbourhood: the block grown by a halo of h pixels on each side, a
win x win *window* with win = b + 2h. Windows of neighbouring blocks overlap by 2h pixels, and
windows at the border reach outside the image, where they read zeros.

Layouts used throughout halo_ref:

- a feature map is NCHW, (B, C, H, W);
- blocks are (B, N, P, C) with N = (H/b)(W/b) blocks in row-major order and P = b*b pixels in
  row-major order inside each block;
- windows are (B, N, win*win, C), the window pixels in row-major order.

`gather_windows` copies each pixel into up to ((b+2h)/b)^2 windows; its adjoint,
`scatter_windows`, adds every window pixel's gradient back onto the pixel it was read from.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def blocks_from_map(x, block_size):
    """Cut a map into non-overlapping blocks.

    x: (B, C, H, W) with H, W multiples of block_size -> (B, N, block_size**2, C).
    """
    B, C, H, W = x.shape
    b = block_size
    nh, nw = H // b, W // b
    x = x.reshape(B, C, nh, b, nw, b)
    x = x.transpose(0, 2, 4, 3, 5, 1)  # B, nh, nw, b (row in block), b (column in block), C
    return x.reshape(B, nh * nw, b * b, C)


def map_from_blocks(blocks, H, W):
    """Inverse of `blocks_from_map` (a permutation, so also its adjoint).

    blocks: (B, N, b*b, C) -> (B, C, H, W).
    """
    B, N, P, C = blocks.shape
    b = int(round(P**0.5))
    nh, nw = H // b, W // b
    x = blocks.reshape(B, nh, nw, b, b, C)
    x = x.transpose(0, 5, 1, 3, 2, 4)  # B, C, nh, b, nw, b
    return x.reshape(B, C, H, W)


def gather_windows(x, block_size, halo_size):
    """Gather each block's (b+2h) x (b+2h) window, reading zeros outside the image.

    x: (B, C, H, W) -> (B, N, win*win, C) with win = block_size + 2*halo_size. Window n starts
    at image row (n // nw) * b - h and column (n % nw) * b - h.
    """
    B, C, H, W = x.shape
    b, h = block_size, halo_size
    win = b + 2 * h
    padded = np.pad(x, ((0, 0), (0, 0), (h, h), (h, h)))
    # every win x win patch of the padded map, then keep those that start on a block corner
    views = sliding_window_view(padded, (win, win), axis=(2, 3))[:, :, ::b, ::b]
    nh, nw = views.shape[2], views.shape[3]  # B, C, nh, nw, win, win
    windows = views.transpose(0, 2, 3, 4, 5, 1)  # B, nh, nw, win, win, C
    return windows.reshape(B, nh * nw, win * win, C)


def scatter_windows(windows, H, W, block_size, halo_size):
    """Adjoint of `gather_windows`: add every window pixel back onto the pixel it came from.

    windows: (B, N, win*win, C) -> (B, C, H, W). Window pixels outside the image are dropped
    (they were zeros that no pixel produced).
    """
    B, N, _, C = windows.shape
    b, h = block_size, halo_size
    win = b + 2 * h
    nh, nw = H // b, W // b
    w = windows.reshape(B, nh, nw, win, win, C).transpose(0, 5, 1, 2, 3, 4)  # B, C, nh, nw, wy, wx
    padded = np.zeros((B, C, H + 2 * h, W + 2 * h), dtype=windows.dtype)
    for i in range(nh):
        for j in range(nw):
            padded[:, :, i * b : i * b + win, j * b : j * b + win] += w[:, :, i, j]
    return padded[:, :, h : h + H, h : h + W]


def window_inside_image(H, W, block_size, halo_size):
    """Which window pixels lie inside the image: bool (N, win*win), row-major like the windows."""
    b, h = block_size, halo_size
    win = b + 2 * h
    nh, nw = H // b, W // b
    rows = np.arange(nh)[:, None] * b - h + np.arange(win)[None, :]  # nh, win (image row)
    cols = np.arange(nw)[:, None] * b - h + np.arange(win)[None, :]  # nw, win (image column)
    row_ok = (rows >= 0) & (rows < H)
    col_ok = (cols >= 0) & (cols < W)
    inside = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # nh, nw, win, win
    return inside.reshape(nh * nw, win * win)
