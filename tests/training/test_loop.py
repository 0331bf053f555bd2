"""The training loop, checkpoints and resume, with a small stand-in model.

The stand-in (a two-layer perceptron) makes these tests independent of the HaloNet models and
fast: what is tested here is the loop's bookkeeping, whatever the model. Its own backward is
checked against finite differences first, since every later test trusts it.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest
from helpers import StandIn, standin_factory

import halo_ref
from halo_ref import HaloRefError
from halo_ref.models import halonet
from halo_ref.training.checkpoint import load_checkpoint
from halo_ref.training.config import TrainConfig
from halo_ref.training.data import load_digits
from halo_ref.training.evaluate import evaluate_checkpoint
from halo_ref.training.loop import TrainingDiverged, train
from halo_ref.verification.testing import check_layer_gradients


class Sabotage:
    """Wraps a factory: the model's forward raises or returns NaN at a given call."""

    def __init__(self, at_call, action, base=standin_factory):
        self.at_call, self.action, self.calls, self.base = at_call, action, 0, base

    def __call__(self, *args, **kwargs):
        model = self.base(*args, **kwargs)
        forward = model.forward

        def sabotaged(x):
            if model.training:
                self.calls += 1
                if self.calls == self.at_call:
                    if self.action == "nan":
                        return np.full((len(x), 10), np.nan, np.float32)
                    raise KeyboardInterrupt  # stands for a kill: nothing after this runs
            return forward(x)

        model.forward = sabotaged
        return model


