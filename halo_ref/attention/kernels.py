"""Numba kernels for halo attention (paper, section 3.1 "Blocked local self-attention").

Contract: the same as `halo_ref.attention.core` (the readable NumPy page, which stays the
oracle; the tests hold these to it): `halo_attention_forward_numba` / `_backward_numba` take the
arguments and return the results of `halo_attention_forward` / `_backward`, and
`halo_layer_forward_numba` / `_backward_numba` those of `halo_layer_forward` / `_backward`. The
maths is computed without ever building the (B, N, win*win, C) array of gathered windows.

Layout. The kernels read the projected maps pixel-major, (B, H, W, C): the layer's 1x1
projections write them so (`halo_ref.nn.kernels.conv1x1_to_pixels`), and a head's channels
of one pixel are then one contiguous run. Each (image, head) pair is one task of a `prange`
over Numba's threads. A task copies its head's queries, keys and values into channel-last
scratch (keys and values zero-padded by the halo: the zeros are border="zeros"' keys outside
the image), so that every window row, and every block row of windows, is a plain slice.

Tiles. Attention weights are kept as tiles of (keys, queries): each row holds one key's weight
for several queries, so every elementwise pass (logits, max, exp, sum, normalisation, and their
gradients) runs along rows with the queries as vector lanes, long unit-stride loops that LLVM
vectorises. Position logits enter as two small tables per tile, a row table [key row, query]
and a column table [key column, query], so the logits pass is T = scale * q.k + row_table[ky]
+ col_table[kx] row by row; the border mask and "outside this query's window" are -inf entries
of those tables.

Two ways to cut a task's work into tiles (both exact, chosen by `_strips`; one loop serves both,
`_tile_at` and `_tile_operands` say where a tile's queries, keys and values are):

- blocks: one query block at a time; its keys and values are a win x win window copied out of
  the padded scratch, and the tile is (win*win, queries of the block);
- strips: one block row at a time; every query of the row against every key of the strip of
  win padded rows that holds the row's windows (a contiguous slice of the scratch, no copy),
  keys outside a query's own window set to -inf by the column table. More multiply-adds (the
  strip is (W + 2 halo) / win times the window) but a few large products per row instead of
  several small ones per block, long lanes (a whole row of queries) for small blocks, and no
  window copies: faster when query blocks are small (strided layers: 2x2) or few per row.

The forward keeps the tiles (the attention weights) for the backward, and nothing else that
grows with the map: the backward re-reads q and k/v from the projected maps.

Why the backward needs no atomics and is deterministic: a task owns the channels of its head in
one image, so the key/value gradients of overlapping windows are added into its own padded
scratch by a single thread in a fixed order, then copied out; the relative-table gradients go
into one partial buffer per task, summed afterwards in task order. Which thread runs a task
never changes its arithmetic, so results are bit-identical for any thread count.

float32 runs in float32 throughout, with a vectorisable exp (`halo_ref._numba_math.exp_nonpos`,
within 4 ulp) because Numba's scalar `expf` costs more than the matrix products; float64 uses
the exact `np.exp`.

Entry points: the two contracts above, and `halo_attention_forward_pixels` / `_backward` (the
core on pixel-major maps, which both use). A call's sizes are derived once, in Python, into a
`Geometry` record that the kernels read (and its scale factors into `Scales`).

Compilation: two parallel kernels (forward, backward), once per dtype (`halo_ref.backend.warm_up`
compiles them with the other layers' kernels); every option (border, stride, scale_pos_embed,
sizes, blocks or strips) is a runtime field of the records. Compiled code is cached on disk
(`cache=True`), so only the first process pays the compile time. Environment:

- NUMBA_CACHE_DIR: where the cache goes (default: the user's cache folder, see
  `halo_ref._runtime`);
- NUMBA_NUM_THREADS or `numba.set_num_threads(n)`: the number of threads `prange` uses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .._blas import one_blas_thread
from .._checks import HaloRefError
from .._numba_math import copy_run, exp_nonpos
from ..nn.kernels import Conv1x1KernelCache, conv1x1_to_pixels, conv1x1_to_pixels_backward
from .core import layer_grads

__all__ = [
    "halo_attention_backward_numba",
    "halo_attention_backward_pixels",
    "halo_attention_forward_numba",
    "halo_attention_forward_pixels",
    "halo_layer_backward_numba",
    "halo_layer_forward_numba",
]


# -- one head between the pixel-major maps and the task's channel-last scratch --------------------
@njit(cache=True, inline="always")
def _gather_head(src, b, c0, pad, dst):
    """dst[pad + y, pad + x, :] = src[b, y, x, c0 : c0 + d] for dst (H + 2 pad, W + 2 pad, d);
    the border of width pad is set to zero."""
    Hs, Ws, d = dst.shape
    H, W, C = Hs - 2 * pad, Ws - 2 * pad, src.shape[3]
    flat = dst.reshape(-1)
    for y in range(Hs):
        for x in range(Ws):
            at = (y * Ws + x) * d
            if pad <= y < pad + H and pad <= x < pad + W:
                copy_run(dst, at, src, ((b * H + y - pad) * W + x - pad) * C + c0, d)
            else:
                for c in range(d):
                    flat[at + c] = 0


@njit(cache=True, inline="always")
def _scatter_head(src, pad, dst, b, c0):
    """The inverse of `_gather_head`: dst[b, y, x, c0 : c0 + d] = src[pad + y, pad + x, :];
    the padding's entries are dropped (they were zeros that no pixel produced)."""
    H, W, C, d = dst.shape[1], dst.shape[2], dst.shape[3], src.shape[2]
    Ws = src.shape[1]
    for y in range(H):
        for x in range(W):
            copy_run(dst, ((b * H + y) * W + x) * C + c0, src, ((pad + y) * Ws + pad + x) * d, d)


