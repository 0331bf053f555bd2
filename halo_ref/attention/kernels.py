"""Numba kernels for halo attention (paper, section 3.1 "Blocked local self-attention").

The same maths as `halo_ref.attention.halo_attention_forward` / `halo_attention_backward` (the
readable NumPy version, which stays the oracle), computed without ever building the
(B, N, win*win, C) array of gathered windows.

Layout. The kernels read the projected maps pixel-major, (B, H, W, C): the layer's 1x1
projections write them so (`halo_ref._layers_numba.conv1x1_to_pixels`), and a head's channels
of one pixel are then one contiguous run. Each (image, head) pair is one task of a `prange`
over Numba's threads. A task copies its head's queries, keys and values into channel-last
scratch (keys and values zero-padded by the halo: the zeros are border="zeros"' keys outside
the image), so that every window row, and every block row of windows, is a plain slice.

Tiles. Attention weights are kept as tiles of (keys, queries): each row holds one key's weight
for several queries, so every elementwise pass (logits, max, exp, sum, normalisation, and their
gradients) runs along rows with the queries as vector lanes, long unit-stride loops that LLVM
vectorises. Position logits enter as two small tables per tile, Ht[ky, query] and WS[kx,
query], so the logits pass is T = scale * q.k + Ht[ky] + WS[kx] row by row; the border mask and
"outside this query's window" are -inf entries of those tables.

Two ways to cut the work (both exact, chosen by `_use_strips`):

- blocks: one query block at a time; its keys and values are a win x win window copied out of
  the padded scratch, and the tile is (win*win, queries of the block);
- strips: one block row at a time; every query of the row against every key of the strip of
  win padded rows that holds the row's windows (a contiguous slice of the scratch, no copy),
  keys outside a query's own window set to -inf by the width table. More multiply-adds (the
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

Entry points: `halo_layer_forward_numba` / `_backward` (the layer `HaloAttention` with
backend="numba": projections and attention), `halo_attention_forward_numba` / `_backward` (the
functional core on channel-first maps, the contract of the NumPy reference), and
`halo_attention_forward_pixels` / `_backward` (the core on pixel-major maps, which both use).

Compilation: two parallel kernels (forward, backward) plus the layers of
`halo_ref._layers_numba`, once per dtype (`warm_up` compiles them all); every option (border,
stride, scale_pos_embed, sizes, blocks or strips) is a runtime argument. Compiled code is
cached on disk (`cache=True`), so only the first process pays the compile time. Environment:

- NUMBA_CACHE_DIR: where the cache goes when the package folder is read-only (system installs);
- NUMBA_NUM_THREADS or `numba.set_num_threads(n)`: the number of threads `prange` uses.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from .._blas import one_blas_thread
from .._checks import HaloRefError
from .._numba_math import _FASTMATH, copy_run, exp_nonpos
from ..nn.kernels import (
    add,
    batchnorm_train_backward,
    batchnorm_train_forward,
    conv1x1_backward,
    conv1x1_forward,
    conv1x1_to_pixels,
    conv1x1_to_pixels_backward,
    conv2d_backward,
    conv2d_forward,
    silu_backward,
    silu_forward,
)
from .core import _layer_grads

__all__ = [
    "halo_attention_backward_numba",
    "halo_attention_backward_pixels",
    "halo_attention_forward_numba",
    "halo_attention_forward_pixels",
    "halo_layer_backward_numba",
    "halo_layer_forward_numba",
    "warm_up",
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


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _add_window(src, dst, y0, x0, win):
    """The adjoint of `_copy_window`: dst[y0 + i, x0 + j, :] += src[i*win + j, :]."""
    d = dst.shape[2]
    run = win * d
    flat = src.reshape(-1)
    for i in range(win):
        row = dst[y0 + i].reshape(-1)[x0 * d : x0 * d + run]
        part = flat[i * run : i * run + run]
        for k in range(run):
            row[k] += part[k]


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _add_into(src, dst):
    """dst += src for two C-contiguous arrays of the same size (any shapes)."""
    s, d = src.reshape(-1), dst.reshape(-1)
    for k in range(s.shape[0]):
        d[k] += s[k]


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


# -- position tables: one row per key row / key column, queries as lanes ------------------------
@njit(cache=True)
def _tables(qh, qw, by, bq, Wq, x0q, ncols, xoff, block, halo, win, H, W, mask, bs, Ht, WS):
    """The position logits of a tile's queries. Lane l = i*ncols + j is the query at (by*bq + i,
    x0q + j) of the query map, in the block s = (x0q + j) // bq, at (i, qx) inside it:

    Ht[ky, l] = bs * q . height_rel[ky - i + win - 1] for window row ky (-inf where that row is
    outside the image and border="mask");
    WS[xp, l] = bs * q . width_rel[kx - qx + win - 1] for the tile's key column xp (padded map
    column xoff + xp), whose column in the lane's window is kx = xp + xoff - s*block, when
    0 <= kx < win (and inside the image, with the mask); -inf elsewhere, so that keys outside
    the query's own window get no weight. (A window always lies inside the tile's columns.)
    """
    Wtab, L = WS.shape
    for xp in range(Wtab):
        w = WS[xp]
        for l in range(L):
            w[l] = -np.inf
    for l in range(L):
        i, j = l // ncols, l % ncols
        x = x0q + j
        s, qx = x // bq, x % bq
        pix = (by * bq + i) * Wq + x
        rows = qh[pix, win - 1 - i : 2 * win - 1 - i]  # this query's rows of the table
        cols = qw[pix, win - 1 - qx : 2 * win - 1 - qx]
        lo = s * block - xoff  # the window's first column in the tile
        for k in range(win):
            Ht[k, l] = bs * rows[k]
            WS[lo + k, l] = bs * cols[k]
    if mask:
        for ky in range(win):
            y = by * block - halo + ky
            if y < 0 or y >= H:
                h = Ht[ky]
                for l in range(L):
                    h[l] = -np.inf
        for xp in range(Wtab):
            xi = xoff + xp - halo
            if xi < 0 or xi >= W:
                w = WS[xp]
                for l in range(L):
                    w[l] = -np.inf


@njit(cache=True)
def _table_grads(Hd, WSd, by, bq, Wq, x0q, ncols, xoff, block, win, ratio, dqh, dqw):
    """The adjoint of `_tables`: dqh[pix, ky - i + win - 1] = ratio * Hd[ky, l] and dqw from
    WSd over the lane's window. A query's table entries are distinct for distinct ky (kx), and
    each query is in one tile, so every entry is written once."""
    L = WSd.shape[1]
    for l in range(L):
        i, j = l // ncols, l % ncols
        x = x0q + j
        s, qx = x // bq, x % bq
        pix = (by * bq + i) * Wq + x
        rows = dqh[pix, win - 1 - i : 2 * win - 1 - i]
        cols = dqw[pix, win - 1 - qx : 2 * win - 1 - qx]
        lo = s * block - xoff
        for k in range(win):
            rows[k] = ratio * Hd[k, l]
            cols[k] = ratio * WSd[lo + k, l]


# -- passes over a tile T (keys, lanes): key (ky, xp) is row ky*Wtab + xp ---------------------
# Each loop writes a single array: LLVM vectorises a loop only after checking at run time that
# the arrays it writes overlap none it reads, and gives up when there are many pairs to check.
# The tables and the passes are called, not inlined: each family calls them, and inlining
# compiled them twice (15 s more of first-run compile time, no faster).
@njit(fastmath=_FASTMATH, cache=True)
def _logits(T, Ht, WS, cs, win):
    """In place: T = cs * (q . k) + Ht[ky] + WS[xp], row by row."""
    Wtab, L = WS.shape
    for ky in range(win):
        h = Ht[ky]
        for xp in range(Wtab):
            t = T[ky * Wtab + xp]
            w = WS[xp]
            for l in range(L):
                t[l] = cs * t[l] + (h[l] + w[l])


@njit(fastmath=_FASTMATH, cache=True)
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


@njit(fastmath=_FASTMATH, cache=True)
def _softmax_grad(A, G, cs, win, sm, Hd, WSd):
    """A: the weights; G = d weights, in place -> cs * d logits (softmax: d logits =
    A * (G - sum over keys of A * G)). Hd[ky], WSd[xp]: the sums of the result over each key
    row and key column, the position tables' share (up to the factor applied by
    `_table_grads`)."""
    Wtab, L = WSd.shape
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
            g[l] = cs * (a[l] * (g[l] - sm[l]))
    # one pass over G for both sums (each still adds its terms in key order)
    Hd[:] = 0
    WSd[:] = 0
    for ky in range(win):
        h = Hd[ky]
        for xp in range(Wtab):
            g, w = G[ky * Wtab + xp], WSd[xp]
            for l in range(L):
                h[l] += g[l]
            for l in range(L):
                w[l] += g[l]


# -- one task: one head of one image ------------------------------------------------------------
@njit(cache=True, inline="always")
def _geometry(q_src, kv_src, d_qk, d_v_total, num_heads, block, halo, qs):
    """Sizes of one call: (H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw)."""
    H, W = kv_src.shape[1], kv_src.shape[2]
    bq, win = block // qs, block + 2 * halo
    return (H, W, q_src.shape[1], q_src.shape[2], d_v_total // num_heads, bq, win, bq * bq,
            win * win, H // block, W // block)  # fmt: skip


@njit(cache=True, inline="always")
def _head_scratch(q_src, q0, kv_src, kv0, b, hd, d_qk, d_v, halo):
    """Task t's head, channel-last: queries (Hq*Wq, d_qk), and keys and values zero-padded by
    the halo, (H + 2 halo, W + 2 halo, d)."""
    H, W = kv_src.shape[1], kv_src.shape[2]
    Hq, Wq = q_src.shape[1], q_src.shape[2]
    dt = q_src.dtype
    qpix = np.empty((Hq, Wq, d_qk), dt)
    kpix = np.empty((H + 2 * halo, W + 2 * halo, d_qk), dt)
    vpix = np.empty((H + 2 * halo, W + 2 * halo, d_v), dt)
    _gather_head(q_src, b, q0 + hd * d_qk, 0, qpix)
    kc0 = kv0 + hd * (d_qk + d_v)
    _gather_head(kv_src, b, kc0, halo, kpix)
    _gather_head(kv_src, b, kc0 + d_qk, halo, vpix)
    return qpix.reshape(Hq * Wq, d_qk), kpix, vpix


@njit(cache=True)
def _position_logits(qflat, rh, rw):
    """q . height_rel[r] and q . width_rel[r] for every query and table row r: (Hq*Wq, R) each,
    one product per table for the whole map instead of small ones per block."""
    qh = np.empty((qflat.shape[0], rh.shape[0]), qflat.dtype)
    qw = np.empty((qflat.shape[0], rw.shape[0]), qflat.dtype)
    np.dot(qflat, rh.T, qh)
    np.dot(qflat, rw.T, qw)
    return qh, qw


@njit(cache=True)
def _finish_grads(dqflat, qflat, dqh, dqw, rh, rw, dh, dw):
    """After a task's tiles: dq += the position logits' share (q_h = q @ height_rel^T, so
    dq += dq_h @ height_rel), and the task's table gradients dh = dq_h^T @ q (dw likewise)."""
    tmp = np.empty_like(dqflat)
    np.dot(dqh, rh, tmp)
    dqflat += tmp
    np.dot(dqw, rw, tmp)
    dqflat += tmp
    np.dot(dqh.T, qflat, dh)
    np.dot(dqw.T, qflat, dw)