def config(out, **kw):
    base = dict(dataset="digits", epochs=3, batch_size=64, lr=1e-2, out=str(out), threads=None,
                checkpoint_every=5, crop_pad=0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def small_digits(n_train, n_test):
    """The first images of the bundled digits: a run of the micro HaloNet in seconds."""
    d = load_digits()
    d.x_train, d.y_train = d.x_train[:n_train], d.y_train[:n_train]
    d.x_test, d.y_test = d.x_test[:n_test], d.y_test[:n_test]
    return d


def run(out, factory=standin_factory, **kw):
    return train(config(out, **kw), model_factory=factory, progress=False, log=lambda s: None)


def test_standin_backward_matches_finite_differences():
    model = StandIn(12, 5, dtype=np.float64, rng=1)
    x = np.random.default_rng(2).standard_normal((3, 3, 2, 2))
    check_layer_gradients(model, x, rng=3)  # raises on a mismatch (rtol 1e-7, see testing.py)


def test_training_learns_and_writes_every_file(tmp_path):
    summary = run(tmp_path)
    # a 2-layer perceptron reaches ~89% on the digits in 3 epochs; 85% is far above chance (10%)
    assert summary["test_accuracy"] > 0.85
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == 3 * 23
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["model"] == "micro" and summary["images_per_second_median"] > 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, _, meta, _ = load_checkpoint(str(tmp_path / "best.npz"))
    assert meta["best_acc"] == max(r["test_acc"] for r in rows)
    _, _, meta, _ = load_checkpoint(str(tmp_path / "checkpoint.npz"))
    assert (meta["epoch"], meta["step"], meta["batch"]) == (3, 69, 0)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    result = evaluate_checkpoint(str(tmp_path / "checkpoint.npz"), model_factory=standin_factory)
    assert result["test_accuracy"] == rows[-1]["test_acc"]  # same model, same data: exact


def test_a_validation_split_is_scored_instead_of_the_test_set_which_is_never_touched(tmp_path):
    data = load_digits()
    # labels no cross-entropy accepts: evaluating on the test set would fail
    data.y_test = np.full_like(data.y_test, 10**6)
    lines = []
    summary = train(config(tmp_path, val_split=0.2, epochs=2), model_factory=standin_factory,
                    progress=False, log=lines.append, dataset=data)  # fmt: skip
    assert "evaluated on a validation split of 287 training images (--val-split 0.2" in lines[0]
    assert "the test set is not used" in lines[0] and lines[0].startswith("training 'micro'")
    rows = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "test_acc" not in rows[0] and summary["val_accuracy"] == rows[-1]["val_acc"] > 0.5
    assert summary["best_val_accuracy"] == max(r["val_acc"] for r in rows)
    assert summary["evaluated_on"].startswith("a validation split of 287")
    _, _, meta, _ = load_checkpoint(str(tmp_path / "best.npz"))
    assert meta["eval_split"] == "val" and meta["config"]["val_split"] == 0.2
    assert meta["dataset_shape"][0] == 1438 - 287 and meta["class_names"] == list("0123456789")


def test_the_first_line_names_the_recipe_the_image_size_picked(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fashion.npz"
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 4
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    lines = []
    factory = functools.partial(standin_factory, image=28)
    cfg = TrainConfig(dataset=f"npz:{path}", epochs=1, out=str(tmp_path / "run"))
    summary = train(cfg, model_factory=factory, progress=False, log=lines.append)
    assert lines[0].startswith("training 'tiny28'")
    assert "recipe 'size28' (28x28 grey images: images of 17x17 to 28x28 pixels)" in lines[0]
    assert "crop-pad 3, no flips" in lines[0] and "evaluated on the 8 test images" in lines[0]
    assert summary["config"]["recipe"] == "size28" and summary["config"]["label_smoothing"] == 0.1


def _params(path):
    return load_checkpoint(str(path))[0]


# the first step (only the step-0 checkpoint exists), mid-epoch, first step of epoch 3, last
@pytest.mark.parametrize("interrupt_at", [1, 30, 46, 69])
def test_interrupted_then_resumed_run_is_bit_identical(tmp_path, interrupt_at):
    run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", factory=Sabotage(interrupt_at, "interrupt"))
    summary = run(tmp_path / "cut", resume=True)
    whole, cut = (
        _params(tmp_path / "whole/checkpoint.npz"),
        _params(tmp_path / "cut/checkpoint.npz"),
    )
    assert whole.keys() == cut.keys()
    for k in whole:
        assert np.array_equal(whole[k], cut[k]), k  # bit-identical, not merely close
    rows = [json.loads(s) for s in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(s) for s in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, ref, strict=True):
        assert (a["train_loss"], a["test_acc"]) == (b["train_loss"], b["test_acc"])
    assert summary["test_accuracy"] == ref[-1]["test_acc"]


def test_a_finished_run_resumes_to_the_same_summary(tmp_path):
    first = run(tmp_path, epochs=1)
    again = run(tmp_path, epochs=1, resume=True)
    assert again["test_accuracy"] == first["test_accuracy"] and again["steps"] == first["steps"]


def test_existing_run_is_never_overwritten_or_silently_restarted(tmp_path):
    run(tmp_path, epochs=1)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(HaloRefError, match="already holds a run.*resume=True.*another folder"):
        run(tmp_path, epochs=1)
    with pytest.raises(HaloRefError, match=r"resume=True: lr=0.5 \(checkpoint: 0.01\).*drop these"):
        run(tmp_path, epochs=1, lr=0.5, resume=True)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_a_run_is_never_started_over_the_files_of_another_without_a_checkpoint(tmp_path):
    # once, a folder holding a 98% best.npz, metrics.jsonl and summary.json but no
    # checkpoint.npz was silently overwritten by a new run
    run(tmp_path / "old", epochs=1)
    (tmp_path / "old" / "checkpoint.npz").unlink()
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    with pytest.raises(HaloRefError, match=r"holds best.npz, .* but no checkpoint.npz, so a new "
                       r"run would overwrite them; its best.npz can still be evaluated"):  # fmt: skip
        run(tmp_path / "old", epochs=1)
    with pytest.raises(HaloRefError, match="but no checkpoint.npz, so there is no run to continue"):
        run(tmp_path / "old", epochs=1, resume=True)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "curves.png").write_bytes(b"any one of a run's files is enough")
    with pytest.raises(HaloRefError, match="holds curves.png but no checkpoint.npz"):
        run(tmp_path / "only", epochs=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before


def test_a_new_runs_first_file_is_its_checkpoint_at_step_0(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # a kill during the first step
        run(tmp_path, factory=Sabotage(1, "interrupt"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]
    _, _, meta, _ = load_checkpoint(str(tmp_path / "checkpoint.npz"))
    assert (meta["epoch"], meta["step"]) == (0, 0)
    with pytest.raises(HaloRefError, match="already holds a run"):
        run(tmp_path)


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write in. chmod stops everyone but root; as root (CI here
    runs as root), sysfs refuses new files to anyone."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/fs")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            yield candidate
            break
    else:
        pytest.skip("no folder here refuses writing")
    folder.chmod(0o755)


@pytest.mark.parametrize("where", ["file", "under a file", "unwritable", "under unwritable"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path, where, unwritable
):
    # once tracebacks, the unwritable one only after a whole epoch of training
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out, message = {
        "file": (a_file, "is a file, not a folder"),
        "under a file": (a_file / "run", "is a file, so no folder can be made under it"),
        "unwritable": (unwritable, "cannot write in"),
        "under unwritable": (unwritable / "run", "cannot write in"),
    }[where]
    started = Sabotage(1, "nan")  # counts the training steps (a first one would diverge)
    with pytest.raises(HaloRefError, match=f"^out='{re.escape(str(out))}'.* {message}"):
        run(out, factory=started)
    assert started.calls == 0 and a_file.read_text() == "not a folder"


def test_a_data_error_leaves_no_output_folder_behind(tmp_path):
    with pytest.raises(HaloRefError, match="no such file"):
        run(tmp_path / "run", dataset=f"npz:{tmp_path / 'missing.npz'}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage"])
def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path, damage):
    run(tmp_path, epochs=1)
    path = tmp_path / "checkpoint.npz"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-300])
    elif damage == "foreign":
        np.savez(path, weights=np.zeros(3))
    else:
        path.write_bytes(b"not a checkpoint at all")
    message = {
        "truncate": "not a readable checkpoint",
        "foreign": "an .npz file but not a halo_ref checkpoint",
        "garbage": "is not an .npz file; pass a checkpoint.npz or best.npz",
    }[damage]
    with pytest.raises(HaloRefError, match=message) as info:
        run(tmp_path, epochs=1, resume=True)  # the run must stop, not start from scratch
    assert "\n" not in str(info.value)
    with pytest.raises(HaloRefError, match=message):
        evaluate_checkpoint(str(path), model_factory=standin_factory)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # call 33 is step 33: epoch 2, batch 10; the last save was at step 30 (every 5)
    with pytest.raises(
        TrainingDiverged,
        match=r"^training diverged at step 33 \(epoch 2, batch 10 of 23\): the loss is nan; ",
    ) as e:
        run(tmp_path, factory=Sabotage(33, "nan"))
    assert "last good checkpoint is" in str(e.value) and "(epoch 1, step 30)" in str(e.value)
    assert "lower lr (now 0.01) or clip_grad (now 5)" in str(e.value)
    params = _params(tmp_path / "checkpoint.npz")
    assert all(np.isfinite(v).all() for v in params.values())
    with pytest.raises(TrainingDiverged, match="at step 3 .*no step had been saved yet"):
        run(tmp_path / "early", factory=Sabotage(3, "nan"))