@njit(cache=True, inline="always")
def _copy_window(src, y0, x0, win, dst):
    """dst[i*win + j, :] = src[y0 + i, x0 + j, :]: a win x win window of a channel-last map,
    pixels row-major (each window row is one contiguous run)."""
    Ws, d = src.shape[1], src.shape[2]
    run = win * d
    for i in range(win):
        copy_run(dst, i * run, src, ((y0 + i) * Ws + x0) * d, run)


@njit(cache=True, inline="always")
def _add_window(src, dst, y0, x0, rows, cols):
    """The adjoint of reading a rows x cols window of a channel-last map (`_copy_window`, or a
    strip of whole rows read in place): dst[y0 + i, x0 + j, :] += src[i*cols + j, :]."""
    d = dst.shape[2]
    run = cols * d
    flat = src.reshape(-1)
    for i in range(rows):
        row = dst[y0 + i].reshape(-1)[x0 * d : x0 * d + run]
        part = flat[i * run : i * run + run]
        for k in range(run):
            row[k] += part[k]


@njit(cache=True, inline="always")
def _block_rows(src, r0, bq, Wq, x0, dst):
    """dst[i*bq + j, :] = src[(r0 + i)*Wq + x0 + j, :]: one bq x bq block of a (pixels, d) map."""
    d = src.shape[1]
    for i in range(bq):
        copy_run(dst, i * bq * d, src, ((r0 + i) * Wq + x0) * d, bq * d)


@njit(cache=True, inline="always")
def _block_rows_back(src, r0, bq, Wq, x0, dst):
    """The inverse of `_block_rows`: dst[(r0 + i)*Wq + x0 + j, :] = src[i*bq + j, :]."""
    d = dst.shape[1]
    for i in range(bq):
        copy_run(dst, ((r0 + i) * Wq + x0) * d, src, i * bq * d, bq * d)


@njit(cache=True, inline="always")
def _lanes_to_map(lanes, dst, b, c0, y0, x0, nrows, ncols):
    """dst[b, c0 + c, y0 + i, x0 : x0 + ncols] = lanes[c, i*ncols : (i+1)*ncols]: outputs with
    queries as lanes back into a channel-first (B, C, Hq, Wq) map."""
    C, Hq, Wq = dst.shape[1], dst.shape[2], dst.shape[3]
    for c in range(lanes.shape[0]):
        for i in range(nrows):
            at = ((b * C + c0 + c) * Hq + y0 + i) * Wq + x0
            copy_run(dst, at, lanes, (c * nrows + i) * ncols, ncols)


@njit(cache=True, inline="always")
def _map_to_lanes(src, b, c0, y0, x0, nrows, ncols, lanes):
    """The inverse of `_lanes_to_map`."""
    C, Hq, Wq = src.shape[1], src.shape[2], src.shape[3]
    for c in range(lanes.shape[0]):
        for i in range(nrows):
            at = ((b * C + c0 + c) * Hq + y0 + i) * Wq + x0
            copy_run(lanes, (c * nrows + i) * ncols, src, at, ncols)


# -- a tile: where its queries, keys and values are ----------------------------------------------
@njit(cache=True, inline="always")
def _tile_at(n, geo):
    """Tile n of a task: (its block row, its first query column, its number of query columns,
    the first key column of the padded map it reads). Strips: block row n, every column;
    blocks: block n in row-major order."""
    if geo.strips:
        return n, 0, geo.Wq, 0
    by, bx = n // geo.blocks_across, n % geo.blocks_across
    return by, bx * geo.block_q, geo.block_q, bx * geo.block


@njit(cache=True, inline="always")
def _tile_operands(queries, keys, values, by, x0q, x0k, geo, q_tile, k_tile, v_tile):
    """A tile's queries (lanes, d_qk), keys (tile keys, d_qk) and values (tile keys, d_v).
    Strips read a block row of queries and the strip of win padded rows in place (contiguous
    slices of the scratch); blocks copy their block and window out into the *_tile buffers."""
    y0 = by * geo.block  # padded rows: a window starts `halo` rows above its block
    if geo.strips:
        lanes = geo.tile_lanes
        strip_k = keys[y0 : y0 + geo.win].reshape(geo.tile_keys, geo.d_qk)
        strip_v = values[y0 : y0 + geo.win].reshape(geo.tile_keys, geo.d_v)
        return queries[by * lanes : (by + 1) * lanes], strip_k, strip_v
    _block_rows(queries, by * geo.block_q, geo.block_q, geo.Wq, x0q, q_tile)
    _copy_window(keys, y0, x0k, geo.win, k_tile)
    _copy_window(values, y0, x0k, geo.win, v_tile)
    return q_tile, k_tile, v_tile


