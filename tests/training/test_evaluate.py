"""halo_ref.training.evaluate: the batcher's input and the evaluation's loss and accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import StandIn

from halo_ref import HaloRefError
from halo_ref.nn.functional import cross_entropy_forward
from halo_ref.training.evaluate import Batcher, evaluate, evaluate_checkpoint


def test_batcher_normalises_per_channel_and_pads_to_the_models_multiple():
    images = np.zeros((2, 5, 6, 3), np.uint8)
    images[..., 1] = 10
    batch = Batcher(mean=[0, 10, 0], std=[1, 1, 2], multiple=4, dtype=np.float32)(images)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == np.float32
    assert np.count_nonzero(batch) == 0  # every channel at its mean, padding zero


def test_evaluate_averages_over_every_image_in_eval_mode():
    model = StandIn(3 * 4 * 4, 3, dtype=np.float64, rng=0)
    images = np.random.default_rng(0).integers(0, 255, (7, 4, 4, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    batcher = Batcher([100.0] * 3, [50.0] * 3, 1, np.float64)
    seen = []
    forward = model.forward
    model.forward = lambda x: seen.append((len(x), model.training)) or forward(x)
    loss, acc = evaluate(model, batcher, images, labels, batch_size=3)
    assert seen == [(3, False), (3, False), (1, False)] and model.training
    logits = forward(batcher(images))
    assert acc == np.mean(logits.argmax(axis=1) == labels)


def test_flip_average_scores_the_mean_logits_of_each_image_and_its_mirror():
    # 5x6 images padded to 8x8: the mirror is taken before padding, as training's flips are
    model = StandIn(3 * 8 * 8, 3, dtype=np.float64, rng=0)
    images = np.random.default_rng(1).integers(0, 255, (5, 5, 6, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    batcher = Batcher([100.0] * 3, [50.0] * 3, 8, np.float64)
    loss, acc = evaluate(model, batcher, images, labels, batch_size=2, flip_average=True)
    logits = 0.5 * (model.forward(batcher(images)) + model.forward(batcher(images[:, :, ::-1])))
    expected_loss, _ = cross_entropy_forward(logits, labels)
    # the same sums in another grouping (batches of 2 against all 5): rounding only
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12, atol=0)
    assert acc == np.mean(logits.argmax(axis=1) == labels)
    plain_loss, _ = evaluate(model, batcher, images, labels, batch_size=2)
    assert plain_loss != loss  # the mirror changed the score: the option did something


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused_before_anything_is_read(batch_size, tmp_path):
    # -1 once gave 0.00% and exit status 0 (no batch ran); 0 a ValueError from range()
    model = StandIn(3, 3, dtype=np.float64, rng=0)
    images, labels = np.zeros((4, 1, 1, 3), np.uint8), np.zeros(4, np.int64)
    with pytest.raises(HaloRefError, match="batch_size must be an integer >= 1"):
        evaluate(model, Batcher([0.0] * 3, [1.0] * 3, 1, np.float64), images, labels,
                 batch_size=batch_size)  # fmt: skip
    with pytest.raises(HaloRefError, match="batch_size must be an integer >= 1"):
        evaluate_checkpoint(str(tmp_path / "missing.npz"), batch_size=batch_size)


def test_a_run_folder_given_as_the_checkpoint_points_at_its_files(tmp_path):
    # once "checkpoint FOLDER does not exist"
    (tmp_path / "best.npz").write_bytes(b"")
    with pytest.raises(HaloRefError, match=r"path='.*' is a folder, not a checkpoint file; pass "
                       r"a file inside it, e.g. path='.*best.npz'"):  # fmt: skip
        evaluate_checkpoint(str(tmp_path))
    (tmp_path / "best.npz").unlink()
    with pytest.raises(HaloRefError, match="it holds no best.npz or checkpoint.npz"):
        evaluate_checkpoint(str(tmp_path))