def test_with_clipping_off_divergence_does_not_advise_lowering_it(tmp_path):
    with pytest.raises(TrainingDiverged) as e:
        run(tmp_path, factory=Sabotage(3, "nan"), clip_grad=0.0)
    assert "lower lr (now 0.01) or clip the gradients (clip_grad=5)" in str(e.value)
    assert "clip_grad (now" not in str(e.value)


def test_an_update_that_overflows_the_parameters_is_divergence(tmp_path):
    def factory(*args, **kwargs):  # finite but huge gradients: the update itself overflows
        model = standin_factory(*args, **kwargs)
        backward = model.backward

        def huge(dout):
            dx = backward(dout)
            for g in model._grads.values():
                g *= np.float32(1e15)  # squares stay finite in float32: the norm is finite
            return dx

        model.backward = huge
        return model

    with pytest.raises(TrainingDiverged, match=r"at step 1 .*: the update \(learning rate "
                       r"[^)]*\) made parameters NaN or inf"):  # fmt: skip
        run(tmp_path, factory=factory, clip_grad=0.0, lr=1e30, warmup_epochs=0.0)


def test_a_non_finite_evaluation_loss_is_divergence_and_saves_nothing(tmp_path):
    # once, the "last good checkpoint" offered after a divergence had a NaN test loss
    def factory(*args, **kwargs):
        model = standin_factory(*args, **kwargs)
        forward = model.forward
        model.forward = lambda x: forward(x) if model.training else forward(x) * np.nan
        return model

    with pytest.raises(TrainingDiverged, match=r"at the end of epoch 1: the test loss is nan; .*"
                       r"the last good checkpoint is .* \(epoch 0, step 20\)"):  # fmt: skip
        run(tmp_path, factory=factory)
    assert not (tmp_path / "best.npz").exists() and not (tmp_path / "metrics.jsonl").exists()
    _, _, meta, _ = load_checkpoint(str(tmp_path / "checkpoint.npz"))
    assert meta["step"] == 20 and meta["history"] == []


def test_weights_that_overflow_the_activations_stop_the_run_naming_the_step(tmp_path):
    # micro at lr 1e30: the first update leaves finite but enormous weights, and the second
    # forward overflows inside the network. This once read "HaloAttention.forward: x contains
    # NaN or inf ... check the data", naming no step.
    d = small_digits(96, 32)
    cfg = config(tmp_path, epochs=1, batch_size=32, lr=1e30, warmup_epochs=0.0)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step \d \(epoch 1, batch "
                       r"\d of 3\): the forward pass gave NaN or inf activations; "):  # fmt: skip
        train(cfg, model_factory=halonet, dataset=d, progress=False, log=lambda s: None)


def test_label_notices_are_logged_and_one_class_is_refused_before_the_folder_is_made(tmp_path):
    d, lines = load_digits(), []
    d.y_train, d.y_test, d.num_classes = d.y_train + 1, d.y_test + 1, 11  # 1-based labels
    train(config(tmp_path / "a", epochs=1), model_factory=standin_factory, dataset=d,
          progress=False, log=lines.append)  # fmt: skip
    assert any(s.startswith("note: no training images of class 0") for s in lines)
    d.y_train, d.y_test = np.ones_like(d.y_train), np.ones_like(d.y_test)
    with pytest.raises(HaloRefError, match="a classifier needs images of at least 2 classes"):
        train(config(tmp_path / "b"), model_factory=standin_factory, dataset=d, progress=False)
    assert not (tmp_path / "b").exists()