# -- position tables: one row per key row / key column, queries as lanes ------------------------
@njit(cache=True)
def _tables(q_rows, q_cols, by, x0q, ncols, x0k, geo, position_scale, row_table, col_table):
    """The position logits of a tile's queries. Lane l = i*ncols + j is the query at (by*bq + i,
    x0q + j) of the query map (bq = block_q), in the block s = (x0q + j) // bq, at (i, qx)
    inside it; q_rows, q_cols: q . height_rel[r] and q . width_rel[r] of every query:

    row_table[ky, l] = position_scale * q . height_rel[ky - i + win - 1] for window row ky
    (-inf where that row is outside the image and border="mask");
    col_table[xp, l] = position_scale * q . width_rel[kx - qx + win - 1] for the tile's key
    column xp (padded map column x0k + xp), whose column in the lane's window is kx = xp + x0k -
    s*block, when 0 <= kx < win (and inside the image, with the mask); -inf elsewhere, so that
    keys outside the query's own window get no weight. (A window always lies inside the tile's
    columns.)
    """
    win, bq = geo.win, geo.block_q
    n_cols, n_lanes = col_table.shape
    for xp in range(n_cols):
        w = col_table[xp]
        for l in range(n_lanes):
            w[l] = -np.inf
    for l in range(n_lanes):
        i, j = l // ncols, l % ncols
        x = x0q + j
        s, qx = x // bq, x % bq
        pix = (by * bq + i) * geo.Wq + x
        rows = q_rows[pix, win - 1 - i : 2 * win - 1 - i]  # this query's rows of the table
        cols = q_cols[pix, win - 1 - qx : 2 * win - 1 - qx]
        lo = s * geo.block - x0k  # the window's first column in the tile
        for k in range(win):
            row_table[k, l] = position_scale * rows[k]
            col_table[lo + k, l] = position_scale * cols[k]
    if geo.mask:
        for ky in range(win):
            y = by * geo.block - geo.halo + ky
            if y < 0 or y >= geo.H:
                h = row_table[ky]
                for l in range(n_lanes):
                    h[l] = -np.inf
        for xp in range(n_cols):
            xi = x0k + xp - geo.halo
            if xi < 0 or xi >= geo.W:
                w = col_table[xp]
                for l in range(n_lanes):
                    w[l] = -np.inf


@njit(cache=True)
def _table_grads(drow, dcol, by, x0q, ncols, x0k, geo, ratio, dq_rows, dq_cols):
    """The adjoint of `_tables`: dq_rows[pix, ky - i + win - 1] = ratio * drow[ky, l] and
    dq_cols from dcol over the lane's window. A query's table entries are distinct for distinct
    ky (kx), and each query is in one tile, so every entry is written once."""
    win, bq = geo.win, geo.block_q
    n_lanes = dcol.shape[1]
    for l in range(n_lanes):
        i, j = l // ncols, l % ncols
        x = x0q + j
        s, qx = x // bq, x % bq
        pix = (by * bq + i) * geo.Wq + x
        rows = dq_rows[pix, win - 1 - i : 2 * win - 1 - i]
        cols = dq_cols[pix, win - 1 - qx : 2 * win - 1 - qx]
        lo = s * geo.block - x0k
        for k in range(win):
            rows[k] = ratio * drow[k, l]
            cols[k] = ratio * dcol[lo + k, l]


# -- passes over a tile T (keys, lanes): key (ky, xp) is row ky * (tile columns) + xp -----------
# Each loop writes a single array: LLVM vectorises a loop only after checking at run time that
# the arrays it writes overlap none it reads, and gives up when there are many pairs to check.
# The tables and the passes are called, not inlined: each family calls them, and inlining
# compiled them twice (15 s more of first-run compile time, no faster).
@njit(cache=True)
def _logits(T, row_table, col_table, content_scale, win):
    """In place: T = content_scale * (q . k) + row_table[ky] + col_table[xp], row by row."""
    n_cols, L = col_table.shape
    for ky in range(win):
        h = row_table[ky]
        for xp in range(n_cols):
            t = T[ky * n_cols + xp]
            w = col_table[xp]
            for l in range(L):
                t[l] = content_scale * t[l] + (h[l] + w[l])


@njit(cache=True)
def _softmax(T, mx, sm):
    """In place: the softmax of each lane (column) of T; -inf entries become exactly 0 (every
    lane has finite entries: the query's own block is inside its window and the image).

    The max and exp passes take 4 and 2 rows per loop: with few lanes (a small map's strip has
    8-32) a loop's fixed cost (its run-time overlap checks) is paid per row, and measured 1.3-1.9x
    on (160 keys, 16 lanes) and (96, 32) tiles; 1.2x on (144, 64)."""
    K, L = T.shape
    for l in range(L):
        mx[l] = -np.inf
    k = 0
    while k + 4 <= K:
        t0, t1, t2, t3 = T[k], T[k + 1], T[k + 2], T[k + 3]
        for l in range(L):
            a = t0[l] if t0[l] > t1[l] else t1[l]
            c = t2[l] if t2[l] > t3[l] else t3[l]
            a = a if a > c else c
            mx[l] = a if a > mx[l] else mx[l]
        k += 4
    for r in range(k, K):
        t = T[r]
        for l in range(L):
            mx[l] = t[l] if t[l] > mx[l] else mx[l]
    for l in range(L):
        sm[l] = 0
    k = 0
    while k + 2 <= K:
        t0, t1 = T[k], T[k + 1]
        for l in range(L):
            e0 = exp_nonpos(t0[l] - mx[l])
            e1 = exp_nonpos(t1[l] - mx[l])
            t0[l] = e0
            t1[l] = e1
            sm[l] += e0 + e1
        k += 2
    for r in range(k, K):
        t = T[r]
        for l in range(L):
            e = exp_nonpos(t[l] - mx[l])
            t[l] = e
            sm[l] += e
    for l in range(L):
        sm[l] = 1 / sm[l]
    for k in range(K):
        t = T[k]
        for l in range(L):
            t[l] *= sm[l]


