"""Numba kernels for halo attention (paper, section 3.1 "Blocked local self-attention").

The same maths as `halo_ref.attention.halo_attention_forward` / `halo_attention_backward` (the
readable NumPy version, which stays the oracle), computed block by block without ever building
the (B, N, win*win, C) array of gathered windows:

- each (image, head) pair is one task of a `prange` over Numba's threads;
- a task first copies its head's q, k and v channel-last, k and v zero-padded by the halo (the
  zeros are border="zeros"' keys outside the image), so every block's window is a plain slice;
  then, block by block, it copies the window into small buffers, runs q.k, q against the
  relative tables and attn @ v as small BLAS products, and fuses the relative logits, the
  border mask and the softmax in loops over the block's Pq x Pw tile;
- the forward keeps the attention probabilities (B, heads, N, Pq, Pw) for the backward, and
  nothing else that grows with the map: the backward re-reads q and k/v from the projected maps.

Why the backward needs no atomics and is deterministic: a task owns the channels of its head in
one image, so the key/value gradients of overlapping windows are added into its own padded
buffer by a single thread in a fixed block order; the relative-table gradients go into one
partial buffer per task, summed afterwards in task order. Which thread runs a task never
changes its arithmetic, so results are bit-identical for any thread count.

float32 runs in float32 throughout, with a vectorisable exp (`_exp_f32`, within 4 ulp) because
Numba's scalar `expf` costs more than the matrix products; float64 uses the exact `np.exp`.

The layer's 1x1 projections for this backend (`conv1x1_forward_numba`, `conv1x1_backward_numba`,
same contract as `halo_ref.layers.conv1x1_*`) also run on Numba's threads: they are the 1x1
convolution kernels of `halo_ref._layers_numba`, which the network's other layers use too.

Compilation: the two attention kernels here, plus the convolution, BatchNorm and SiLU kernels
of `halo_ref._layers_numba`, once per dtype (`warm_up` compiles them all); every option
(border, stride, scale_pos_embed, sizes) is a runtime argument. Compiled code is cached
on disk (`cache=True`), so only the first process pays the compile time (about 70 s on the
2-core CI machine; a warm process loads everything in about 1 s). Environment:

- NUMBA_CACHE_DIR: where the cache goes when the package folder is read-only (system installs);
- NUMBA_NUM_THREADS or `numba.set_num_threads(n)`: the number of threads `prange` uses.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from ._blas import ONE_THREAD_MNK as _MNK
from ._checks import HaloRefError
from ._layers_numba import (
    add,
    batchnorm_train_backward,
    batchnorm_train_forward,
    conv2d_backward,
    conv2d_forward,
    silu_backward,
    silu_forward,
)
from ._layers_numba import conv1x1_backward as conv1x1_backward_numba
from ._layers_numba import conv1x1_forward as conv1x1_forward_numba
from ._numba_math import _FASTMATH, softmax_row


@njit(cache=True)
def _to_pixels(src, b, c0, pad, dst):
    """dst[pad + y, pad + x, c] = src[b, c0 + c, y, x] for c < dst.shape[2]: one head's channels
    of one image, channel-last (the border of width `pad` is left as it is)."""
    channels, H, W = dst.shape[2], src.shape[2], src.shape[3]
    for c in range(channels):
        for y in range(H):
            for x in range(W):
                dst[pad + y, pad + x, c] = src[b, c0 + c, y, x]


@njit(cache=True)
def _from_pixels(src, pad, dst, b, c0):
    """The inverse of `_to_pixels`: dst[b, c0 + c, y, x] = src[pad + y, pad + x, c]."""
    channels, H, W = src.shape[2], dst.shape[2], dst.shape[3]
    for c in range(channels):
        for y in range(H):
            for x in range(W):
                dst[b, c0 + c, y, x] = src[pad + y, pad + x, c]


@njit(cache=True)
def _copy_patch(src, y0, x0, size, dst):
    """dst[i*size + j, :] = src[y0 + i, x0 + j, :]: a size x size patch of a channel-last map,
    pixels row-major; each patch row is one contiguous run of size*channels values."""
    run = size * src.shape[2]
    flat = dst.reshape(-1)
    for i in range(size):
        row = src[y0 + i].reshape(-1)
        start = x0 * src.shape[2]
        for k in range(run):
            flat[i * run + k] = row[start + k]


@njit(cache=True)
def _add_patch(src, dst, y0, x0, size):
    """The adjoint of `_copy_patch`: dst[y0 + i, x0 + j, :] += src[i*size + j, :]."""
    run = size * dst.shape[2]
    flat = src.reshape(-1)
    for i in range(size):
        row = dst[y0 + i].reshape(-1)
        start = x0 * dst.shape[2]
        for k in range(run):
            row[start + k] += flat[i * run + k]


@njit(cache=True, inline="always")
def _query_pixel(by, bx, p, bq):
    """Pixel (iy, ix) of query p (row-major in its bq x bq block) of block (by, bx)."""
    return by * bq + p // bq, bx * bq + p % bq


@njit(cache=True, inline="always")
def _table_rows(qh, qw, by, bx, p, bq, Wq, win):
    """Query p of block (by, bx): its rows of the position logits (or of their gradients)
    over the window's rows and columns; the query at (qy, qx) of its block reads table rows
    k - q + win - 1, k < win. Slicing once lets the inner loops run on unit-stride rows."""
    iy, ix = _query_pixel(by, bx, p, bq)
    qy, qx = p // bq, p % bq
    pix = iy * Wq + ix
    return qh[pix, win - 1 - qy : 2 * win - 1 - qy], qw[pix, win - 1 - qx : 2 * win - 1 - qx]


@njit(cache=True)
def _dot_rows(a, bt, out):
    """out = a @ bt for a (M, K), bt (K, N) and out (M, N), in row pieces that each stay
    below OpenBLAS's threshold for starting threads of its own."""
    M, K = a.shape
    rows = max(1, _MNK // (K * bt.shape[1]))
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        np.dot(a[r0:r1], bt, out[r0:r1])


@njit(cache=True)
def _add_dot_rows(a, bt, out):
    """out += a @ bt, in row pieces like `_dot_rows`."""
    M, K = a.shape
    rows = max(1, _MNK // (K * bt.shape[1]))
    tmp = np.empty((min(rows, M), bt.shape[1]), out.dtype)
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        np.dot(a[r0:r1], bt, tmp[: r1 - r0])
        out[r0:r1] += tmp[: r1 - r0]


@njit(cache=True)
def _add_dot_tn(a, b, out):
    """out += a^T @ b for a (M, K), b (M, N), out (K, N), summing pieces of M in order."""
    M, K = a.shape
    rows = max(1, _MNK // (K * b.shape[1]))
    tmp = np.empty(out.shape, out.dtype)
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        np.dot(a[r0:r1].T, b[r0:r1], tmp)
        out += tmp


@njit(cache=True)
def _border_row(H, W, y0, x0, win, mask, out):
    """Additive mask of one window: -inf on pixels outside the image when `mask`, else 0."""
    for ky in range(win):
        for kx in range(win):
            y, x = y0 + ky, x0 + kx
            outside = y < 0 or y >= H or x < 0 or x >= W
            out[ky * win + kx] = -np.inf if (mask and outside) else 0


# -- pieces shared by the kernels ------------------------------------------------------------
@njit(cache=True)
def _geometry(q_map, kv_map, d_qk, d_v_total, num_heads, block, halo, qs):
    """Sizes of one call: (H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw), see the module
    docstring (bq: query block side, win: window side, nbh x nbw blocks)."""
    H, W = kv_map.shape[2], kv_map.shape[3]
    bq, win = block // qs, block + 2 * halo
    d_v = d_v_total // num_heads
    return (
        H,
        W,
        q_map.shape[2],
        q_map.shape[3],
        d_v,
        bq,
        win,
        bq * bq,
        win * win,
        H // block,
        W // block,
    )


@njit(cache=True)
def _head_maps(q_map, kv_map, b, hd, halo, d_qk, d_v):
    """One head of one image, channel-last: q (Hq, Wq, d_qk) and the keys and values zero-
    padded by the halo (H + 2 halo, W + 2 halo, d), so every window is a plain slice (the
    zeros are border="zeros"' keys outside the image)."""
    H, W, dt = kv_map.shape[2], kv_map.shape[3], q_map.dtype
    qpix = np.empty((q_map.shape[2], q_map.shape[3], d_qk), dt)
    kpix = np.zeros((H + 2 * halo, W + 2 * halo, d_qk), dt)
    vpix = np.zeros((H + 2 * halo, W + 2 * halo, d_v), dt)
    kc0 = hd * (d_qk + d_v)
    _to_pixels(q_map, b, hd * d_qk, 0, qpix)
    _to_pixels(kv_map, b, kc0, halo, kpix)
    _to_pixels(kv_map, b, kc0 + d_qk, halo, vpix)
    return qpix, kpix, vpix


@njit(cache=True)
def _grad_maps(dout_map, b, hd, qpix, kpix, vpix):
    """For the backward of one head of one image: dout channel-last (Hq, Wq, d_v), and the
    gradient buffers of q (Hq, Wq, d_qk) and of the padded keys and values, all zeros: each
    block adds its share (windows overlap; the task owns them all)."""
    d_v, dt = vpix.shape[2], qpix.dtype
    dopix = np.empty((qpix.shape[0], qpix.shape[1], d_v), dt)
    _to_pixels(dout_map, b, hd * d_v, 0, dopix)
    return dopix, np.zeros_like(qpix), np.zeros_like(kpix), np.zeros_like(vpix)


@njit(cache=True)
def _position_logits(qpix, rh, rw):
    """q . height_rel[r] and q . width_rel[r] for every query (rows, pixel-major) and table row
    r: one product for the whole map instead of two small ones per block."""
    qflat = qpix.reshape(-1, qpix.shape[2])
    qh = np.empty((qflat.shape[0], rh.shape[0]), qpix.dtype)
    qw = np.empty((qflat.shape[0], rh.shape[0]), qpix.dtype)
    _dot_rows(qflat, rh.T, qh)
    _dot_rows(qflat, rw.T, qw)
    return qh, qw


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _logits_to_probs(row, h_row, w_row, madd, cs, bs, win, bits):
    """row: one query's content logits q . k over its window (win*win, row-major), in place
    -> its attention probabilities: softmax(cs * q.k + bs * (h_row[ky] + w_row[kx]) + mask).
    h_row, w_row: the query's position logits for window rows/columns (already sliced, so the
    inner loop runs on plain unit-stride rows and vectorises)."""
    for ky in range(win):
        hv = h_row[ky]
        r = row[ky * win : ky * win + win]
        m = madd[ky * win : ky * win + win]
        for kx in range(win):
            r[kx] = cs * r[kx] + bs * (hv + w_row[kx]) + m[kx]
    softmax_row(row, bits)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _logit_grads(a_row, g_row, cs, pos_ratio, win, h_seg, w_seg):
    """One query: g_row holds d attn (win*win), in place -> cs * d logits; the position
    logits' gradients are written to h_seg, w_seg (the query's table rows, see
    `_logits_to_probs`). Softmax: dlogits = A * (dA - sum(dA * A)); every table row is used by
    one ky (one kx) of a query, so there are no collisions."""
    Pw = win * win
    s = g_row[0] * a_row[0]
    for w in range(1, Pw):
        s += g_row[w] * a_row[w]
    for w in range(Pw):
        g_row[w] = cs * (a_row[w] * (g_row[w] - s))
    w_seg[:] = 0
    for ky in range(win):
        seg = g_row[ky * win : ky * win + win]
        sh = seg[0]
        for kx in range(1, win):
            sh += seg[kx]
        h_seg[ky] = pos_ratio * sh
        for kx in range(win):
            w_seg[kx] += seg[kx]
    for kx in range(win):
        w_seg[kx] *= pos_ratio


@njit(cache=True)
def _finish_grads(
    qpix, dqpix, dkpix, dvpix, dqh, dqw, rh, rw, dh, dw, dq_map, dkv_map, b, hd, halo
):
    """After the blocks of one task: the position logits' share of dq and the table gradients
    dh, dw (q_h = q @ height_rel^T, for all queries at once), then the task's gradients back
    into the (B, C, H, W) maps; the padding's gradient is dropped (those keys were zeros that
    no pixel produced)."""
    d_qk, d_v = qpix.shape[2], dvpix.shape[2]
    dqflat = dqpix.reshape(-1, d_qk)
    qflat = qpix.reshape(-1, d_qk)
    _add_dot_rows(dqh, rh, dqflat)
    _add_dot_rows(dqw, rw, dqflat)
    dh[:] = 0
    dw[:] = 0
    _add_dot_tn(dqh, qflat, dh)
    _add_dot_tn(dqw, qflat, dw)
    kc0 = hd * (d_qk + d_v)
    _from_pixels(dqpix, 0, dq_map, b, hd * d_qk)
    _from_pixels(dkpix, halo, dkv_map, b, kc0)
    _from_pixels(dvpix, halo, dkv_map, b, kc0 + d_qk)


# -- the blocked kernels ---------------------------------------------------------------------
@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _forward_kernel(
    q_map, kv_map, rh, rw, num_heads, block, halo, qs, scale, scale_pos, mask, out_map, attn
):
    """Fill out_map (B, heads*d_v, Hq, Wq) and attn (B, heads, N, Pq, Pw); see module docstring."""
    B, d_qk = kv_map.shape[0], rh.shape[1]
    geo = _geometry(q_map, kv_map, d_qk, out_map.shape[1], num_heads, block, halo, qs)
    H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw = geo
    # logits = cs * q.k + bs * position: (scale, 1) by default, (scale, scale) with scale_pos
    cs = scale
    bs = scale if scale_pos else scale / scale
    for t in prange(B * num_heads):
        b, hd = t // num_heads, t % num_heads
        dt = q_map.dtype
        qpix, kpix, vpix = _head_maps(q_map, kv_map, b, hd, halo, d_qk, d_v)
        qh, qw = _position_logits(qpix, rh, rw)
        Q = np.empty((Pq, d_qk), dt)  # the block's queries, pixel-major
        K = np.empty((Pw, d_qk), dt)  # the window's keys
        V = np.empty((Pw, d_v), dt)
        Ot = np.empty((d_v, Pq), dt)
        madd = np.empty(Pw, dt)
        bits = np.empty(Pw, np.int32)
        for n in range(nbh * nbw):
            by, bx = n // nbw, n % nbw
            _copy_patch(qpix, by * bq, bx * bq, bq, Q)
            _copy_patch(kpix, by * block, bx * block, win, K)  # padded coords: no "- halo"
            _copy_patch(vpix, by * block, bx * block, win, V)
            _border_row(H, W, by * block - halo, bx * block - halo, win, mask, madd)
            A = attn[b, hd, n]  # Pq, Pw: logits first, probabilities in place
            np.dot(Q, K.T, A)  # content logits q . k
            for p in range(Pq):
                h_row, w_row = _table_rows(qh, qw, by, bx, p, bq, Wq, win)
                _logits_to_probs(A[p], h_row, w_row, madd, cs, bs, win, bits)
            np.dot(V.T, A.T, Ot)  # out^T = v^T @ A^T: d_v, Pq
            for c in range(d_v):
                for i in range(bq):
                    for j in range(bq):
                        out_map[b, hd * d_v + c, by * bq + i, bx * bq + j] = Ot[c, i * bq + j]


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backward_kernel(
    dout_map, q_map, kv_map, rh, rw, attn, num_heads, block, halo, qs, scale, scale_pos,
    dq_map, dkv_map, dh_part, dw_part,
):  # fmt: skip
    """Fill dq_map, dkv_map and the per-task table gradients dh_part, dw_part (B*heads, R, d_qk)."""
    B, (R, d_qk) = kv_map.shape[0], rh.shape
    geo = _geometry(q_map, kv_map, d_qk, dout_map.shape[1], num_heads, block, halo, qs)
    H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw = geo
    cs = scale
    pos_ratio = scale / scale if scale_pos else 1 / scale  # position weight / content weight
    for t in prange(B * num_heads):
        b, hd = t // num_heads, t % num_heads
        dt = q_map.dtype
        qpix, kpix, vpix = _head_maps(q_map, kv_map, b, hd, halo, d_qk, d_v)
        dopix, dqpix, dkpix, dvpix = _grad_maps(dout_map, b, hd, qpix, kpix, vpix)
        Q = np.empty((Pq, d_qk), dt)
        dO = np.empty((Pq, d_v), dt)
        K = np.empty((Pw, d_qk), dt)
        V = np.empty((Pw, d_v), dt)
        dL = np.empty((Pq, Pw), dt)  # d attn, then cs * d logits in place
        dQ = np.empty((Pq, d_qk), dt)
        dK = np.empty((Pw, d_qk), dt)
        dV = np.empty((Pw, d_v), dt)
        # d (q . height_rel[r]) for every query of the map (width likewise); the products with
        # the tables run once per task, after the blocks
        dqh = np.zeros((Hq * Wq, R), dt)
        dqw = np.zeros((Hq * Wq, R), dt)
        for n in range(nbh * nbw):
            by, bx = n // nbw, n % nbw
            _copy_patch(qpix, by * bq, bx * bq, bq, Q)
            _copy_patch(dopix, by * bq, bx * bq, bq, dO)
            _copy_patch(kpix, by * block, bx * block, win, K)
            _copy_patch(vpix, by * block, bx * block, win, V)
            A = attn[b, hd, n]
            # out = A @ v: dA = dout @ v^T, dv = A^T @ dout
            np.dot(dO, V.T, dL)
            np.dot(A.T, dO, dV)
            for p in range(Pq):
                h_seg, w_seg = _table_rows(dqh, dqw, by, bx, p, bq, Wq, win)
                _logit_grads(A[p], dL[p], cs, pos_ratio, win, h_seg, w_seg)
            # content = q @ k^T (cs is already in dL)
            np.dot(dL, K, dQ)
            np.dot(dL.T, Q, dK)
            # query blocks are disjoint (each dq pixel is added once, to its zero); windows
            # overlap, added in block order (deterministic)
            _add_patch(dQ, dqpix, by * bq, bx * bq, bq)
            _add_patch(dK, dkpix, by * block, bx * block, win)
            _add_patch(dV, dvpix, by * block, bx * block, win)
        dh, dw = dh_part[t], dw_part[t]
        _finish_grads(
            qpix, dqpix, dkpix, dvpix, dqh, dqw, rh, rw, dh, dw, dq_map, dkv_map, b, hd, halo
        )


# ---------------------------------------------------------------------------------------------
# Small query blocks (Pq <= _STRIP_PQ, e.g. the 2x2 queries of a strided 4x4 block): per block,
# the products are too small for BLAS to pay for its call and for copying the window. Instead,
# one block row at a time: its keys and values are whole padded rows of the map, the strip
# kpix[y0 : y0 + win] (a contiguous (win * Wp, d) matrix, no copy), and one product takes all
# the row's queries against every key of the strip. Each query then reads its own window out of
# that product; the weighted sums multiply probabilities laid out in strip coordinates (zero
# outside the query's window) by the strip. That is Wp / win times the multiply-adds of the
# blocked kernel, but a handful of BLAS calls per block row instead of several per block, and
# the key/value gradients are added to whole strips, with no patch copies. Measured on the tiny
# model's strided layers (2x2 query blocks): forward 1.5-1.7x faster, backward 1.0-1.15x; with
# 4x4 query blocks and more the blocked kernel wins.
# ---------------------------------------------------------------------------------------------
_STRIP_PQ = 4


@njit(cache=True, inline="always")
def _strip_window(strip_row, Wp, x0, win, window):
    """window[ky*win + kx] = strip_row[ky*Wp + x0 + kx]: one window out of a strip-wide row."""
    for ky in range(win):
        window[ky * win : ky * win + win] = strip_row[ky * Wp + x0 : ky * Wp + x0 + win]


@njit(cache=True, inline="always")
def _window_to_strip(window, Wp, x0, win, strip_row):
    """The inverse of `_strip_window` (strip entries outside the window are left as they are)."""
    for ky in range(win):
        strip_row[ky * Wp + x0 : ky * Wp + x0 + win] = window[ky * win : ky * win + win]


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _forward_strip_kernel(
    q_map, kv_map, rh, rw, num_heads, block, halo, qs, scale, scale_pos, mask, out_map, attn
):
    """`_forward_kernel` for small query blocks, one block row at a time (same outputs)."""
    B, d_qk = kv_map.shape[0], rh.shape[1]
    geo = _geometry(q_map, kv_map, d_qk, out_map.shape[1], num_heads, block, halo, qs)
    H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw = geo
    Wp = W + 2 * halo
    Ls = win * Wp  # keys of one strip: the window rows of a whole block row
    M = nbw * Pq  # queries of one block row, block by block
    cs = scale
    bs = scale if scale_pos else scale / scale
    for t in prange(B * num_heads):
        b, hd = t // num_heads, t % num_heads
        dt = q_map.dtype
        qpix, kpix, vpix = _head_maps(q_map, kv_map, b, hd, halo, d_qk, d_v)
        qh, qw = _position_logits(qpix, rh, rw)
        Qr = np.empty((M, d_qk), dt)
        S = np.empty((M, Ls), dt)  # every query of the row against every key of the strip
        Ar = np.zeros((M, Ls), dt)  # probabilities in strip coordinates, 0 outside each window
        Or = np.empty((M, d_v), dt)
        madd = np.empty(Pw, dt)
        bits = np.empty(Pw, np.int32)
        for by in range(nbh):
            for i in range(M):
                Qr[i] = qpix[_query_pixel(by, i // Pq, i % Pq, bq)]
            np.dot(Qr, kpix[by * block : by * block + win].reshape(Ls, d_qk).T, S)
            for bx in range(nbw):
                n = by * nbw + bx
                _border_row(H, W, by * block - halo, bx * block - halo, win, mask, madd)
                for p in range(Pq):
                    row = attn[b, hd, n, p]
                    _strip_window(S[bx * Pq + p], Wp, bx * block, win, row)
                    h_row, w_row = _table_rows(qh, qw, by, bx, p, bq, Wq, win)
                    _logits_to_probs(row, h_row, w_row, madd, cs, bs, win, bits)
                    _window_to_strip(row, Wp, bx * block, win, Ar[bx * Pq + p])
            np.dot(Ar, vpix[by * block : by * block + win].reshape(Ls, d_v), Or)
            for i in range(M):
                iy, ix = _query_pixel(by, i // Pq, i % Pq, bq)
                for c in range(d_v):
                    out_map[b, hd * d_v + c, iy, ix] = Or[i, c]
                Ar[i] = 0


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backward_strip_kernel(
    dout_map, q_map, kv_map, rh, rw, attn, num_heads, block, halo, qs, scale, scale_pos,
    dq_map, dkv_map, dh_part, dw_part,
):  # fmt: skip
    """`_backward_kernel` for small query blocks, one block row at a time (same outputs)."""
    B, (R, d_qk) = kv_map.shape[0], rh.shape
    geo = _geometry(q_map, kv_map, d_qk, dout_map.shape[1], num_heads, block, halo, qs)
    H, W, Hq, Wq, d_v, bq, win, Pq, Pw, nbh, nbw = geo
    Wp = W + 2 * halo
    Ls = win * Wp
    M = nbw * Pq
    cs = scale
    pos_ratio = scale / scale if scale_pos else 1 / scale
    for t in prange(B * num_heads):
        b, hd = t // num_heads, t % num_heads
        dt = q_map.dtype
        qpix, kpix, vpix = _head_maps(q_map, kv_map, b, hd, halo, d_qk, d_v)
        dopix, dqpix, dkpix, dvpix = _grad_maps(dout_map, b, hd, qpix, kpix, vpix)
        Qr = np.empty((M, d_qk), dt)
        dOr = np.empty((M, d_v), dt)
        Ar = np.zeros((M, Ls), dt)
        G = np.empty((M, Ls), dt)  # d attn for every strip key, then cs * d logits (0 outside)
        dQr = np.empty((M, d_qk), dt)
        tK = np.empty((Ls, d_qk), dt)
        tV = np.empty((Ls, d_v), dt)
        g_row = np.empty(Pw, dt)
        dqh = np.zeros((Hq * Wq, R), dt)
        dqw = np.zeros((Hq * Wq, R), dt)
        for by in range(nbh):
            for i in range(M):
                iy, ix = _query_pixel(by, i // Pq, i % Pq, bq)
                Qr[i] = qpix[iy, ix]
                dOr[i] = dopix[iy, ix]
            np.dot(dOr, vpix[by * block : by * block + win].reshape(Ls, d_v).T, G)
            for bx in range(nbw):
                n = by * nbw + bx
                for p in range(Pq):
                    a_row = attn[b, hd, n, p]
                    _strip_window(G[bx * Pq + p], Wp, bx * block, win, g_row)
                    h_seg, w_seg = _table_rows(dqh, dqw, by, bx, p, bq, Wq, win)
                    _logit_grads(a_row, g_row, cs, pos_ratio, win, h_seg, w_seg)
                    G[bx * Pq + p] = 0
                    _window_to_strip(g_row, Wp, bx * block, win, G[bx * Pq + p])
                    _window_to_strip(a_row, Wp, bx * block, win, Ar[bx * Pq + p])
            # content = q @ k^T and out = A @ v, over whole strips: strips of neighbouring
            # block rows overlap by 2 * halo rows, added in row order (deterministic)
            np.dot(G, kpix[by * block : by * block + win].reshape(Ls, d_qk), dQr)
            np.dot(G.T, Qr, tK)
            dkpix[by * block : by * block + win].reshape(Ls, d_qk)[:] += tK
            np.dot(Ar.T, dOr, tV)
            dvpix[by * block : by * block + win].reshape(Ls, d_v)[:] += tV
            for i in range(M):
                dqpix[_query_pixel(by, i // Pq, i % Pq, bq)] = dQr[i]
                Ar[i] = 0
        dh, dw = dh_part[t], dw_part[t]
        _finish_grads(
            qpix, dqpix, dkpix, dvpix, dqh, dqw, rh, rw, dh, dw, dq_map, dkv_map, b, hd, halo
        )


def warm_up(dtypes=(np.float32, np.float64)):
    """Compile the kernels for each dtype (or load them from the disk cache) by running a tiny
    case of each; returns the seconds spent. Call it once before timing anything."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for dt in dtypes:
        # both attention kernel pairs: 2x2 query blocks take the strips, 4x4 the blocked ones
        for side in (2, 4):
            q = rng.standard_normal((1, 2, side, side)).astype(dt)
            kv = rng.standard_normal((1, 4, side, side)).astype(dt)
            rel = rng.standard_normal((2 * side + 3, 2)).astype(dt)
            kwargs = dict(num_heads=1, block_size=side, halo_size=1, scale=0.5, border="mask")
            out, cache = halo_attention_forward_numba(q, kv, rel, rel, **kwargs)
            halo_attention_backward_numba(out, cache)
        y, cache = conv1x1_forward_numba(q, rng.standard_normal((3, 2, 1, 1)).astype(dt))
        conv1x1_backward_numba(y, cache)
        x3 = np.ascontiguousarray(kv.reshape(1, 4, -1))
        out, xhat, _, _, invstd = batchnorm_train_forward(x3, x3[0, :, 0], x3[0, :, 1], 1e-5)
        batchnorm_train_backward(out, xhat, x3[0, :, 0], invstd)
        out, sig = silu_forward(x3)
        silu_backward(add(out, x3), x3, sig)
        y, cache = conv2d_forward(kv, rng.standard_normal((3, 4, 3, 3)).astype(dt), None, 2, 1)
        conv2d_backward(y, cache)
    return time.perf_counter() - start


def _contiguous(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


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
    """Halo attention on projected maps, with the Numba kernel (same contract as the reference).

    q_map: (B, heads*d_qk, H/s, W/s); kv_map: (B, heads*(d_qk+d_v), H, W), per head [k | v];
    height_rel, width_rel: (2*win - 1, d_qk). Returns out (B, heads*d_v, H/s, W/s) and a cache
    for `halo_attention_backward_numba`. The cache refers to q_map and kv_map (no copies): do not
    modify them in place before the backward.
    """
    dt = kv_map.dtype
    if dt not in (np.float32, np.float64) or q_map.dtype != dt or height_rel.dtype != dt:
        raise HaloRefError(
            f"numba halo attention: q_map ({q_map.dtype}), kv_map ({dt}) and the relative tables "
            f"({height_rel.dtype}) must share one dtype, float32 or float64; cast them to one"
        )
    B, C, H, W = kv_map.shape
    R, d_qk = height_rel.shape
    d_v = C // num_heads - d_qk
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    N = (H // block_size) * (W // block_size)
    q_map, kv_map = _contiguous(q_map, dt), _contiguous(kv_map, dt)
    height_rel, width_rel = _contiguous(height_rel, dt), _contiguous(width_rel, dt)
    Hq, Wq = q_map.shape[2:]
    out_map = np.empty((B, num_heads * d_v, Hq, Wq), dt)
    attn = np.empty((B, num_heads, N, bq * bq, win * win), dt)  # B, heads, N, Pq, Pw
    args = (num_heads, block_size, halo_size, query_stride, dt.type(scale))
    kernel = _forward_strip_kernel if bq * bq <= _STRIP_PQ else _forward_kernel
    kernel(q_map, kv_map, height_rel, width_rel, *args, bool(scale_pos_embed), border == "mask",
        out_map, attn,
    )  # fmt: skip
    cache = (q_map, kv_map, height_rel, width_rel, attn, args, bool(scale_pos_embed))
    return out_map, cache


def halo_attention_backward_numba(dout_map, cache):
    """Gradients of `halo_attention_forward_numba`.

    dout_map: (B, heads*d_v, H/s, W/s). Returns dq_map (like q_map), dkv_map (like kv_map),
    dheight_rel and dwidth_rel (2*win - 1, d_qk).
    """
    q_map, kv_map, height_rel, width_rel, attn, args, scale_pos = cache
    dt = kv_map.dtype
    dout_map = _contiguous(dout_map, dt)
    B, num_heads = attn.shape[:2]
    R, d_qk = height_rel.shape
    dq_map = np.empty_like(q_map)
    dkv_map = np.empty_like(kv_map)
    dh_part = np.empty((B * num_heads, R, d_qk), dt)
    dw_part = np.empty((B * num_heads, R, d_qk), dt)
    Pq = attn.shape[3]
    kernel = _backward_strip_kernel if Pq <= _STRIP_PQ else _backward_kernel
    kernel(dout_map, q_map, kv_map, height_rel, width_rel, attn, *args, scale_pos,
        dq_map, dkv_map, dh_part, dw_part,
    )  # fmt: skip
    # fixed-order reduction over tasks: deterministic whatever the thread count
    return dq_map, dkv_map, dh_part.sum(axis=0), dw_part.sum(axis=0)
