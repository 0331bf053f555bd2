"""Benchmark: a training step of a HaloNet in halo_ref against its PyTorch twin, and the forward
pass of the paper's H0-H7 at their image sizes.

    python benchmarks/bench_model.py                 # tiny, batch 64, 2 threads, vs PyTorch
    python benchmarks/bench_model.py --family        # H0-H7 forward, batch 1, time + peak memory
    python benchmarks/bench_model.py --busy 1        # and again beside 1 busy process

Step mode: one training step (forward, softmax cross-entropy, backward, SGD update) at batch 64
on 32x32x3, timed for halo_ref and for its PyTorch twin (torch.nn + timm's HaloAttn, same
weights) in one process with the same thread count, the two taking turns (a few steps each, the
first of each turn untimed, see timed_interleaved); medians over --repeats runs after --warmup
runs, images per second and the ratio halo_ref / PyTorch (of the medians, and the median of the
ratios of steps paired turn by turn). With --busy N the same steps are then timed again while
N processes that only spin (`while True: pass`, as a busy browser or another job would) run
beside them, and the loaded/quiet throughput ratio is printed for each: on a 2-core machine one
busy process should cost a step at most half its speed (ratio 0.5). Then one more instrumented
set of steps (quiet) gives halo_ref's time per layer type and per layer, slowest first.

OpenMP's idle threads wait passively (OMP_WAIT_POLICY=PASSIVE, set as `halo-ref` sets it,
unless the environment sets it): the figures are those of the command line.

Family mode: each model runs in a fresh subprocess (so its peak memory is its own) in eval
mode, batch 1, at the paper's image size: build time, median forward time, the peak of NumPy's
allocations (tracemalloc) and the process's peak resident memory.

Results are printed as tables and written as JSON into benchmarks/results/ (git-ignored).
The machine may be shared: compare ratios measured in the same run, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="model name for the step benchmark")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="Numba and torch threads")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="OpenBLAS (NumPy) threads; default 1, as `halo-ref train` runs: halo_ref "
        "parallelises in Numba's threads, and BLAS threads nested in them oversubscribe the cores",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs, median reported (7; family: 5)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (JIT, caches)")
    p.add_argument("--backend", default=None, help="halo attention backend (default: layer's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    p.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="step mode: time the steps again beside N busy processes, print loaded/quiet ratios",
    )
    p.add_argument("--family", action="store_true", help="H0-H7 forward at paper image size")
    p.add_argument("--models", default="h0,h1,h2,h3,h4,h5,h6,h7", help="family mode: which")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # family worker
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    return p.parse_args(argv)


def pin_threads(n, blas=None):
    """Pin every thread pool before NumPy, Numba or torch start theirs.

    torch's own pool is set with torch.set_num_threads(n) (OMP_NUM_THREADS is only its default).
    """
    blas = n if blas is None else blas
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ["OPENBLAS_NUM_THREADS"] = str(blas)
    # as the `halo-ref` command line does (halo_ref/cli/__init__.py): idle threads sleep
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def busy_processes(n):
    """n child processes that spin on a core each, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them start spinning before anything is timed
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def timed_interleaved(fns, repeats, warmup, per_turn=3):
    """Time several functions in turns so that a slow spell of a shared machine hits all of
    them alike; returns one list of times per function (about `repeats` each).

    Each turn first runs its function once untimed, then times `per_turn` runs: halo_ref's
    threads (Numba's OpenMP pool) and PyTorch's (its own bundled OpenMP) spin-wait for a while
    after a parallel region, and a step timed right after the other library's step would pay
    for the other pool's spinning (measured: halo_ref 0.152 s alone, 0.156-0.19 s when timed
    straight after a twin step).
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(max(1, round(repeats / per_turn))):
        for fn, ts in zip(fns, times, strict=True):
            fn()  # settle: the other library's threads go quiet
            for _ in range(per_turn):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return times


# -- step mode -------------------------------------------------------------------------------
def halo_ref_step(model, x, y, lr=0.01):
    """One SGD step in halo_ref; returns the loss."""
    from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward

    loss, cache = cross_entropy_forward(model.forward(x), y)
    model.backward(cross_entropy_backward(cache))
    grads = model.grads
    for name, p in model.params.items():
        p -= lr * grads[name]
    return loss


def instrument(model):
    """Wrap every leaf module's forward/backward with timers; returns (by_type, by_name)."""
    from halo_ref.nn.layers import Conv2d

    by_type, by_name = {}, {}

    def leaves(m, prefix):
        kids = m.children()
        if not kids or type(m).__name__ == "HaloAttention":
            yield prefix, m
        for n, c in kids.items():
            yield from leaves(c, f"{prefix}.{n}" if prefix else n)

    for name, m in leaves(model, ""):
        kind = type(m).__name__
        if isinstance(m, Conv2d):
            kind = f"Conv2d {m.kernel_size}x{m.kernel_size}"
        for method in ("forward", "backward"):
            orig = getattr(m, method)

            def wrapper(arg, _orig=orig, _kind=kind, _name=name, _method=method):
                t0 = time.perf_counter()
                out = _orig(arg)
                dt = time.perf_counter() - t0
                by_type.setdefault(_kind, [0.0, 0.0])[_method == "backward"] += dt
                by_name.setdefault(_name, [0.0, 0.0])[_method == "backward"] += dt
                return out

            setattr(m, method, wrapper)
    return by_type, by_name