@njit(fastmath=_FASTMATH, cache=True)
def _forward_task(t, q_src, q0, kv_src, kv0, rh, rw, num_heads, block, halo, qs, scale,
                  scale_pos, mask, strips, out_map, attn):  # fmt: skip
    """Task t = b * num_heads + head of `_forward_kernel`."""
    R, d_qk = rh.shape
    geo = _geometry(q_src, kv_src, d_qk, out_map.shape[1], num_heads, block, halo, qs)
    H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw = geo
    Wp = W + 2 * halo
    # logits = cs * q.k + bs * position: (scale, 1) by default, (scale, scale) with scale_pos
    cs = scale
    bs = scale if scale_pos else scale / scale
    dt = q_src.dtype
    b, hd = t // num_heads, t % num_heads
    qflat, kpix, vpix = _head_scratch(q_src, q0, kv_src, kv0, b, hd, d_qk, d_v, halo)
    qh, qw = _position_logits(qflat, rh, rw)
    if strips:
        M, Ls = bq * Wq, win * Wp  # lanes: the block row's queries in pixel order; strip keys
        Ht, WS = np.empty((win, M), dt), np.empty((Wp, M), dt)
        mx, sm = np.empty(M, dt), np.empty(M, dt)
        Ot = np.empty((d_v, M), dt)
        for by in range(nbh):
            Q = qflat[by * M : (by + 1) * M]
            _tables(qh, qw, by, bq, Wq, 0, Wq, 0, block, halo, win, H, W, mask, bs, Ht, WS)
            T = attn[b, hd, by].reshape(Ls, M)
            np.dot(kpix[by * block : by * block + win].reshape(Ls, d_qk), Q.T, T)  # q . k
            _logits(T, Ht, WS, cs, win)
            _softmax(T, mx, sm)
            np.dot(vpix[by * block : by * block + win].reshape(Ls, d_v).T, T, Ot)  # out^T
            _lanes_to_map(Ot, out_map, b, hd * d_v, by * bq, 0, bq, Wq)
    else:
        Ht, WS = np.empty((win, Pq), dt), np.empty((win, Pq), dt)
        mx, sm = np.empty(Pq, dt), np.empty(Pq, dt)
        Q = np.empty((Pq, d_qk), dt)  # the block's queries
        K = np.empty((Pw, d_qk), dt)  # its window's keys
        V = np.empty((Pw, d_v), dt)
        Ot = np.empty((d_v, Pq), dt)
        for n in range(nbh * nbw):
            by, bx = n // nbw, n % nbw
            _block_rows(qflat, by * bq, bq, Wq, bx * bq, Q)
            _tables(qh, qw, by, bq, Wq, bx * bq, bq, bx * block, block, halo, win, H, W, mask,
                    bs, Ht, WS)  # fmt: skip
            _copy_window(kpix, by * block, bx * block, win, K)  # padded coords: no "- halo"
            _copy_window(vpix, by * block, bx * block, win, V)
            T = attn[b, hd, n].reshape(Pw, Pq)
            np.dot(K, Q.T, T)
            _logits(T, Ht, WS, cs, win)
            _softmax(T, mx, sm)
            np.dot(V.T, T, Ot)
            _lanes_to_map(Ot, out_map, b, hd * d_v, by * bq, bx * bq, bq, bq)


