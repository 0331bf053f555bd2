"""Exercise 1: blocks and halo windows (paper, section 3.1 and figure 2).

Layouts (the same as halo_ref's):

- a feature map is (B, C, H, W), H and W multiples of the block size b;
- blocks are (B, N, b*b, C): N = (H/b)(W/b) blocks in row-major order, block n = (n_y, n_x)
  with n = n_y * (W/b) + n_x, and its pixels in row-major order, p = p_y * b + p_x;
- windows are (B, N, win*win, C) with win = b + 2h: the window of block n is the block grown by
  h pixels on every side, its pixels in row-major order, j = j_y * win + j_x.

Check your work with `python -m pytest` in this folder.
"""

import numpy as np  # noqa: F401  (for your code)


def blocks_from_map(x, block_size):
    """Cut x: (B, C, H, W) into non-overlapping blocks: (B, N, b*b, C).

    Entry [B_, n, p, c] is x[B_, c, n_y * b + p_y, n_x * b + p_x].
    Hint: one reshape to (B, C, H/b, b, W/b, b), one transpose, one reshape.
    """
    # TODO: your code here
    raise NotImplementedError("blocks_from_map: replace this line with your code")


def gather_windows(x, block_size, halo_size):
    """Gather each block's window: x (B, C, H, W) -> (B, N, win*win, C), win = b + 2h.

    Entry [B_, n, j, c] is x[B_, c, n_y * b - h + j_y, n_x * b - h + j_x], read as 0 when that
    pixel lies outside the image (zero padding, as timm). Neighbouring windows overlap by 2h
    pixels.
    Hint: pad the map with h zeros on every side; window n then starts at padded (n_y b, n_x b).
    """
    # TODO: your code here
    raise NotImplementedError("gather_windows: replace this line with your code")


def scatter_windows(windows, H, W, block_size, halo_size):
    """The adjoint of `gather_windows`: windows (B, N, win*win, C) -> (B, C, H, W).

    The gather copies each pixel into every window that contains it; the chain rule adds the
    copies' gradients: out[B_, c, y, x] = sum of windows[B_, n, j, c] over every (n, j) that
    gather_windows read from pixel (y, x). Entries that were read from the padding belong to no
    pixel and are dropped.
    Defining property (checked first): sum(gather_windows(x) * w) == sum(x * scatter_windows(w))
    for every x and w.
    """
    # TODO: your code here
    raise NotImplementedError("scatter_windows: replace this line with your code")