@njit(cache=True)
def _softmax_grad(A, G, content_scale, win, sm, drow, dcol):
    """A: the weights; G = d weights, in place -> content_scale * d logits (softmax: d logits =
    A * (G - sum over keys of A * G)). drow[ky], dcol[xp]: the sums of the result over each key
    row and key column, the position tables' share (up to the factor applied by
    `_table_grads`)."""
    n_cols, L = dcol.shape
    K = A.shape[0]
    for l in range(L):
        sm[l] = 0
    for k in range(K):
        a, g = A[k], G[k]
        for l in range(L):
            sm[l] += a[l] * g[l]
    for k in range(K):
        a, g = A[k], G[k]
        for l in range(L):
            g[l] = content_scale * (a[l] * (g[l] - sm[l]))
    # one pass over G for both sums (each still adds its terms in key order)
    drow[:] = 0
    dcol[:] = 0
    for ky in range(win):
        h = drow[ky]
        for xp in range(n_cols):
            g, w = G[ky * n_cols + xp], dcol[xp]
            for l in range(L):
                h[l] += g[l]
            for l in range(L):
                w[l] += g[l]


# -- the records a call passes to its kernels ------------------------------------------------------
class Geometry(NamedTuple):
    """The sizes of one call, derived once (`_geometry`) and read by its forward and backward."""

    num_heads: int
    d_qk: int
    d_v: int
    H: int  # the key/value map
    W: int
    Hq: int  # the query map, (H, W) / query_stride
    Wq: int
    block: int  # key blocks are block x block pixels, their windows win x win
    halo: int
    block_q: int  # query blocks are block_q x block_q pixels
    win: int
    blocks_down: int
    blocks_across: int
    q0: int  # the first query channel of the query source
    kv0: int  # the first key/value channel of the key/value source
    mask: bool  # border="mask"
    strips: bool  # tiles are strips (else blocks)
    tiles: int  # tiles per task: block rows (strips) or blocks
    tile_keys: int  # keys of a tile: win * (W + 2 halo) (strips) or win * win
    tile_lanes: int  # queries of a tile: block_q * Wq (strips) or block_q * block_q
    table_cols: int  # key columns of a tile: W + 2 halo (strips) or win


class Scales(NamedTuple):
    """logits = content * q.k + position * (q . relative tables), in the maps' dtype."""

    content: float
    position: float
    ratio: float  # position / content, in float64: the tables' share of content * d logits


# Measured on the tiny model (2 threads, batch 64, forward + backward): strips win for 2x2 query
# blocks (strided layers, 1.6-1.9x) and for 4x4 ones (1.1x), blocks for 8x8 (1.4x, where the
# strip would be 1.7x the window).
STRIP_MAX_QUERIES = 16  # query blocks of at most this many pixels may use strips...
STRIP_MAX_WASTE = 2.5  # ...if a strip holds at most this many times a window's keys


def _strips(family, block_q, win, W, halo):
    """Whether a call cuts its work into strips: `family` ("blocks", "strips"), or when None
    the measured rule above."""
    if family is not None:
        return family == "strips"
    return block_q * block_q <= STRIP_MAX_QUERIES and (W + 2 * halo) <= STRIP_MAX_WASTE * win


def _geometry(q_src, q0, kv_src, kv0, d_qk, d_v, *, num_heads, block_size, halo_size,
              query_stride, border, family):  # fmt: skip
    """The `Geometry` of a call on pixel-major maps (see `halo_attention_forward_pixels`)."""
    _, H, W, _ = kv_src.shape
    Hq, Wq = q_src.shape[1:3]
    block_q, win = block_size // query_stride, block_size + 2 * halo_size
    blocks_down, blocks_across = H // block_size, W // block_size
    strips = _strips(family, block_q, win, W, halo_size)
    Wp = W + 2 * halo_size  # the padded map's width
    if strips:
        tiles, tile_keys, tile_lanes, table_cols = blocks_down, win * Wp, block_q * Wq, Wp
    else:
        tiles, tile_keys = blocks_down * blocks_across, win * win
        tile_lanes, table_cols = block_q * block_q, win
    return Geometry(num_heads, d_qk, d_v, H, W, Hq, Wq, block_size, halo_size, block_q, win,
                    blocks_down, blocks_across, q0, kv0, border == "mask", strips, tiles,
                    tile_keys, tile_lanes, table_cols)  # fmt: skip