@njit(parallel=True, cache=True)
def _forward_kernel(q_src, q0, kv_src, kv0, rh, rw, num_heads, block, halo, qs, scale,
                    scale_pos, mask, strips, out_map, attn):  # fmt: skip
    """Fill out_map (B, heads*d_v, Hq, Wq) and attn, one task per (image, head). The task body
    is its own function: helpers inlined straight into a prange loop were miscompiled (Numba
    renames their variables inconsistently there), inlined into a plain function they are not."""
    for t in prange(kv_src.shape[0] * num_heads):
        _forward_task(t, q_src, q0, kv_src, kv0, rh, rw, num_heads, block, halo, qs, scale,
                      scale_pos, mask, strips, out_map, attn)  # fmt: skip


@njit(fastmath=_FASTMATH, cache=True)
def _backward_task(t, dout_map, q_src, q0, kv_src, kv0, rh, rw, attn, num_heads, block, halo,
                   qs, scale, scale_pos, strips, dq_dst, dq0, dkv_dst, dkv0, dh_part,
                   dw_part):  # fmt: skip
    """Task t = b * num_heads + head of `_backward_kernel`."""
    R, d_qk = rh.shape
    geo = _geometry(q_src, kv_src, d_qk, dout_map.shape[1], num_heads, block, halo, qs)
    H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw = geo
    Wp = W + 2 * halo
    cs = scale
    ratio = scale / scale if scale_pos else 1 / scale  # position weight / content weight
    dt = q_src.dtype
    b, hd = t // num_heads, t % num_heads
    qflat, kpix, vpix = _head_scratch(q_src, q0, kv_src, kv0, b, hd, d_qk, d_v, halo)
    dqflat = np.empty((Hq * Wq, d_qk), dt)  # every query's row is written by its tile
    dkpix, dvpix = np.zeros(kpix.shape, dt), np.zeros(vpix.shape, dt)  # windows add up
    # d (q . height_rel[r]) for every query of the map (width likewise); the products with the
    # tables run once per task, after the tiles
    dqh, dqw = np.zeros((Hq * Wq, R), dt), np.zeros((Hq * Wq, R), dt)
    if strips:
        M, Ls = bq * Wq, win * Wp
        Hd, WSd = np.empty((win, M), dt), np.empty((Wp, M), dt)
        sm = np.empty(M, dt)
        dOt = np.empty((d_v, M), dt)
        G = np.empty((Ls, M), dt)  # d weights, then cs * d logits
        tK, tV = np.empty((Ls, d_qk), dt), np.empty((Ls, d_v), dt)
        for by in range(nbh):
            Q = qflat[by * M : (by + 1) * M]
            _map_to_lanes(dout_map, b, hd * d_v, by * bq, 0, bq, Wq, dOt)
            A = attn[b, hd, by].reshape(Ls, M)
            ks = kpix[by * block : by * block + win].reshape(Ls, d_qk)
            vs = vpix[by * block : by * block + win].reshape(Ls, d_v)
            # out^T = v^T @ A: d A = v @ dout^T, dv = A @ dout
            np.dot(vs, dOt, G)
            np.dot(A, dOt.T, tV)
            # strips of neighbouring block rows overlap by 2 halo rows: added in row order
            _add_into(tV, dvpix[by * block : by * block + win])
            _softmax_grad(A, G, cs, win, sm, Hd, WSd)
            _table_grads(Hd, WSd, by, bq, Wq, 0, Wq, 0, block, win, ratio, dqh, dqw)
            # content logits = k @ q^T (cs is already in G)
            np.dot(G.T, ks, dqflat[by * M : (by + 1) * M])
            np.dot(G, Q, tK)
            _add_into(tK, dkpix[by * block : by * block + win])
    else:
        Hd, WSd = np.empty((win, Pq), dt), np.empty((win, Pq), dt)
        sm = np.empty(Pq, dt)
        Q, dQ = np.empty((Pq, d_qk), dt), np.empty((Pq, d_qk), dt)
        dOt = np.empty((d_v, Pq), dt)
        K, dK = np.empty((Pw, d_qk), dt), np.empty((Pw, d_qk), dt)
        V, dV = np.empty((Pw, d_v), dt), np.empty((Pw, d_v), dt)
        G = np.empty((Pw, Pq), dt)
        for n in range(nbh * nbw):
            by, bx = n // nbw, n % nbw
            _block_rows(qflat, by * bq, bq, Wq, bx * bq, Q)
            _map_to_lanes(dout_map, b, hd * d_v, by * bq, bx * bq, bq, bq, dOt)
            _copy_window(kpix, by * block, bx * block, win, K)
            _copy_window(vpix, by * block, bx * block, win, V)
            A = attn[b, hd, n].reshape(Pw, Pq)
            np.dot(V, dOt, G)
            np.dot(A, dOt.T, dV)
            _softmax_grad(A, G, cs, win, sm, Hd, WSd)
            _table_grads(Hd, WSd, by, bq, Wq, bx * bq, bq, bx * block, block, win, ratio, dqh,
                         dqw)  # fmt: skip
            np.dot(G.T, K, dQ)
            np.dot(G, Q, dK)
            # query blocks are disjoint; windows overlap, added in block order
            _block_rows_back(dQ, by * bq, bq, Wq, bx * bq, dqflat)
            _add_window(dK, dkpix, by * block, bx * block, win)
            _add_window(dV, dvpix, by * block, bx * block, win)
    _finish_grads(dqflat, qflat, dqh, dqw, rh, rw, dh_part[t], dw_part[t])
    _scatter_head(dqflat.reshape(Hq, Wq, d_qk), 0, dq_dst, b, dq0 + hd * d_qk)
    dc0 = dkv0 + hd * (d_qk + d_v)
    _scatter_head(dkpix, halo, dkv_dst, b, dc0)
    _scatter_head(dvpix, halo, dkv_dst, b, dc0 + d_qk)


