"""`halo-ref exercises`: the skeletons filled with halo_ref's own code pass every graded test;
a planted wrong body fails with a message naming the broken property and a hint; a learner's
folder is never overwritten."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from halo_ref._checks import HaloRefError
from halo_ref.cli.main import main
from halo_ref.exercises import SKELETONS, SOLUTIONS, fill_solutions, write_exercises


def grade(folder, *args):
    """Run the learner's pytest in `folder` as a learner would (a fresh interpreter)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_cli_writes_skeletons_with_todos_and_refuses_to_overwrite(tmp_path, capsys):
    folder = tmp_path / "ex"
    assert main(["exercises", str(folder)]) == 0
    assert "python -m pytest" in capsys.readouterr().out
    names = sorted(os.listdir(folder))
    assert names == sorted([*SKELETONS, "README.md", "pytest.ini"])
    skeleton = (folder / "ex1_blocking.py").read_text()
    assert "TODO" in skeleton and "raise NotImplementedError" in skeleton
    (folder / "ex1_blocking.py").write_text("# my work\n")
    assert main(["exercises", str(folder)]) == 2  # one-line error, exit 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (folder / "ex1_blocking.py").read_text() == "# my work\n"
    with pytest.raises(HaloRefError, match="ex1_blocking.py"):
        write_exercises(str(folder))


def test_unfilled_skeletons_fail_saying_not_written_yet(tmp_path):
    write_exercises(str(tmp_path))
    proc = grade(tmp_path, "-k", "softmax")
    assert proc.returncode == 1
    assert "ex2_softmax.softmax_backward is not written yet" in proc.stdout


def test_reference_solutions_pass_every_exercise(tmp_path):
    write_exercises(str(tmp_path))
    fill_solutions(str(tmp_path))
    assert "TODO" not in (tmp_path / "ex4_attention.py").read_text()
    proc = grade(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "10 passed" in proc.stdout


# wrong bodies a learner might write, and what the grader must say about each
SCATTER_ASSIGNS = """import numpy as np
b, h = block_size, halo_size
B, N, _, C = windows.shape
win = b + 2 * h
padded = np.zeros((B, C, H + 2 * h, W + 2 * h))
for n in range(N):
    i, j = divmod(n, W // b)
    w = windows[:, n].reshape(B, win, win, C).transpose(0, 3, 1, 2)
    padded[:, :, i * b : i * b + win, j * b : j * b + win] = w  # the bug: = instead of +=
return padded[:, :, h : h + H, h : h + W]"""

KV_SPLIT_ALL_KEYS_FIRST = """import numpy as np
from halo_ref.attention.core import halo_attention_forward as ref
B, C2, H, W = kv_map.shape
d = q_map.shape[1] // num_heads
k = kv_map[:, : num_heads * d].reshape(B, num_heads, d, H, W)  # the bug: [all k | all v]
v = kv_map[:, num_heads * d :].reshape(B, num_heads, -1, H, W)
kv = np.concatenate([k, v], axis=2).reshape(B, C2, H, W)
return ref(q_map, kv, height_rel, width_rel, num_heads=num_heads, block_size=block_size,
           halo_size=halo_size, scale=scale)"""

PLANTED = [
    ("scatter_windows", SCATTER_ASSIGNS, "scatter_windows",
     ["not the adjoint of the gather", "overlapping windows", "never assign"]),
    ("softmax_backward", "return p * dp", "softmax",
     ["softmax_backward disagrees", "the correction term"]),
    ("halo_attention_forward", KV_SPLIT_ALL_KEYS_FIRST, "4a",
     ["exactly the configurations with num_heads > 1", "[k_0 | v_0 | k_1 | v_1"]),
]  # fmt: skip


@pytest.mark.parametrize(("function", "body", "select", "expected"), PLANTED,
                         ids=[p[0] for p in PLANTED])  # fmt: skip
def test_a_planted_wrong_body_fails_with_a_useful_hint(tmp_path, function, body, select, expected):
    write_exercises(str(tmp_path))
    fill_solutions(str(tmp_path), {**SOLUTIONS, function: body})
    proc = grade(tmp_path, "-k", select)
    assert proc.returncode == 1, proc.stdout[-2000:]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout[-3000:])
