"""Careless input on the command line: every bad flag is one line on stderr, exit status 2,
naming the flag and what it must be, before any work (nothing is read, compiled or written).

Each case here was once a traceback, a silent acceptance or a wrong result (issue 13)."""

from __future__ import annotations

import math
import os
import re

import pytest

from halo_ref.cli.main import main
from halo_ref.training.checkpoint import load_checkpoint
from halo_ref.training.optim import SGD

BAD_FLAGS = [
    (["train", "--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["train", "--warmup-epochs", "nan"], "argument --warmup-epochs: must be a finite number >= 0"),
    (["train", "--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    (["demo", "--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    (["vectors", "--out", "v", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["train", "--clip-grad", "-1"], "argument --clip-grad: must be a finite number >= 0"),
    (["train", "--clip-grad", "nan"], "argument --clip-grad: must be a finite number >= 0"),
    (["train", "--checkpoint-every", "-5"], "argument --checkpoint-every: must be an integer >= 0"),
    (["train", "--weight-decay", "-1"], "argument --weight-decay: must be a finite number >= 0"),
    (["train", "--momentum", "1"], "argument --momentum: must be a finite number >= 0 and < 1"),
    (["train", "--label-smoothing", "1"], "argument --label-smoothing: must be a finite number"),
    (["train", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    (["train", "--epochs", "1.5"], "argument --epochs: must be an integer >= 1, got '1.5'"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["train", "--threads", "0"], "argument --threads: must be an integer >= 1"),
    (["train", "--model", "nosuch"], "argument --model: invalid choice: 'nosuch'"),
    (["evaluate", "--checkpoint", "c.npz", "--batch-size", "-1"], "argument --batch-size: must be an integer >= 1"),
    (["evaluate", "--checkpoint", "c.npz", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["verify", "--against", "timm", "--details", "-1"], "argument --details: must be an integer >= 0"),
    (["train", "--optimizer", "nesterov", "--momentum", "0"], "--optimizer nesterov needs --momentum > 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    "argv, message", BAD_FLAGS, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_a_bad_flag_is_one_line_naming_it_with_status_2(
    argv, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a run that started anyway would write here
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("halo-ref: error: ") and err.count("\n") == 1, err
    assert message in err
    assert out == "" and not list(tmp_path.iterdir())  # refused before any work


def _refused(argv, capsys):
    """Run the CLI, expect status 2 and one line on stderr; returns that line."""
    assert main([*argv, "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("halo-ref: error: ") and err.count("\n") == 1, err
    return err


def test_output_folders_that_cannot_hold_the_run_name_the_flag(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    err = _refused(["train", "--out", str(a_file)], capsys)
    assert f"--out {a_file} is a file, not a folder" in err
    err = _refused(["train", "--out", str(a_file / "run")], capsys)
    assert f"--out {a_file / 'run'}: {a_file} is a file" in err
    old = tmp_path / "old"
    old.mkdir()
    for name in ("best.npz", "metrics.jsonl", "summary.json"):
        (old / name).write_text(f"an earlier run's {name}")
    err = _refused(["train", "--out", str(old)], capsys)
    assert "holds best.npz, metrics.jsonl, summary.json but no checkpoint.npz" in err
    assert "choose another folder for --out" in err
    err = _refused(["train", "--out", str(old), "--resume"], capsys)
    assert "so there is no run to continue" in err
    assert all((old / n).read_text() == f"an earlier run's {n}" for n in os.listdir(old))


def test_a_data_error_leaves_no_empty_output_folder(tmp_path, capsys):
    err = _refused(
        ["train", "--dataset", f"npz:{tmp_path / 'no.npz'}", "--out", str(tmp_path / "run")], capsys
    )
    assert "--dataset npz:" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, blow_up_at, expected, clip_advice",
    [
        # once "HaloAttention.forward: x contains NaN or inf ... check the data", no step
        (["--lr", "1e30"], None, r"training diverged at step 2 \(epoch 1, batch 2 of 23\): the "
         r"forward pass gave NaN or inf activations; .*no step had been saved yet",
         "or --clip-grad (now 5)"),
        # once offered a "last good checkpoint" with a NaN test loss, and "lower --clip-grad"
        # with clipping off. The update is blown up at a chosen step (30 = epoch 2, batch 7) so
        # the case does not hang on when plain SGD at a large rate happens to diverge, which
        # varies with the machine's floating-point sums.
        (["--optimizer", "sgd", "--clip-grad", "0"], 30, r"training diverged at step 3[01] "
         r"\(epoch 2, batch [78] of 23\): .*the last good checkpoint is .* \(epoch 1, step 23\)",
         "or clip the gradients (--clip-grad 5)"),
    ],
)  # fmt: skip
def test_divergence_names_the_step_and_keeps_only_finite_checkpoints(
    flags, blow_up_at, expected, clip_advice, tmp_path, capsys, monkeypatch
):
    if blow_up_at is not None:
        sgd_step, calls = SGD.step, []

        def step(self, grads, lr):
            calls.append(lr)
            sgd_step(self, grads, lr * (1e300 if len(calls) >= blow_up_at else 1.0))

        monkeypatch.setattr(SGD, "step", step)
    out = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "3", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err), err
    assert clip_advice in err and err.count("clip-grad") == 1
    _, _, meta, _ = load_checkpoint(str(out / "checkpoint.npz"))
    losses = [h[k] for h in meta["history"] for k in ("train_loss", "test_loss")]
    assert all(math.isfinite(v) for v in losses)


def test_evaluate_given_a_run_folder_suggests_the_file_in_it(tmp_path, capsys):
    (tmp_path / "best.npz").write_bytes(b"")
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"--checkpoint {tmp_path} is a folder, not a checkpoint file; pass a file inside it, "
        f"e.g. --checkpoint {tmp_path / 'best.npz'}" in err
    )