@njit(parallel=True, cache=True)
def _backward_kernel(dout_map, q_src, q0, kv_src, kv0, rh, rw, attn, num_heads, block, halo, qs,
                     scale, scale_pos, strips, dq_dst, dq0, dkv_dst, dkv0, dh_part,
                     dw_part):  # fmt: skip
    """Fill this head's channels of dq_dst and dkv_dst (every entry once) and the per-task
    table gradients dh_part, dw_part (B*heads, R, d_qk)."""
    for t in prange(kv_src.shape[0] * num_heads):
        _backward_task(t, dout_map, q_src, q0, kv_src, kv0, rh, rw, attn, num_heads, block,
                       halo, qs, scale, scale_pos, strips, dq_dst, dq0, dkv_dst, dkv0, dh_part,
                       dw_part)  # fmt: skip


# -- blocks or strips ------------------------------------------------------------------------
# Measured on the tiny model (2 threads, batch 64, forward + backward): strips win for 2x2 query
# blocks (strided layers, 1.6-1.9x) and for 4x4 ones (1.1x), blocks for 8x8 (1.4x, where the
# strip would be 1.7x the window). `FAMILY` forces one ("blocks", "strips"; for tests).
STRIP_MAX_QUERIES = 16  # query blocks of at most this many pixels may use strips...
STRIP_MAX_WASTE = 2.5  # ...if a strip holds at most this many times a window's keys
FAMILY = None