@pytest.fixture
def numba_threads():
    """Numba's thread count, restored after the test (set_threads changes the process's)."""
    before = numba.get_num_threads()
    yield numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(before)


def test_runs_record_the_threads_used_and_the_versions(tmp_path, numba_threads):
    # --threads 64 on 2 cores was capped silently while summary.json recorded 64
    lines = []
    summary = train(config(tmp_path, epochs=1, threads=1000), model_factory=standin_factory,
                    progress=False, log=lines.append)  # fmt: skip
    assert f"note: threads=1000 is more than the {numba_threads} threads Numba can start" in (
        "\n".join(lines)
    )
    env = summary["environment"]
    assert summary["config"]["threads"] == env["threads"] == numba_threads
    assert env["halo_ref"] == halo_ref.__version__ and env["numpy"] == np.__version__
    assert env["numba"] == numba.__version__ and env["python"] == platform.python_version()
    for name in ("checkpoint.npz", "best.npz"):
        _, _, meta, _ = load_checkpoint(str(tmp_path / name))
        assert meta["environment"]["threads"] == meta["config"]["threads"] == numba_threads
        assert meta["environment"]["numba"] == numba.__version__


def test_resuming_with_another_thread_count_says_so(tmp_path, numba_threads):
    if numba_threads < 2:
        pytest.skip("needs 2 threads")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, factory=Sabotage(30, "interrupt"), threads=1)
    lines = []
    train(config(tmp_path, threads=2, resume=True), model_factory=standin_factory,
          progress=False, log=lines.append)  # fmt: skip
    assert any("trained with 1 threads and this session uses 2" in s for s in lines)


def test_images_the_model_cannot_block_are_padded_with_a_notice(tmp_path):
    lines = []

    def factory(*args, **kwargs):
        return standin_factory(*args, multiple=3, **kwargs)

    train(config(tmp_path, epochs=1), model_factory=factory, progress=False, log=lines.append)
    assert any("8x8 images are zero-padded to 9x9" in s for s in lines)


def test_sgd_with_nesterov_and_label_smoothing_also_train(tmp_path):
    summary = run(tmp_path, optimizer="nesterov", lr=0.05, label_smoothing=0.1, epochs=2)
    assert summary["test_accuracy"] > 0.8  # same margin as above: chance is 0.1


def test_resume_is_bit_identical_with_the_micro_halonet_too(tmp_path):
    # the HaloNet has BatchNorm running statistics (buffers): they must survive a resume too
    d = small_digits(192, 64)

    def go(out, factory, **kw):
        cfg = config(out, epochs=2, batch_size=32, lr=2e-3, checkpoint_every=4, **kw)
        return train(cfg, model_factory=factory, dataset=d, progress=False, log=lambda s: None)

    go(tmp_path / "whole", halonet)
    with pytest.raises(KeyboardInterrupt):
        go(
            tmp_path / "cut", Sabotage(7, "interrupt", base=halonet)
        )  # step 6 of 12: mid-epoch, after a save at 4
    go(tmp_path / "cut", halonet, resume=True)
    whole, cut = (
        _params(tmp_path / "whole/checkpoint.npz"),
        _params(tmp_path / "cut/checkpoint.npz"),
    )
    assert any("running_mean" in k for k in whole)
    for k in whole:
        assert np.array_equal(whole[k], cut[k]), k


def test_temporary_files_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".checkpoint.npz.x1y2.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".notes.tmp").write_text("the user's own file")
    run(tmp_path, epochs=1, resume=True)
    assert not (tmp_path / ".checkpoint.npz.x1y2.tmp").exists()
    assert (tmp_path / ".notes.tmp").read_text() == "the user's own file"


def test_non_finite_gradient_also_stops_the_run(tmp_path):
    def factory(*args, **kwargs):
        model = standin_factory(*args, **kwargs)
        backward, calls = model.backward, []

        def poisoned(dout):
            calls.append(1)
            dx = backward(dout)
            if len(calls) == 8:  # step 7: the loss is finite, one gradient entry is not
                model._grads["fc1.weight"][0, 0] = np.inf
            return dx

        model.backward = poisoned
        return model

    with pytest.raises(
        TrainingDiverged, match=r"at step 8 \(epoch 1, batch 8 of 23\): the gradient norm is inf"
    ):
        run(tmp_path, factory=factory)
    _, _, meta, _ = load_checkpoint(str(tmp_path / "checkpoint.npz"))
    assert meta["step"] == 5  # the save before the bad step; the bad update was never applied