def _scales(dt, scale, scale_pos_embed):
    """The `Scales` of a call: (scale, 1) by default, (scale, scale) with scale_pos_embed."""
    content = dt.type(scale)
    position = content if scale_pos_embed else dt.type(1)
    return Scales(content, position, 1.0 if scale_pos_embed else 1.0 / float(content))


# -- one task: one head of one image ------------------------------------------------------------
@njit(cache=True, inline="always")
def _task_start(t, q_src, kv_src, geo):
    """Task t = image * heads + head: (image, head, its queries (Hq*Wq, d_qk), its keys and
    values zero-padded by the halo, (H + 2 halo, W + 2 halo, d_qk or d_v)), channel-last."""
    b, head = t // geo.num_heads, t % geo.num_heads
    dt = q_src.dtype
    d_qk, d_v, halo = geo.d_qk, geo.d_v, geo.halo
    queries = np.empty((geo.Hq, geo.Wq, d_qk), dt)
    keys = np.empty((geo.H + 2 * halo, geo.W + 2 * halo, d_qk), dt)
    values = np.empty((geo.H + 2 * halo, geo.W + 2 * halo, d_v), dt)
    _gather_head(q_src, b, geo.q0 + head * d_qk, 0, queries)
    k0 = geo.kv0 + head * (d_qk + d_v)
    _gather_head(kv_src, b, k0, halo, keys)
    _gather_head(kv_src, b, k0 + d_qk, halo, values)
    return b, head, queries.reshape(geo.Hq * geo.Wq, d_qk), keys, values


@njit(cache=True)
def _position_logits(queries, height_rel, width_rel):
    """q . height_rel[r] and q . width_rel[r] for every query and table row r: (Hq*Wq, R) each,
    one product per table for the whole map instead of small ones per block."""
    q_rows = np.empty((queries.shape[0], height_rel.shape[0]), queries.dtype)
    q_cols = np.empty((queries.shape[0], width_rel.shape[0]), queries.dtype)
    np.dot(queries, height_rel.T, q_rows)
    np.dot(queries, width_rel.T, q_cols)
    return q_rows, q_cols


@njit(cache=True)
def _finish_grads(dqueries, queries, dq_rows, dq_cols, height_rel, width_rel, dh, dw):
    """After a task's tiles: dq += the position logits' share (q_rows = q @ height_rel^T, so
    dq += dq_rows @ height_rel), and the task's table gradients dh = dq_rows^T @ q (dw
    likewise)."""
    tmp = np.empty_like(dqueries)
    np.dot(dq_rows, height_rel, tmp)
    dqueries += tmp
    np.dot(dq_cols, width_rel, tmp)
    dqueries += tmp
    np.dot(dq_rows.T, queries, dh)
    np.dot(dq_cols.T, queries, dw)


@njit(cache=True)
def _forward_task(t, q_src, kv_src, height_rel, width_rel, geo, scales, out_map, attn):
    """Task t of `_forward_kernel`: every tile of one head of one image."""
    b, head, queries, keys, values = _task_start(t, q_src, kv_src, geo)
    q_rows, q_cols = _position_logits(queries, height_rel, width_rel)
    dt = q_src.dtype
    n_keys, n_lanes, bq = geo.tile_keys, geo.tile_lanes, geo.block_q
    row_table = np.empty((geo.win, n_lanes), dt)
    col_table = np.empty((geo.table_cols, n_lanes), dt)
    mx, sm = np.empty(n_lanes, dt), np.empty(n_lanes, dt)
    out_lanes = np.empty((geo.d_v, n_lanes), dt)  # the tile's outputs, queries as lanes
    copies = 0 if geo.strips else 1  # only blocks copy their operands out
    q_tile = np.empty((copies * n_lanes, geo.d_qk), dt)
    k_tile = np.empty((copies * n_keys, geo.d_qk), dt)
    v_tile = np.empty((copies * n_keys, geo.d_v), dt)
    for n in range(geo.tiles):
        by, x0q, ncols, x0k = _tile_at(n, geo)
        Q, Kt, V = _tile_operands(queries, keys, values, by, x0q, x0k, geo, q_tile, k_tile, v_tile)
        _tables(q_rows, q_cols, by, x0q, ncols, x0k, geo, scales.position, row_table, col_table)
        T = attn[b, head, n].reshape(n_keys, n_lanes)
        np.dot(Kt, Q.T, T)  # q . k
        _logits(T, row_table, col_table, scales.content, geo.win)
        _softmax(T, mx, sm)
        np.dot(V.T, T, out_lanes)  # out^T = V^T @ weights
        _lanes_to_map(out_lanes, out_map, b, head * geo.d_v, by * bq, x0q, bq, ncols)


@njit(parallel=True, cache=True)
def _forward_kernel(q_src, kv_src, height_rel, width_rel, geo, scales, out_map, attn):
    """Fill out_map (B, heads*d_v, Hq, Wq) and attn, one task per (image, head). The task body
    is its own function: helpers inlined straight into a prange loop were miscompiled (Numba
    renames their variables inconsistently there), inlined into a plain function they are not.
    Its index is passed as np.int64: prange's index is signed while Numba types the kernel and
    unsigned in the parallel body it builds, and each would compile a task of its own."""
    for t in prange(kv_src.shape[0] * geo.num_heads):
        _forward_task(np.int64(t), q_src, kv_src, height_rel, width_rel, geo, scales, out_map,
                      attn)  # fmt: skip