def _use_strips(block_q, win, W, halo):
    """Whether a call takes the strip family (see the module docstring)."""
    if FAMILY is not None:
        return FAMILY == "strips"
    return block_q * block_q <= STRIP_MAX_QUERIES and (W + 2 * halo) <= STRIP_MAX_WASTE * win


# -- the core on pixel-major maps ----------------------------------------------------------------
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
):
    """Halo attention on pixel-major maps (the layout the layer's projections write).

    q_src: (B, H/s, W/s, Cq), the queries in channels q0 : q0 + heads*d_qk (head-major);
    kv_src: (B, H, W, Ckv), the keys and values in channels kv0 : kv0 + heads*(d_qk + d_v),
    per head [k | v]; the two may be one array (one projection for q and kv). height_rel,
    width_rel: (2*win - 1, d_qk). Returns out (B, heads*d_v, H/s, W/s), channel-first, and a
    cache for `halo_attention_backward_pixels`, which refers to the inputs (no copies).
    """
    dt = _check_dtypes(q_src, kv_src, height_rel)
    B, H, W, _ = kv_src.shape
    Hq, Wq = q_src.shape[1:3]
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    nbh, nbw = H // block_size, W // block_size
    strips = _use_strips(bq, win, W, halo_size)
    out_map = np.empty((B, num_heads * d_v, Hq, Wq), dt)
    if strips:  # per block row: (win * (W + 2 halo) strip keys, bq * Wq queries)
        attn = np.empty((B, num_heads, nbh, win * (W + 2 * halo_size) * bq * Wq), dt)
    else:  # per block: (win * win keys, bq * bq queries)
        attn = np.empty((B, num_heads, nbh * nbw, win * win * bq * bq), dt)
    rh = np.ascontiguousarray(height_rel, dtype=dt)
    rw = np.ascontiguousarray(width_rel, dtype=dt)
    args = (num_heads, block_size, halo_size, query_stride, dt.type(scale), bool(scale_pos_embed))
    with one_blas_thread():  # the tasks' products run inside Numba's threads
        _forward_kernel(q_src, q0, kv_src, kv0, rh, rw, *args, border == "mask", strips,
                        out_map, attn)  # fmt: skip
    return out_map, (q_src, q0, kv_src, kv0, rh, rw, attn, args, strips)


