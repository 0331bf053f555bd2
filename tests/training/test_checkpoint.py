"""halo_ref.training.checkpoint: checkpoint files read back as written, and a run's folder."""

from __future__ import annotations

import numpy as np
import pytest

from halo_ref import HaloRefError
from halo_ref.training.checkpoint import (
    CHECKPOINT_FORMAT,
    RunFolder,
    load_checkpoint,
    save_checkpoint,
)


def test_a_checkpoint_reads_back_as_written(tmp_path):
    path = str(tmp_path / "c.npz")
    model = {"fc.weight": np.arange(6.0).reshape(2, 3), "bn.num_batches_tracked": np.array(4)}
    optim = {"exp_avg/fc.weight": np.ones((2, 3)), "step_count": np.array(7)}
    save_checkpoint(path, model_state=model, optim_state=optim, meta={"epoch": 2}, order=[2, 0])
    m, o, meta, order = load_checkpoint(path)
    assert m.keys() == model.keys() and all(np.array_equal(m[k], model[k]) for k in model)
    assert o.keys() == optim.keys() and all(np.array_equal(o[k], optim[k]) for k in optim)
    assert meta["epoch"] == 2 and meta["format"] == CHECKPOINT_FORMAT
    assert order.dtype == np.int64 and list(order) == [2, 0]


def test_a_checkpoint_of_another_version_is_refused(tmp_path):
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, model_state={}, optim_state={}, meta={"version": 99})
    with pytest.raises(HaloRefError, match="format version 99"):
        load_checkpoint(path)


def test_a_run_folder_names_its_files_and_cleans_only_its_own_temporaries(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    folder.prepare()
    assert folder.checkpoint.endswith("run/checkpoint.npz") and folder.best.endswith("best.npz")
    (tmp_path / "run" / ".best.npz.abc.tmp").write_bytes(b"half")
    (tmp_path / "run" / ".mine.tmp").write_bytes(b"the user's")
    folder.prepare()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".mine.tmp"]
    assert folder.last_good() == "no checkpoint was written yet"
    history = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.2, "train_acc": 0.5, "test_acc": 0.4}]
    folder.write_metrics(history)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
