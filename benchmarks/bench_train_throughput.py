"""Training throughput of a HaloNet on CIFAR-shaped input (32x32x3), and minutes per epoch.

One training step is what `halo-ref train` does per batch: normalise + augment, forward,
cross-entropy, backward, gradient clipping, AdamW update. The baseline, measured in the same
run, is the same step with the attention on the pure NumPy backend. Prints a table and writes
benchmarks/results/train_throughput.json.

    python benchmarks/bench_train_throughput.py [--model tiny] [--batch-size 128] [--threads 2]
    python benchmarks/bench_train_throughput.py --busy 1    # also beside 1 busy process

With --busy N the steps are timed again while N processes that only spin run beside them, and
each backend's loaded/quiet training throughput is printed (see bench_model.py). OpenMP's idle
threads wait passively (OMP_WAIT_POLICY=PASSIVE, as `halo-ref` sets it) unless the environment
says otherwise.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `halo-ref` command line does

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from bench_model import busy_processes  # noqa: E402  (this folder: run as a script)


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


def measure(runners, repeats) -> dict:
    """backend -> (step times, inference times), the backends taking turns step by step."""
    times = {b: ([], []) for b in runners}
    for _ in range(repeats):  # interleaved, so that a load change hits every backend
        for b, (step, infer) in runners.items():
            times[b][0].append(timed(step))
            times[b][1].append(timed(infer))
    return times


def table(times, batch) -> list:
    """Print the throughput table of `measure`'s times; returns its rows (last: baseline)."""
    rows = []
    for b, (steps, infers) in times.items():
        s, e = float(np.median(steps)), float(np.median(infers))
        minutes = (50000 / (batch / s) + 10000 / (batch / e)) / 60
        rows.append(dict(backend=b, step_s=s, train_img_s=batch / s, eval_img_s=batch / e,
                         minutes_per_cifar_epoch=minutes))  # fmt: skip
    base = rows[-1]
    print(f"{'backend':<8} {'s/step':>8} {'train img/s':>12} {'eval img/s':>11} "
          f"{'min/epoch':>10} {'speed-up':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['backend']:<8} {r['step_s']:8.3f} {r['train_img_s']:12.1f} "
              f"{r['eval_img_s']:11.1f} {r['minutes_per_cifar_epoch']:10.1f} "
              f"{r['train_img_s'] / base['train_img_s']:8.2f}x")  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per backend (>= 5)")
    p.add_argument("--backends", default="numba,numpy")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="time again beside N busy processes, print loaded/quiet")  # fmt: skip
    args = p.parse_args()
    if args.repeats < 5:
        p.error("--repeats must be >= 5: a median of fewer steps is noise on a shared machine")
    if args.busy < 0:
        p.error(f"--busy must be >= 0 processes, got {args.busy}")
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
    times = measure(runners, args.repeats)
    print(f"model {args.model}, batch {B}, {args.threads} threads, median of {args.repeats} steps, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows = table(times, B)
    base = rows[-1]
    print("min/epoch: 50,000 training images plus 10,000 test images evaluated")
    busy = None
    if args.busy:
        with busy_processes(args.busy):
            times = measure(runners, args.repeats)
        print(f"\nbeside {args.busy} busy process(es):")
        busy_rows = table(times, B)
        print("loaded / quiet training throughput: " + ", ".join(
            f"{q['backend']} {b['train_img_s'] / q['train_img_s']:.2f}"
            for q, b in zip(rows, busy_rows, strict=True)))  # fmt: skip
        busy = dict(processes=args.busy, rows=busy_rows)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "train_throughput.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(args=vars(args), baseline=base["backend"], rows=rows,
                       busy=busy, machine=platform.processor() or platform.machine(),
                       cpus=os.cpu_count(), load_before=load_before,
                       load_after=os.getloadavg()[0]), f, indent=2)  # fmt: skip
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