@njit(cache=True)
def _backward_task(t, dout_map, q_src, kv_src, height_rel, width_rel, attn, geo, scales, dq_dst,
                   dq0, dkv_dst, dkv0, dh_part, dw_part):  # fmt: skip
    """Task t of `_backward_kernel`: every tile of one head of one image, in the forward's
    order."""
    b, head, queries, keys, values = _task_start(t, q_src, kv_src, geo)
    dt = q_src.dtype
    n_keys, n_lanes, bq, d_qk, d_v = geo.tile_keys, geo.tile_lanes, geo.block_q, geo.d_qk, geo.d_v
    R = height_rel.shape[0]
    dqueries = np.empty(queries.shape, dt)  # every query's row is written by its tile
    dkeys, dvalues = np.zeros(keys.shape, dt), np.zeros(values.shape, dt)  # windows add up
    # d (q . height_rel[r]) for every query of the map (width likewise); the products with the
    # tables run once per task, after the tiles
    dq_rows, dq_cols = np.zeros((queries.shape[0], R), dt), np.zeros((queries.shape[0], R), dt)
    drow, dcol = np.empty((geo.win, n_lanes), dt), np.empty((geo.table_cols, n_lanes), dt)
    sm = np.empty(n_lanes, dt)
    dout_lanes = np.empty((d_v, n_lanes), dt)
    G = np.empty((n_keys, n_lanes), dt)  # d weights, then content scale * d logits
    dk_tile, dv_tile = np.empty((n_keys, d_qk), dt), np.empty((n_keys, d_v), dt)
    copies = 0 if geo.strips else 1  # only blocks copy their operands out (and dQ back)
    q_tile = np.empty((copies * n_lanes, d_qk), dt)
    k_tile = np.empty((copies * n_keys, d_qk), dt)
    v_tile = np.empty((copies * n_keys, d_v), dt)
    dq_tile = np.empty((copies * n_lanes, d_qk), dt)
    key_cols = geo.table_cols  # a tile's keys: win rows of this many padded columns
    for n in range(geo.tiles):
        by, x0q, ncols, x0k = _tile_at(n, geo)
        Q, Kt, V = _tile_operands(queries, keys, values, by, x0q, x0k, geo, q_tile, k_tile, v_tile)
        _map_to_lanes(dout_map, b, head * d_v, by * bq, x0q, bq, ncols, dout_lanes)
        A = attn[b, head, n].reshape(n_keys, n_lanes)
        # out^T = V^T @ A: d A = V @ dout^T, dV = A @ dout
        np.dot(V, dout_lanes, G)
        np.dot(A, dout_lanes.T, dv_tile)
        _softmax_grad(A, G, scales.content, geo.win, sm, drow, dcol)
        _table_grads(drow, dcol, by, x0q, ncols, x0k, geo, scales.ratio, dq_rows, dq_cols)
        # content logits = K @ Q^T (the content scale is already in G); a strip's queries are
        # one block row of the map, written in place
        dQ = dqueries[by * n_lanes : (by + 1) * n_lanes] if geo.strips else dq_tile
        np.dot(G.T, Kt, dQ)
        np.dot(G, Q, dk_tile)
        if not geo.strips:  # query blocks are disjoint
            _block_rows_back(dQ, by * bq, bq, geo.Wq, x0q, dqueries)
        # windows (strips) of neighbouring tiles overlap: added in tile order
        _add_window(dk_tile, dkeys, by * geo.block, x0k, geo.win, key_cols)
        _add_window(dv_tile, dvalues, by * geo.block, x0k, geo.win, key_cols)
    _finish_grads(dqueries, queries, dq_rows, dq_cols, height_rel, width_rel, dh_part[t],
                  dw_part[t])  # fmt: skip
    _scatter_head(dqueries.reshape(geo.Hq, geo.Wq, d_qk), 0, dq_dst, b, dq0 + head * d_qk)
    k0 = dkv0 + head * (d_qk + d_v)
    _scatter_head(dkeys, geo.halo, dkv_dst, b, k0)
    _scatter_head(dvalues, geo.halo, dkv_dst, b, k0 + d_qk)


@njit(parallel=True, cache=True)
def _backward_kernel(dout_map, q_src, kv_src, height_rel, width_rel, attn, geo, scales, dq_dst,
                     dq0, dkv_dst, dkv0, dh_part, dw_part):  # fmt: skip
    """Fill this call's channels of dq_dst and dkv_dst (every entry once) and the per-task
    table gradients dh_part, dw_part (B*heads, R, d_qk). (np.int64: see `_forward_kernel`.)"""
    for t in prange(kv_src.shape[0] * geo.num_heads):
        _backward_task(np.int64(t), dout_map, q_src, kv_src, height_rel, width_rel, attn, geo,
                       scales, dq_dst, dq0, dkv_dst, dkv0, dh_part, dw_part)  # fmt: skip


