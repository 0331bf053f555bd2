"""The same bits whatever the state of Numba's kernel cache.

A process that compiles the kernels and one that loads them from the disk cache must train
identically: otherwise a first-ever run that is interrupted and resumed (compiled, then loaded)
matches neither an uninterrupted run nor a rerun. Numba compiles a called function both on its
own and inside each caller, and a process runs whichever copy it loaded first, so any
optimisation that may round the copies differently (fast-math flags) shows up here; see
`halo_ref._numba_math`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from halo_ref.training.checkpoint import load_checkpoint

# One training step of the micro HaloNet on the digits, as `halo-ref train` takes it (BLAS on
# one thread, the float32 kernels' warm-up, AdamW after clipping). Prints the kernels compiled
# and loaded, those compiled after the warm-up (it should leave none) and the functions compiled
# for more than one signature (each costs a compile, and float32 alone needs one each).
STEP = """
import sys
import numpy as np
from halo_ref import _numba_math, backend
from halo_ref.attention import kernels as attention_kernels
from halo_ref.models import halonet
from halo_ref.nn import kernels as layer_kernels
from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward
from halo_ref.training.config import set_threads
from halo_ref.training.data import load_digits
from halo_ref.training.optim import clip_grad_norm, make_optimizer

def compiled():
    return sum(sum(f.stats.cache_misses.values()) for f in functions if hasattr(f, "stats"))

functions = [getattr(m, n) for m in (layer_kernels, _numba_math, attention_kernels)
             for n in dir(m) if hasattr(getattr(m, n), "signatures")]
set_threads(None)
backend.warm_up(dtypes=(np.float32,), processes=int(sys.argv[2]))
after_warm_up = compiled()
d = load_digits()
x = (d.x_train[:32].transpose(0, 3, 1, 2) / 16.0 - 0.5).astype(np.float32)  # B, 1, 8, 8
model = halonet("micro", num_classes=10, in_chans=1, dtype=np.float32, rng=0)
optimizer = make_optimizer("adamw", model.params, weight_decay=0.05)
loss, cache = cross_entropy_forward(model.forward(x), d.y_train[:32], label_smoothing=0.1)
model.zero_grad()
model.backward(cross_entropy_backward(cache))
clip_grad_norm(model.grads, 5.0)
optimizer.step(model.grads, 1e-3)
arrays = {"param:" + k: v for k, v in model.params.items()}
arrays.update({"grad:" + k: v for k, v in model.grads.items()})
np.savez(sys.argv[1], **arrays)
loaded = sum(sum(f.stats.cache_hits.values()) for f in functions if hasattr(f, "stats"))
twice = [f.__name__ for f in functions if len(f.signatures) > 1]
print(compiled(), loaded, compiled() - after_warm_up, " ".join(twice) or "-")
"""


def _step(path, cache_dir, processes=1):
    """Run STEP in a fresh interpreter on this kernel cache, its warm-up compiling in
    `processes` interpreters: the counts it prints."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-c", STEP, str(path), str(processes)],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled, loaded, after_warm_up, twice = proc.stdout.strip().split(maxsplit=3)
    return int(compiled), int(loaded), int(after_warm_up), twice


def test_a_step_is_bit_identical_whether_kernels_were_compiled_or_loaded(tmp_path):
    """One training step gives the same bits with kernels compiled in the process, loaded
    from the disk cache, or split between the two (a first run's warm-up compiles the
    attention kernels in a second interpreter and loads them from the cache it fills)."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    compiled, loaded, after_warm_up, twice = _step(tmp_path / "compiled.npz", cache)
    assert compiled > 0 and loaded == 0, (compiled, loaded)  # the cache was empty
    # the first run's compile time: nothing compiled twice, nothing left for the first step
    assert twice == "-", f"compiled for more than one signature: {twice}"
    assert after_warm_up == 0, f"{after_warm_up} functions compiled after the warm-up"
    compiled_alone = compiled
    compiled, loaded, _, _ = _step(tmp_path / "loaded.npz", cache)
    assert compiled == 0 and loaded > 0, (compiled, loaded)  # everything came from the cache
    split_cache = tmp_path / "split-cache"
    split_cache.mkdir()
    compiled, loaded, after_warm_up, twice = _step(tmp_path / "split.npz", split_cache, 2)
    # the second interpreter compiled the attention kernels: this one loaded them
    assert 0 < compiled < compiled_alone and loaded > 0, (compiled, loaded, compiled_alone)
    assert twice == "-" and after_warm_up == 0, (twice, after_warm_up)
    with np.load(tmp_path / "compiled.npz") as a:
        for other in ("loaded.npz", "split.npz"):
            with np.load(tmp_path / other) as b:
                assert sorted(a.files) == sorted(b.files)
                differ = [k for k in a.files if a[k].tobytes() != b[k].tobytes()]
            assert not differ, f"{other}: {len(differ)} of {len(a.files)} arrays differ: {differ}"


def _train(out, cache_dir, *extra):
    """`halo-ref train` of the micro HaloNet on the digits in a fresh interpreter (a Popen)."""
    args = ["--epochs", "2", "--checkpoint-every", "5", "--no-progress", "--out", str(out)]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen([sys.executable, "-m", "halo_ref", "train", *args, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_a_first_ever_run_killed_and_resumed_ends_bit_identical(tmp_path):
    """A first-ever run (empty kernel cache: it compiles) killed with SIGKILL after its first
    checkpoint, then resumed (it loads the kernels that run compiled), ends with the parameters
    and optimizer state of an uninterrupted run, byte for byte."""
    cache = tmp_path / "numba-cache"
    cut = tmp_path / "cut"
    proc = _train(cut, cache)
    deadline = time.monotonic() + 900
    while not (cut / "checkpoint.npz").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 15 minutes"
        time.sleep(0.05)
    alive = proc.poll() is None
    proc.kill()
    log, _ = proc.communicate()
    assert alive, f"the run ended before its first checkpoint could be cut short:\n{log}"
    assert not (cut / "summary.json").exists()
    logs = []
    for out, extra in ((cut, ["--resume"]), (tmp_path / "whole", [])):
        proc = _train(out, cache, *extra)
        logs.append(proc.communicate(timeout=900)[0])
        assert proc.returncode == 0, logs[-1]
    assert "resuming" in logs[0], logs[0]
    cut_state = load_checkpoint(str(cut / "checkpoint.npz"))
    whole_state = load_checkpoint(str(tmp_path / "whole" / "checkpoint.npz"))
    for part in (0, 1):  # the model's parameters and buffers, the optimizer's state
        a, b = cut_state[part], whole_state[part]
        assert sorted(a) == sorted(b)
        differ = [k for k in a if np.asarray(a[k]).tobytes() != np.asarray(b[k]).tobytes()]
        assert not differ, f"{len(differ)} of {len(a)} arrays differ: {differ}"
