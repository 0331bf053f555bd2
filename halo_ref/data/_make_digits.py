"""Rebuild `digits.npz` from scikit-learn's copy of the UCI digits (run once; kept for provenance).

    pip download --no-deps scikit-learn -d /tmp/skl && cd /tmp/skl && unzip -o *.whl \
        sklearn/datasets/data/digits.csv.gz
    python -m halo_ref.data._make_digits /tmp/skl/sklearn/datasets/data/digits.csv.gz

Each CSV row is 64 pixel counts (0..16, row-major 8x8) followed by the label. The split is
stratified: in each class, a fixed permutation (seed 0) sends 20% of the images to the test set.
"""

from __future__ import annotations

import gzip
import os
import sys

import numpy as np

from halo_ref._atomic import atomic_write

SEED = 0
TEST_FRACTION = 0.2


def main(csv_gz: str, out: str | None = None) -> None:
    with gzip.open(csv_gz, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :64].reshape(-1, 8, 8).astype(np.uint8)  # N, 8, 8; values 0..16
    labels = table[:, 64].astype(np.int64)
    rng = np.random.default_rng(SEED)
    test_idx = []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(labels == k))
        test_idx.extend(idx[: round(TEST_FRACTION * len(idx))])
    is_test = np.zeros(len(labels), bool)
    is_test[test_idx] = True
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")
    splits = dict(
        x_train=images[~is_test],
        y_train=labels[~is_test],
        x_test=images[is_test],
        y_test=labels[is_test],
    )
    atomic_write(out, lambda f: np.savez_compressed(f, **splits))
    print(f"wrote {out}: {(~is_test).sum()} train, {is_test.sum()} test images")


if __name__ == "__main__":
    main(*sys.argv[1:])