def run_step(args):
    import numpy as np

    from halo_ref.backend import resolve
    from halo_ref.models import count_params, halonet

    rng = np.random.default_rng(0)
    model = halonet(args.model, rng=0, backend=args.backend)
    H = model.config.image_size
    x = rng.standard_normal((args.batch, 3, H, H)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    result = {
        "model": args.model,
        "params": count_params(model),
        "batch": args.batch,
        "threads": args.threads,
        "blas_threads": args.blas_threads or args.threads,
        "repeats": args.repeats,
        "backend": resolve(model.backend).name,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }

    twin = None
    if not args.no_torch:
        try:
            import torch

            from halo_ref.verification.torch_side import torch_twin

            torch.set_num_threads(args.threads)
            twin = torch_twin(model)
        except ImportError as exc:
            print(f"PyTorch twin skipped: {exc}")

    steps = {"halo_ref": lambda: halo_ref_step(model, x, y)}
    if twin is not None:
        opt = torch.optim.SGD(twin.parameters(), lr=0.01)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(twin(xt), yt)
            loss.backward()
            opt.step()

        steps["pytorch twin"] = torch_step
    print(
        f"\n{args.model}: {result['params']:,} params, batch {args.batch}, "
        f"{args.threads} threads (BLAS {result['blas_threads']}), attention backend "
        f"{result['backend']!r}, OMP_WAIT_POLICY={result['omp_wait_policy']}, "
        f"median of {args.repeats} after {args.warmup} warm-up"
        + (", the two taking turns" if twin is not None else "")
    )
    times = timed_interleaved(list(steps.values()), args.repeats, args.warmup)
    result.update(step_table(steps, times, args.batch, "quiet" if args.busy else ""))
    if args.busy:
        with busy_processes(args.busy):
            times = timed_interleaved(list(steps.values()), args.repeats, args.warmup)
        loaded = step_table(steps, times, args.batch, f"beside {args.busy} busy")
        result["busy"] = {"processes": args.busy, **loaded}
        print(f"loaded / quiet throughput beside {args.busy} busy process(es):")
        for label in steps:
            ratio = result[label]["median_s"] / loaded[label]["median_s"]
            result["busy"][label]["loaded_over_quiet"] = ratio
            print(f"  {label:14s} {ratio:.2f}")

    # per-layer breakdown: a separate, instrumented run (the wrappers cost a little)
    by_type, by_name = instrument(model)
    n = max(args.repeats // 2, 3)
    t0 = time.perf_counter()
    for _ in range(n):
        halo_ref_step(model, x, y)
    total = (time.perf_counter() - t0) / n
    print(f"\nhalo_ref step by layer type (mean of {n} instrumented steps, {total:.3f} s/step)")
    print(f"{'layer type':22s} {'forward':>8s} {'backward':>9s} {'total':>8s} {'share':>6s}")
    for kind, (f, b) in sorted(by_type.items(), key=lambda kv: -sum(kv[1])):
        print(f"{kind:22s} {f / n:8.3f} {b / n:9.3f} {(f + b) / n:8.3f} {(f + b) / n / total:6.1%}")
    print("\nslowest 8 layers")
    for name, (f, b) in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:8]:
        print(f"{name:30s} {(f + b) / n:8.3f} s  ({(f + b) / n / total:5.1%})")
    result["by_type_s"] = {k: [f / n, b / n] for k, (f, b) in by_type.items()}
    result["by_layer_s"] = {k: [f / n, b / n] for k, (f, b) in by_name.items()}
    return result


def step_table(steps, times, batch, title):
    """Print one table of step times (and halo_ref / PyTorch ratios); returns its figures."""
    rows = list(zip(steps, times, strict=True))
    result = {}
    print(f"{title:14s} {'step (s)':>9s} {'images/s':>9s} {'min (s)':>8s} {'max (s)':>8s}")
    for label, ts in rows:
        med = median(ts)
        result[label] = {"median_s": med, "images_per_s": batch / med, "times_s": ts}
        print(f"{label:14s} {med:9.3f} {batch / med:9.1f} {min(ts):8.3f} {max(ts):8.3f}")
    if len(rows) == 2:
        ratio = result["pytorch twin"]["median_s"] / result["halo_ref"]["median_s"]
        # each twin step over the halo_ref step of the same turn: robust to slow spells
        paired = median([t / h for h, t in zip(rows[0][1], rows[1][1], strict=True)])
        result["speedup_vs_pytorch"] = ratio
        result["speedup_vs_pytorch_paired_median"] = paired
        print(
            f"halo_ref / PyTorch throughput ratio: {ratio:.2f}x (median of paired ratios {paired:.2f}x)"
        )
    return result


# -- family mode -----------------------------------------------------------------------------
def run_one(args):
    """Worker: build one H model, time its forward at the paper image size; print JSON."""
    import resource
    import tracemalloc

    import numpy as np

    from halo_ref.models import CONFIGS, count_params, halonet

    cfg = CONFIGS[args.one]
    t0 = time.perf_counter()
    model = halonet(args.one, num_classes=1000, rng=0, backend=args.backend).eval()
    build = time.perf_counter() - t0
    S = cfg.image_size
    x = np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)
    model.forward(x)  # warm-up: JIT compile and first-touch allocations
    tracemalloc.start()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.forward(x)
        times.append(time.perf_counter() - t0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "model": args.one,
                "image": S,
                "params": count_params(model),
                "paper_params_M": cfg.paper_params,
                "build_s": build,
                "forward_s": median(times),
                "times_s": times,
                "numpy_peak_MiB": peak / 2**20,
                "max_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_family(args):
    rows = []
    print(
        f"H0-H7 forward, batch 1, eval mode, {args.threads} threads "
        f"(BLAS {args.blas_threads or args.threads}), median of {args.repeats} after 1 warm-up"
    )
    print(
        f"{'model':6s} {'image':>6s} {'params':>12s} {'paper':>7s} {'forward (s)':>12s} "
        f"{'NumPy peak (MiB)':>17s} {'max RSS (MiB)':>14s}"
    )
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)]
        cmd += ["--threads", str(args.threads)]
        if args.blas_threads:
            cmd += ["--blas-threads", str(args.blas_threads)]
        if args.backend:
            cmd += ["--backend", args.backend]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{name:6s} {r['image']:6d} {r['params']:12,d} {r['paper_params_M']:6.1f}M "
            f"{r['forward_s']:12.2f} {r['numpy_peak_MiB']:17.0f} {r['max_rss_MiB']:14.0f}",
            flush=True,
        )
    return {
        "threads": args.threads,
        "blas_threads": args.blas_threads or args.threads,
        "repeats": args.repeats,
        "models": rows,
    }


def main(argv=None):
    args = parse_args(argv)
    if args.busy < 0:
        raise ValueError(f"--busy must be >= 0 processes, got {args.busy}")
    pin_threads(args.threads, args.blas_threads)
    if args.one:
        args.repeats = args.repeats or 5
        return run_one(args)
    if args.family:
        args.repeats = args.repeats or 5
        result = run_family(args)
        default = "bench_family.json"
    else:
        args.repeats = args.repeats or 7
        result = run_step(args)
        default = f"bench_model_{args.model}.json"
    out = Path(args.out) if args.out else RESULTS / default
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)  # never a half-written file
    print(f"\nwrote {out}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:  # HaloRefError: bad arguments, one line
        sys.exit(f"bench_model.py: error: {exc}")