def halo_attention_backward_pixels(dout_map, cache, dq_dst, dq0, dkv_dst, dkv0):
    """Gradients of `halo_attention_forward_pixels`, written into the query and key/value
    channels of dq_dst and dkv_dst (shaped like q_src and kv_src, channels at dq0 and dkv0; the
    same array when q_src and kv_src were); every entry of those channels is written. dout_map:
    (B, heads*d_v, H/s, W/s). Returns dheight_rel, dwidth_rel (2*win - 1, d_qk)."""
    q_src, q0, kv_src, kv0, rh, rw, attn, args, strips = cache
    dt = kv_src.dtype
    B, num_heads = attn.shape[:2]
    R, d_qk = rh.shape
    dh_part = np.empty((B * num_heads, R, d_qk), dt)
    dw_part = np.empty((B * num_heads, R, d_qk), dt)
    dout_map = np.ascontiguousarray(dout_map, dtype=dt)
    with one_blas_thread():
        _backward_kernel(dout_map, q_src, q0, kv_src, kv0, rh, rw, attn, *args, strips, dq_dst,
                         dq0, dkv_dst, dkv0, dh_part, dw_part)  # fmt: skip
    # fixed-order reduction over tasks: deterministic whatever the thread count
    return dh_part.sum(axis=0), dw_part.sum(axis=0)