# -- the core on pixel-major maps ----------------------------------------------------------------
class PixelAttentionCache(NamedTuple):
    """What `halo_attention_backward_pixels` needs; refers to the forward's inputs (no copies)."""

    q_src: np.ndarray  # (B, Hq, Wq, Cq)
    kv_src: np.ndarray  # (B, H, W, Ckv)
    height_rel: np.ndarray  # (2*win - 1, d_qk), contiguous, in the maps' dtype
    width_rel: np.ndarray
    attn: np.ndarray  # (B, heads, tiles, tile keys * tile lanes): the weights, tile by tile
    geometry: Geometry
    scales: Scales


def _check_dtypes(q, kv, rel):
    dt = kv.dtype
    if dt not in (np.float32, np.float64) or q.dtype != dt or rel.dtype != dt:
        raise HaloRefError(
            f"numba halo attention: the queries ({q.dtype}), keys/values ({dt}) and the relative "
            f"tables ({rel.dtype}) must share one dtype, float32 or float64; cast them to one"
        )
    return dt


def halo_attention_forward_pixels(
    q_src,
    q0,
    kv_src,
    kv0,
    height_rel,
    width_rel,
    *,
    num_heads,
    d_v,
    block_size,
    halo_size,
    query_stride=1,
    scale,
    scale_pos_embed=False,
    border="zeros",
    family=None,
):
    """Halo attention on pixel-major maps (the layout the layer's projections write).

    q_src: (B, H/s, W/s, Cq), the queries in channels q0 : q0 + heads*d_qk (head-major);
    kv_src: (B, H, W, Ckv), the keys and values in channels kv0 : kv0 + heads*(d_qk + d_v),
    per head [k | v]; the two may be one array (one projection for q and kv). height_rel,
    width_rel: (2*win - 1, d_qk). family: "blocks", "strips" or None (chosen by `_strips`).
    Returns out (B, heads*d_v, H/s, W/s), channel-first, and a `PixelAttentionCache`.
    """
    dt = _check_dtypes(q_src, kv_src, height_rel)
    geo = _geometry(q_src, q0, kv_src, kv0, height_rel.shape[1], d_v, num_heads=num_heads,
                    block_size=block_size, halo_size=halo_size, query_stride=query_stride,
                    border=border, family=family)  # fmt: skip
    scales = _scales(dt, scale, scale_pos_embed)
    B = kv_src.shape[0]
    out_map = np.empty((B, num_heads * d_v, geo.Hq, geo.Wq), dt)
    attn = np.empty((B, num_heads, geo.tiles, geo.tile_keys * geo.tile_lanes), dt)
    rh = np.ascontiguousarray(height_rel, dtype=dt)
    rw = np.ascontiguousarray(width_rel, dtype=dt)
    with one_blas_thread():  # the tasks' products run inside Numba's threads
        _forward_kernel(q_src, kv_src, rh, rw, geo, scales, out_map, attn)
    return out_map, PixelAttentionCache(q_src, kv_src, rh, rw, attn, geo, scales)


def halo_attention_backward_pixels(dout_map, cache, dq_dst, dq0, dkv_dst, dkv0):
    """Gradients of `halo_attention_forward_pixels`, written into the query and key/value
    channels of dq_dst and dkv_dst (shaped like q_src and kv_src, channels at dq0 and dkv0; the
    same array when q_src and kv_src were); every entry of those channels is written. dout_map:
    (B, heads*d_v, H/s, W/s). Returns dheight_rel, dwidth_rel (2*win - 1, d_qk)."""
    dt = cache.kv_src.dtype
    tasks = cache.kv_src.shape[0] * cache.geometry.num_heads
    dh_part = np.empty((tasks,) + cache.height_rel.shape, dt)
    dw_part = np.empty((tasks,) + cache.width_rel.shape, dt)
    dout_map = np.ascontiguousarray(dout_map, dtype=dt)
    with one_blas_thread():
        _backward_kernel(dout_map, cache.q_src, cache.kv_src, cache.height_rel, cache.width_rel,
                         cache.attn, cache.geometry, cache.scales, dq_dst, dq0, dkv_dst, dkv0,
                         dh_part, dw_part)  # fmt: skip
    # fixed-order reduction over tasks: deterministic whatever the thread count
    return dh_part.sum(axis=0), dw_part.sum(axis=0)


