"""`halo-ref train` and `halo-ref evaluate` end to end: kill -9 and resume, CIFAR-10, errors.

The kill test runs the real command line in a subprocess (with the stand-in model of
tests/helpers.py, patched in by a small launcher script, so that it is fast and independent of
the HaloNet models) and kills it with SIGKILL at several moments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import make_cifar_archive

from halo_ref.cli.main import main
from halo_ref.training.checkpoint import load_checkpoint
from halo_ref.training.data import cifar10

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAUNCHER = """
import os, sys, time
sys.path.insert(0, {tests!r})
import helpers
import halo_ref.training.loop

pause = float(os.environ.get("STEP_PAUSE", "0"))

def factory(*args, **kwargs):
    model = helpers.standin_factory(*args, **kwargs)
    forward = model.forward
    def slow(x):  # slows the run down so that the kills land during training
        time.sleep(pause)
        return forward(x)
    model.forward = slow
    return model

halo_ref.training.loop.halonet = factory  # the model train() builds by default
from halo_ref.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _launch(tmp_path, out, *extra, pause=0.0):
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(LAUNCHER.format(tests=TESTS)))
    args = ["train", "--epochs", "4", "--batch-size", "64", "--lr", "0.01", "--threads", "1",
            "--checkpoint-every", "3", "--no-progress", "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "STEP_PAUSE": str(pause), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for(predicate, timeout=120.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.01)


def test_kill_9_at_any_moment_then_resume_is_bit_identical(tmp_path):
    ref = _launch(tmp_path, tmp_path / "ref")
    out_ref, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out_ref

    out = tmp_path / "killed"
    ckpt = out / "checkpoint.npz"
    kills_during_training = 0
    # kill 1: soon after the first checkpoint; 2: during start-up; 3: after a later save
    for when in ("after-first-save", "start-up", "after-next-save"):
        proc = _launch(tmp_path, out, "--resume", pause=0.01)
        if when == "after-first-save":
            _wait_for(lambda p=proc: ckpt.exists() or p.poll() is not None)
            time.sleep(0.05)
        elif when == "start-up":
            time.sleep(0.3)
        else:
            before = ckpt.stat().st_mtime_ns
            _wait_for(lambda p=proc, t=before: ckpt.stat().st_mtime_ns != t or p.poll() is not None)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills_during_training += when != "start-up"
        proc.communicate(timeout=60)
    assert kills_during_training >= 1, "the run ended before it could be killed: slow it down"
    assert not (out / "summary.json").exists()
    last = _launch(tmp_path, out, "--resume")
    log, _ = last.communicate(timeout=300)
    assert last.returncode == 0, log
    assert "resuming" in log

    ref_params = load_checkpoint(str(tmp_path / "ref" / "checkpoint.npz"))[0]
    params = load_checkpoint(str(ckpt))[0]
    for k in ref_params:
        assert np.array_equal(ref_params[k], params[k]), k  # bit for bit
    assert (json.loads((out / "summary.json").read_text())["test_accuracy"]
            == json.loads((tmp_path / "ref" / "summary.json").read_text())["test_accuracy"])  # fmt: skip
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("halo-ref: error: --dataset 'mnist' is not known") and "\n" not in err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "argument --epochs: must be an integer >= 1" in capsys.readouterr().err


def test_cifar10_download_and_short_training_run_with_the_tiny_halonet(
    http_folder,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    pytest.importorskip("halo_ref.models")
    www, base = http_folder
    _, md5, _ = make_cifar_archive(str(www), n_per_batch=4)
    monkeypatch.setattr(cifar10, "MD5", md5)  # the tiny archive stands for the official one
    monkeypatch.setenv("HALO_REF_CIFAR10_URL", f"{base}/{cifar10.ARCHIVE}")
    data_dir, out = tmp_path / "cache", tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--download", "--data-dir", str(data_dir),
            "--epochs", "1", "--batch-size", "8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "CIFAR-10" in captured.err and "epoch 1/1" in captured.err  # both progress bars
    assert "test accuracy:" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model"] == "tiny" and summary["steps"] == 3  # 20 images / 8
    assert (
        main(["evaluate", "--checkpoint", str(out / "best.npz"), "--data-dir", str(data_dir)]) == 0
    )
    line = capsys.readouterr().out
    assert line.startswith("test accuracy:") and "[cifar10," in line
    acc = float(line.split()[2].rstrip("%")) / 100
    # best.npz is the only epoch here, so evaluate must reproduce its number exactly
    assert acc == pytest.approx(summary["best_test_accuracy"], abs=1e-4)  # printed with 2 decimals


@pytest.mark.slow
def test_readme_first_command_reaches_95_percent_on_the_bundled_digits(tmp_path):
    # `halo-ref train` with every default, as the README's first command runs it
    proc = subprocess.run([sys.executable, "-m", "halo_ref", "train", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "runs" / "digits" / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.95, proc.stdout


def test_user_npz_with_an_odd_image_size_is_padded_with_a_notice(tmp_path, capsys):
    pytest.importorskip("halo_ref.models")
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 256, (24, 10, 10, 3), dtype=np.uint8),
             y_train=np.arange(24) % 4, x_test=rng.integers(0, 256, (8, 10, 10, 3), dtype=np.uint8),
             y_test=np.arange(8) % 4)  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"npz:{path}", "--epochs", "1", "--batch-size", "8",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (
        "note: 10x10 images are zero-padded to 16x16 (model 'micro' needs multiples of 8)" in text
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_hw"] == [16, 16] and summary["config"]["dataset"] == f"npz:{path}"