# -- the core on channel-first maps: the contract of the NumPy reference ---------------------------
def _pixels(a, dt):
    """(B, C, H, W) -> a pixel-major copy (B, H, W, C)."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1), dtype=dt)


def halo_attention_forward_numba(
    q_map,
    kv_map,
    height_rel,
    width_rel,
    *,
    num_heads,
    block_size,
    halo_size,
    query_stride=1,
    scale,
    scale_pos_embed=False,
    border="zeros",
):
    """Halo attention on projected maps, with the Numba kernels (same contract as the reference).

    q_map: (B, heads*d_qk, H/s, W/s); kv_map: (B, heads*(d_qk+d_v), H, W), per head [k | v];
    height_rel, width_rel: (2*win - 1, d_qk). Returns out (B, heads*d_v, H/s, W/s) and a cache
    for `halo_attention_backward_numba`. The maps are copied pixel-major first (the layer
    skips that copy: its projections write that layout).
    """
    dt = _check_dtypes(q_map, kv_map, height_rel)
    d_v = kv_map.shape[1] // num_heads - height_rel.shape[1]
    return halo_attention_forward_pixels(
        _pixels(q_map, dt),
        0,
        _pixels(kv_map, dt),
        0,
        height_rel,
        width_rel,
        num_heads=num_heads,
        d_v=d_v,
        block_size=block_size,
        halo_size=halo_size,
        query_stride=query_stride,
        scale=scale,
        scale_pos_embed=scale_pos_embed,
        border=border,
    )


def halo_attention_backward_numba(dout_map, cache):
    """Gradients of `halo_attention_forward_numba`.

    dout_map: (B, heads*d_v, H/s, W/s). Returns dq_map (like q_map), dkv_map (like kv_map),
    dheight_rel and dwidth_rel (2*win - 1, d_qk).
    """
    q_src, _, kv_src, _ = cache[:4]
    dq, dkv = np.empty_like(q_src), np.empty_like(kv_src)
    dh, dw = halo_attention_backward_pixels(dout_map, cache, dq, 0, dkv, 0)
    channel_first = (0, 3, 1, 2)
    dq_map = np.ascontiguousarray(dq.transpose(channel_first))
    return dq_map, np.ascontiguousarray(dkv.transpose(channel_first)), dh, dw


# -- the layer: projections and attention ---------------------------------------------------------
def halo_layer_forward_numba(x, params, *, query_stride, **core_kwargs):
    """`HaloAttention`'s projections and attention (before any pooling), on Numba's threads.

    x: (B, dim, H, W); params: the layer's parameters by timm's names (`q.weight`,
    `kv.weight`, optional `q.bias`, `kv.bias`, `pos_embed.height_rel`, `pos_embed.width_rel`);
    core_kwargs: the core's other keyword arguments. Returns out (B, heads*d_v, H/s, W/s) and
    a cache for `halo_layer_backward_numba`. Without query stride the two projections are one
    product into one pixel-major map, queries first.
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
        qkv, proj = conv1x1_to_pixels(x, w, b)
        q_src, q0, kv_src, kv0, projs = qkv, 0, qkv, Cq, (proj,)
    else:
        q_src, q_proj = conv1x1_to_pixels(x, wq, bq, query_stride)
        kv_src, kv_proj = conv1x1_to_pixels(x, wkv, bkv)
        q0 = kv0 = 0
        projs = (q_proj, kv_proj)
    out, attn_cache = halo_attention_forward_pixels(
        q_src, q0, kv_src, kv0, *rel, d_v=d_v, query_stride=query_stride, **core_kwargs
    )
    return out, (attn_cache, projs, Cq, bq is not None)