# -- the core on channel-first maps: the contract of core.halo_attention_forward ------------------
def _pixels(a, dt):
    """(B, C, H, W) -> a pixel-major copy (B, H, W, C)."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1), dtype=dt)


def halo_attention_forward_numba(q_map, kv_map, height_rel, width_rel, *, num_heads, **kwargs):
    """Halo attention on projected maps, with the Numba kernels: the contract of
    `halo_ref.attention.core.halo_attention_forward` (its keyword arguments, and `family`:
    see `halo_attention_forward_pixels`).

    q_map: (B, heads*d_qk, H/s, W/s); kv_map: (B, heads*(d_qk+d_v), H, W), per head [k | v];
    height_rel, width_rel: (2*win - 1, d_qk). Returns out (B, heads*d_v, H/s, W/s) and a cache
    for `halo_attention_backward_numba`. The maps are copied pixel-major first (the layer
    skips that copy: its projections write that layout).
    """
    dt = _check_dtypes(q_map, kv_map, height_rel)
    d_v = kv_map.shape[1] // num_heads - height_rel.shape[1]
    q_src, kv_src = _pixels(q_map, dt), _pixels(kv_map, dt)  # B, H/s, W/s, Cq and B, H, W, Ckv
    return halo_attention_forward_pixels(
        q_src, 0, kv_src, 0, height_rel, width_rel, num_heads=num_heads, d_v=d_v, **kwargs
    )


def halo_attention_backward_numba(dout_map, cache):
    """Gradients of `halo_attention_forward_numba`.

    dout_map: (B, heads*d_v, H/s, W/s). Returns dq_map (like q_map), dkv_map (like kv_map),
    dheight_rel and dwidth_rel (2*win - 1, d_qk).
    """
    dq, dkv = np.empty_like(cache.q_src), np.empty_like(cache.kv_src)
    dh, dw = halo_attention_backward_pixels(dout_map, cache, dq, 0, dkv, 0)
    channel_first = (0, 3, 1, 2)
    dq_map = np.ascontiguousarray(dq.transpose(channel_first))
    return dq_map, np.ascontiguousarray(dkv.transpose(channel_first)), dh, dw


# -- the layer: projections and attention, the contract of core.halo_layer_forward ---------------
class NumbaLayerCache(NamedTuple):
    """What `halo_layer_backward_numba` needs."""

    attention: PixelAttentionCache
    q_projection: Conv1x1KernelCache  # the queries' projection, or q and kv's when fused
    kv_projection: Conv1x1KernelCache | None  # None when fused
    q_channels: int  # heads * d_qk: the queries' channels (the first ones, when fused)
    has_bias: bool

    @property
    def fused(self) -> bool:
        """Whether one product projected q and kv together (no query stride)."""
        return self.kv_projection is None


def halo_layer_forward_numba(x, params, *, query_stride, family=None, **core_kwargs):
    """`HaloAttention`'s projections and attention (before any pooling), on Numba's threads:
    the contract of `halo_ref.attention.core.halo_layer_forward` (family: see
    `halo_attention_forward_pixels`).

    x: (B, dim, H, W); params: the layer's parameters by timm's names. Returns out (B,
    heads*d_v, H/s, W/s) and a `NumbaLayerCache`. Without query stride the two projections are
    one product into one pixel-major map, queries first.
    """
    wq, wkv = params["q.weight"], params["kv.weight"]
    bq, bkv = params.get("q.bias"), params.get("kv.bias")
    rel = params["pos_embed.height_rel"], params["pos_embed.width_rel"]
    num_heads, d_qk = core_kwargs["num_heads"], rel[0].shape[1]
    d_v = wkv.shape[0] // num_heads - d_qk
    Cq = wq.shape[0]
    if query_stride == 1:
        w = np.concatenate([wq, wkv]).reshape(Cq + wkv.shape[0], -1)
        b = None if bq is None else np.concatenate([bq, bkv])
        qkv, q_proj = conv1x1_to_pixels(x, w, b)  # B, H, W, Cq + Ckv
        q_src, q0, kv_src, kv0, kv_proj = qkv, 0, qkv, Cq, None
    else:
        q_src, q_proj = conv1x1_to_pixels(x, wq, bq, query_stride)  # B, H/s, W/s, Cq
        kv_src, kv_proj = conv1x1_to_pixels(x, wkv, bkv)  # B, H, W, Ckv
        q0 = kv0 = 0
    out, attn_cache = halo_attention_forward_pixels(
        q_src, q0, kv_src, kv0, *rel, d_v=d_v, query_stride=query_stride, family=family,
        **core_kwargs,
    )  # fmt: skip
    return out, NumbaLayerCache(attn_cache, q_proj, kv_proj, Cq, bq is not None)


def halo_layer_backward_numba(dout, cache):
    """Gradients of `halo_layer_forward_numba`: dx (B, dim, H, W) and a dict of the parameter
    gradients by timm's names."""
    attention, Cq = cache.attention, cache.q_channels
    if cache.fused:  # one map, queries first
        dqkv = np.empty_like(attention.q_src)
        dh, dw = halo_attention_backward_pixels(dout, attention, dqkv, 0, dqkv, Cq)
        dx, dwall, dball = conv1x1_to_pixels_backward(dqkv, cache.q_projection)
        dwq, dwkv = dwall[:Cq], dwall[Cq:]
        dbq, dbkv = (dball[:Cq], dball[Cq:]) if cache.has_bias else (None, None)
    else:
        dq, dkv = np.empty_like(attention.q_src), np.empty_like(attention.kv_src)
        dh, dw = halo_attention_backward_pixels(dout, attention, dq, 0, dkv, 0)
        dx, dwkv, dbkv = conv1x1_to_pixels_backward(dkv, cache.kv_projection)
        _, dwq, dbq = conv1x1_to_pixels_backward(dq, cache.q_projection, add_into=dx)  # strided
    as_conv = (slice(None), slice(None), None, None)  # (O, C) -> (O, C, 1, 1)
    dwq, dwkv = np.ascontiguousarray(dwq)[as_conv], np.ascontiguousarray(dwkv)[as_conv]
    return dx, layer_grads(dwq, dwkv, dh, dw, (dbq, dbkv) if cache.has_bias else None)
