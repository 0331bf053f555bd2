"""Relative position logits: the index arithmetic, the forward formula, and the backward."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from halo_ref.attention.relpos import relative_indices, relpos_backward, relpos_forward
from halo_ref.verification.testing import check_gradients

shapes = st.tuples(
    st.integers(1, 4),  # block_q
    st.integers(0, 4),  # extra window size beyond the query block (2*halo, or more with stride)
    st.integers(1, 4),  # d
    st.integers(1, 3),  # leading batch size
    st.integers(0, 2**31 - 1),
)


@given(shapes)
def test_indices_cover_every_offset_within_the_table(s):
    bq, extra, *_ = s
    win = bq + extra
    idx_h, idx_w = relative_indices(bq, win)
    assert idx_h.min() >= 0 and idx_h.max() <= 2 * win - 2
    # query at qy = 0 and key at ky = win - 1 is the largest offset: row 2 * win - 2
    assert idx_h[0, win - 1] == 2 * win - 2
    np.testing.assert_array_equal(idx_w[0], np.arange(win) + win - 1)


@given(shapes)
def test_forward_matches_the_formula(s):
    bq, extra, d, n, seed = s
    win = bq + extra
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, bq * bq, d))
    rh, rw = rng.standard_normal((2, 2 * win - 1, d))
    bias, _ = relpos_forward(q, rh, rw, bq)
    assert bias.shape == (n, bq * bq, win * win)
    for p in range(bq * bq):
        qy, qx = divmod(p, bq)
        for ky in range(win):
            for kx in range(win):
                expected = q[:, p] @ rh[ky - qy + win - 1] + q[:, p] @ rw[kx - qx + win - 1]
                # one dot product each way: equal to the last bits
                np.testing.assert_allclose(
                    bias[:, p, ky * win + kx], expected, rtol=1e-13, atol=1e-13
                )


@given(shapes)
def test_backward_matches_finite_differences(s):
    bq, extra, d, n, seed = s
    win = bq + extra
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, bq * bq, d))
    rh, rw = rng.standard_normal((2, 2 * win - 1, d))
    cot = rng.standard_normal((n, bq * bq, win * win))
    _, cache = relpos_forward(q, rh, rw, bq)
    dq, drh, drw = relpos_backward(cot, cache)

    def loss():
        return float(np.sum(cot * relpos_forward(q, rh, rw, bq)[0]))

    # relative error 1e-7: see halo_ref.verification.testing for why this is far above float64 noise
    check_gradients(loss, {"q": q, "rh": rh, "rw": rw}, {"q": dq, "rh": drh, "rw": drw}, rng=seed)