def halo_layer_backward_numba(dout, cache):
    """Gradients of `halo_layer_forward_numba`: dx (B, dim, H, W) and a dict of the parameter
    gradients by timm's names."""
    attn_cache, projs, Cq, has_bias = cache
    q_src, _, kv_src, _ = attn_cache[:4]
    if len(projs) == 1:  # one map, queries first
        dqkv = np.empty_like(q_src)
        dh, dw = halo_attention_backward_pixels(dout, attn_cache, dqkv, 0, dqkv, Cq)
        dx, dwall, dball = conv1x1_to_pixels_backward(dqkv, projs[0])
        dwq, dwkv = dwall[:Cq], dwall[Cq:]
        dbq, dbkv = (dball[:Cq], dball[Cq:]) if has_bias else (None, None)
    else:
        dq, dkv = np.empty_like(q_src), np.empty_like(kv_src)
        dh, dw = halo_attention_backward_pixels(dout, attn_cache, dq, 0, dkv, 0)
        dx, dwkv, dbkv = conv1x1_to_pixels_backward(dkv, projs[1])
        _, dwq, dbq = conv1x1_to_pixels_backward(dq, projs[0], add_into=dx)  # strided pixels
    as_conv = (slice(None), slice(None), None, None)  # (O, C) -> (O, C, 1, 1)
    dwq, dwkv = np.ascontiguousarray(dwq)[as_conv], np.ascontiguousarray(dwkv)[as_conv]
    return dx, _layer_grads(dwq, dwkv, dh, dw, (dbq, dbkv) if has_bias else None)


def warm_up(dtypes=(np.float32, np.float64)):
    """Compile the kernels for each dtype (or load them from the disk cache) by running a tiny
    case of each; returns the seconds spent. Call it once before timing anything."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for dt in dtypes:
        q = rng.standard_normal((1, 2, 4, 4)).astype(dt)
        kv = rng.standard_normal((1, 4, 4, 4)).astype(dt)
        rel = rng.standard_normal((9, 2)).astype(dt)
        kwargs = dict(num_heads=1, block_size=2, halo_size=1, scale=0.5, border="mask")
        out, cache = halo_attention_forward_numba(q, kv, rel, rel, **kwargs)  # one kernel pair
        halo_attention_backward_numba(out, cache)  # serves blocks and strips
        y, cache = conv1x1_to_pixels(kv, rng.standard_normal((3, 4)).astype(dt), None, 2)
        dx, _, _ = conv1x1_to_pixels_backward(y, cache)
        conv1x1_to_pixels_backward(y, cache, add_into=dx)
        y, cache = conv1x1_forward(q, rng.standard_normal((3, 2, 1, 1)).astype(dt))
        conv1x1_backward(y, cache)
        x3 = np.ascontiguousarray(kv.reshape(1, 4, -1))
        out, mean, _, invstd = batchnorm_train_forward(x3, x3[0, :, 0], x3[0, :, 1], 1e-5)
        batchnorm_train_backward(out, x3, mean, x3[0, :, 0], invstd)
        out = silu_forward(x3)
        silu_backward(add(out, x3), x3)
        y, cache = conv2d_forward(kv, rng.standard_normal((3, 4, 3, 3)).astype(dt), None, 2, 1)
        conv2d_backward(y, cache)
    return time.perf_counter() - start
