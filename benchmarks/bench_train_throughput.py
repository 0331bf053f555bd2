"""Training throughput of a HaloNet on CIFAR-shaped input (32x32x3), and minutes per epoch.

One training step is what `halo-ref train` does per batch: normalise + augment, forward,
cross-entropy, backward, gradient clipping, AdamW update. The baseline, measured in the same
run, is the same step with the attention on the pure NumPy backend. Prints a table and writes
benchmarks/results/train_throughput.json.

    python benchmarks/bench_train_throughput.py [--model tiny] [--batch-size 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys

# thread counts must be pinned before NumPy loads its BLAS
_threads = "2"
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _threads = sys.argv[_i + 1]
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _threads

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def make_runner(backend, args, images, labels, rng):
    """(step, infer) closures: one training step and one inference pass on one backend."""
    from halo_ref.models import halonet
    from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward
    from halo_ref.training.data.augment import augment
    from halo_ref.training.evaluate import Batcher
    from halo_ref.training.optim import AdamW, clip_grad_norm

    model = halonet(args.model, num_classes=10, in_chans=3, rng=0, backend=backend)
    batcher = Batcher(np.full(3, 120.0), np.full(3, 64.0), model.input_multiple, np.float32)
    opt = AdamW(model.params, weight_decay=0.05)

    def step():
        x = augment(batcher(images), rng, crop_pad=4, flip=True)
        loss, cache = cross_entropy_forward(model.forward(x), labels, label_smoothing=0.1)
        model.zero_grad()
        model.backward(cross_entropy_backward(cache))
        clip_grad_norm(model.grads, 5.0)
        opt.step(model.grads, 1e-3)

    def infer():
        model.eval()
        model.forward(batcher(images))
        model.train()

    return step, infer


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per backend (>= 5)")
    p.add_argument("--backends", default="numba,numpy")
    args = p.parse_args()
    if args.repeats < 5:
        p.error("--repeats must be >= 5: a median of fewer steps is noise on a shared machine")
    load_before = os.getloadavg()[0]

    from halo_ref.training.config import set_threads

    set_threads(args.threads)
    rng = np.random.default_rng(0)
    B = args.batch_size
    images = rng.integers(0, 256, (B, 32, 32, 3), dtype=np.uint8)  # N, H, W, C like CIFAR-10
    labels = rng.integers(0, 10, B)
    backends = args.backends.split(",")
    runners = {b: make_runner(b, args, images, labels, rng) for b in backends}
    for step, infer in runners.values():  # warm-up: JIT compilation, first allocations
        step()
        infer()
    times = {b: ([], []) for b in backends}
    for _ in range(args.repeats):  # interleaved, so that a load change hits every backend
        for b, (step, infer) in runners.items():
            times[b][0].append(timed(step))
            times[b][1].append(timed(infer))
    rows = []
    for b in backends:
        s, e = float(np.median(times[b][0])), float(np.median(times[b][1]))
        minutes = (50000 / (B / s) + 10000 / (B / e)) / 60
        rows.append(dict(backend=b, step_s=s, train_img_s=B / s, eval_img_s=B / e,
                         minutes_per_cifar_epoch=minutes))  # fmt: skip
    base = rows[-1]
    print(f"model {args.model}, batch {B}, {args.threads} threads, median of {args.repeats} steps, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'backend':<8} {'s/step':>8} {'train img/s':>12} {'eval img/s':>11} "
          f"{'min/epoch':>10} {'speed-up':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['backend']:<8} {r['step_s']:8.3f} {r['train_img_s']:12.1f} "
              f"{r['eval_img_s']:11.1f} {r['minutes_per_cifar_epoch']:10.1f} "
              f"{r['train_img_s'] / base['train_img_s']:8.2f}x")  # fmt: skip
    print("min/epoch: 50,000 training images plus 10,000 test images evaluated")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "train_throughput.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(args=vars(args), baseline=base["backend"], rows=rows,
                       machine=platform.processor() or platform.machine(),
                       cpus=os.cpu_count(), load_before=load_before,
                       load_after=os.getloadavg()[0]), f, indent=2)  # fmt: skip
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
