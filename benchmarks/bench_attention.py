"""Benchmark the halo attention backends against timm's `HaloAttn` (issue 3). Not a unit test.

Usage:
    python benchmarks/bench_attention.py            # full run (7-12 minutes on 2 cores)
    python benchmarks/bench_attention.py --quick    # small batches, fewer shapes (about 3 minutes)

What it measures, in one process so that every backend sees the same machine load:
- per layer shape and backend (numba, numpy, timm): forward ms, backward ms (medians over
  --repeats runs after one warm-up run, backends interleaved inside each repeat), effective
  GFLOP/s (the same FLOP count of the algorithm for every backend), peak traced memory of the
  forward (tracemalloc; it cannot see PyTorch's allocator, so timm shows n/a), and the speed-up
  over timm (timm's fwd+bwd time / the backend's fwd+bwd time);
- the NumPy float32 matmul rate at the same thread count: the ceiling the kernels are compared to;
- first-call compile time (a child process with an empty NUMBA_CACHE_DIR) and warm-cache
  start-up time (a second child process reusing that cache);
- a scaling run over H = W in {16, 32, 64, 128}: the halo kernels (linear in H*W) and the dense
  oracle (quadratic, while it fits in memory), saved as a PNG.

Threads are pinned equally for NumPy's BLAS, Numba and torch (--threads, default 2) before
NumPy is imported, and OMP_WAIT_POLICY=PASSIVE keeps one library's idle OpenMP threads from
spinning while another library runs. The machine may be shared: read the ratios, not the absolute times.
Output: a table on stdout and a JSON file (default benchmarks/results/bench_attention.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    """One HaloAttention configuration: input (B, C, H, H), dim_out = C."""

    name: str
    B: int
    C: int
    H: int
    block: int
    halo: int
    heads: int
    stride: int = 1

    def layer_kwargs(self):
        return dict(
            num_heads=self.heads, block_size=self.block, halo_size=self.halo, stride=self.stride
        )


# The issue's three shapes, then the attention layers of the "tiny" CIFAR HaloNet
# (halo_ref.models, CONFIGS["tiny"]) at a training batch of 64.
ISSUE_SHAPES = [
    Shape("issue-a B64 C64 32x32 b8 h2", 64, 64, 32, 8, 2, 4),
    Shape("issue-b B64 C64 32x32 b8 h3", 64, 64, 32, 8, 3, 4),
    Shape("issue-c B8 C256 64x64 b8 h3", 8, 256, 64, 8, 3, 8),
]
TINY_SHAPES = [
    Shape("tiny-1 B64 C32 16x16 b8 h2", 64, 32, 16, 8, 2, 2),
    Shape("tiny-2s B64 C64 16x16 b4 h2 s2", 64, 64, 16, 4, 2, 4, 2),
    Shape("tiny-2 B64 C64 8x8 b4 h2", 64, 64, 8, 4, 2, 4),
    Shape("tiny-3 B64 C128 4x4 b4 h1", 64, 128, 4, 4, 1, 8),
]
QUICK_SHAPES = [
    Shape("issue-a/8 B8 C64 32x32 b8 h2", 8, 64, 32, 8, 2, 4),
    Shape("issue-c/4 B2 C256 64x64 b8 h3", 2, 256, 64, 8, 3, 8),
    Shape("tiny-2 B16 C64 8x8 b4 h2", 16, 64, 8, 4, 2, 4),
]


def pin_threads(n: int) -> None:
    """Set every thread-count variable before NumPy, Numba or torch is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    # Idle OpenMP threads sleep instead of spinning: Numba's and torch's thread pools live in one
    # process here, and a pool spinning after its parallel region steals the cores the next
    # backend needs (measured: timm's tiny-2 forward went from 8 ms to 500 ms behind Numba's).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def flop_count(s: Shape):
    """(forward, backward) floating-point operations of the algorithm, the same for all backends.

    Counted: the two 1x1 projections (2 per multiply-add), q.k and attn @ v over each block's
    window, and q against every relative-table row; the backward does two products for each of
    these (gradients of both factors). Softmax and element-wise work are not counted.
    """
    d_qk = d_v = s.C // s.heads
    win = s.block + 2 * s.halo
    qstride = s.stride if s.block % s.stride == 0 else 1
    hq = s.H // qstride
    pq, pw, n_blocks = (s.block // qstride) ** 2, win * win, (s.H // s.block) ** 2
    proj = 2 * s.B * s.C * (hq * hq * s.heads * d_qk + s.H * s.H * s.heads * (d_qk + d_v))
    attn = 2 * s.B * s.heads * n_blocks * pq * (pw * (d_qk + d_v) + 2 * (2 * win - 1) * d_qk)
    return proj + attn, 2 * (proj + attn)


def median_ms(values):
    import numpy as np

    return float(np.median(values) * 1e3)


def build_layers(s: Shape, backends, timm_ok):
    """The layers under test, with identical weights: {backend name: (forward, backward)}."""
    import numpy as np

    from halo_ref import HaloAttention

    base = HaloAttention(s.C, s.C, dtype=np.float32, rng=0, backend="numba", **s.layer_kwargs())
    runners = {}
    for name in backends:
        if name == "timm":
            if not timm_ok:
                continue
            import torch

            from halo_ref.verification.torch_side import timm_halo_attn_from

            module = timm_halo_attn_from(base)

            def fwd(x, module=module):
                xt = torch.from_numpy(x).requires_grad_()
                return module(xt)

            def bwd(out):
                out.backward(torch.ones_like(out))

            runners[name] = (fwd, bwd)
        else:
            layer = HaloAttention(
                s.C, s.C, dtype=np.float32, rng=0, backend=name, **s.layer_kwargs()
            )
            layer.load_state_dict(base.state_dict())
            runners[name] = (layer.forward, lambda out, layer=layer: layer.backward(out))
    return runners


def time_layers(s: Shape, runners, repeats):
    """Median forward and backward ms per backend; backends interleaved in every repeat."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((s.B, s.C, s.H, s.H)).astype(np.float32)
    times = {name: ([], []) for name in runners}
    for rep in range(repeats + 1):  # repeat 0 is the warm-up (JIT load, allocator, caches)
        for name, (fwd, bwd) in runners.items():
            t0 = time.perf_counter()
            out = fwd(x)
            t1 = time.perf_counter()
            bwd(out)
            t2 = time.perf_counter()
            if rep:
                times[name][0].append(t1 - t0)
                times[name][1].append(t2 - t1)
            del out
    return {name: (median_ms(f), median_ms(b)) for name, (f, b) in times.items()}


def peak_forward_mb(fwd, x):
    """Peak memory traced by tracemalloc during one forward, above what was allocated before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out = fwd(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del out
    return (peak - before) / 2**20


def matmul_ceiling(threads):
    """GFLOP/s of NumPy's float32 matmul (1024^3) at the pinned thread count: the ceiling."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    a @ a
    runs = []
    for _ in range(7):
        t = time.perf_counter()
        a @ a
        runs.append(time.perf_counter() - t)
    return 2 * 1024**3 / np.median(runs) / 1e9


def compile_times(threads):
    """First-call compile time and warm-cache start-up time, each in a fresh child process."""
    code = (
        "import time; t0 = time.perf_counter(); "
        "from halo_ref.backend import warm_up; s = warm_up(); "
        "print(s, time.perf_counter() - t0)"
    )
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        result = {}
        for label in ("cold", "warm"):
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            wall = time.perf_counter() - t
            kernels, after_start = (float(v) for v in done.stdout.split())
            result[label] = {"kernels_s": kernels, "import_and_kernels_s": after_start}
            result[label]["process_s"] = wall
    return result


def run_shapes(shapes, backends, repeats, timm_ok):
    """Time and measure every shape; returns one row per (shape, backend)."""
    import numpy as np

    rows = []
    for s in shapes:
        runners = build_layers(s, backends, timm_ok)
        timed = time_layers(s, runners, repeats)
        x = np.random.default_rng(0).standard_normal((s.B, s.C, s.H, s.H)).astype(np.float32)
        f_fwd, f_bwd = flop_count(s)
        timm_total = sum(timed["timm"]) if "timm" in timed else None
        for name, (fwd_ms, bwd_ms) in timed.items():
            mem = None if name == "timm" else peak_forward_mb(runners[name][0], x)
            total = fwd_ms + bwd_ms
            rows.append(
                dict(
                    shape=s.name,
                    config=asdict(s),
                    backend=name,
                    forward_ms=fwd_ms,
                    backward_ms=bwd_ms,
                    forward_gflops=f_fwd / fwd_ms / 1e6,
                    backward_gflops=f_bwd / bwd_ms / 1e6,
                    total_gflops=(f_fwd + f_bwd) / total / 1e6,
                    peak_forward_mb=mem,
                    speedup_vs_timm=(timm_total / total) if timm_total else None,
                )
            )
            print_row(rows[-1])
    return rows


def print_header():
    print(
        f"{'shape':<32} {'backend':<7} {'fwd ms':>8} {'bwd ms':>8} {'GFLOP/s':>8} "
        f"{'peak MB':>8} {'x timm':>7}"
    )


def print_row(r):
    mem = "n/a" if r["peak_forward_mb"] is None else f"{r['peak_forward_mb']:.0f}"
    sp = "n/a" if r["speedup_vs_timm"] is None else f"{r['speedup_vs_timm']:.2f}"
    print(
        f"{r['shape']:<32} {r['backend']:<7} {r['forward_ms']:>8.1f} {r['backward_ms']:>8.1f} "
        f"{r['total_gflops']:>8.1f} {mem:>8} {sp:>7}",
        flush=True,
    )


def dense_fits(B, heads, H, halo, budget=1.5e9):
    """Whether the dense oracle's (Nq, Nk) arrays stay within `budget` bytes (float32 + indices)."""
    nq, nk = H * H, (H + 2 * halo) ** 2
    return B * heads * nq * nk * 4 * 4 + nq * nk * 8 * 3 <= budget


def run_scaling(sizes, repeats, timm_ok):
    """Core forward+backward time and forward peak memory vs H*W: numba, numpy, dense oracle."""
    import numpy as np

    from halo_ref.attention.dense import dense_halo_attention_backward, dense_halo_attention_forward
    from halo_ref.backend import NUMBA, NUMPY

    B, heads, d, block, halo = 1, 4, 16, 8, 3
    cores = {
        "numba": (NUMBA.halo_attention_forward, NUMBA.halo_attention_backward),
        "numpy": (NUMPY.halo_attention_forward, NUMPY.halo_attention_backward),
        "dense": (dense_halo_attention_forward, dense_halo_attention_backward),
    }
    rows = []
    for H in sizes:
        rng = np.random.default_rng(H)
        win = block + 2 * halo
        q = rng.standard_normal((B, heads * d, H, H)).astype(np.float32)
        kv = rng.standard_normal((B, heads * 2 * d, H, H)).astype(np.float32)
        rel = (rng.standard_normal((2 * win - 1, d)) * 0.3).astype(np.float32)
        kwargs = dict(num_heads=heads, block_size=block, halo_size=halo, scale=d**-0.5)
        for name, (fwd, bwd) in cores.items():
            if name == "dense" and not dense_fits(B, heads, H, halo):
                continue

            def forward_only(x, fwd=fwd, kv=kv, rel=rel, kwargs=kwargs):
                return fwd(x, kv, rel, rel, **kwargs)

            mem = peak_forward_mb(forward_only, q)
            runs = []
            for rep in range(repeats + 1):
                t = time.perf_counter()
                out, cache = fwd(q, kv, rel, rel, **kwargs)
                bwd(out, cache)
                if rep:
                    runs.append(time.perf_counter() - t)
                del out, cache
            rows.append(dict(H=H, pixels=H * H, backend=name, ms=median_ms(runs), peak_mb=mem))
            print(
                f"  scaling H=W={H:<4} {name:<6} fwd+bwd {rows[-1]['ms']:>9.1f} ms   "
                f"forward peak {mem:>8.1f} MB",
                flush=True,
            )
    return rows


def plot_scaling(rows, path: Path):
    """Log-log plot of time and forward peak memory against H*W; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["backend"] for r in rows}):
        rs = [r for r in rows if r["backend"] == name]
        px = [r["pixels"] for r in rs]
        axes[0].loglog(px, [r["ms"] for r in rs], "o-", label=name)
        axes[1].loglog(px, [r["peak_mb"] for r in rs], "o-", label=name)
    sizes = sorted({r["pixels"] for r in rows})
    for ax, unit in zip(axes, ("forward + backward (ms)", "forward peak memory (MB)"), strict=True):
        # one labelled tick per measured map: log axes' default minor labels overlap here
        ax.set_xticks(sizes, [f"{round(p**0.5)}x{round(p**0.5)}" for p in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("feature map H x W (log scale of H*W)")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_title("halo: linear in H*W; dense oracle: quadratic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_json(data, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batches and sizes (~3 minutes)")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba and torch")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (>= 5)")
    p.add_argument("--no-numpy", action="store_true", help="skip the slow NumPy reference")
    p.add_argument("--json", type=Path, default=RESULTS / "bench_attention.json")
    p.add_argument("--png", type=Path, default=RESULTS / "bench_attention_scaling.png")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be >= 5 (medians of fewer runs are too noisy)")
    pin_threads(args.threads)

    import numba
    import numpy as np

    numba.set_num_threads(args.threads)
    try:
        import torch

        from halo_ref.verification.torch_side import load_timm_halo_attn

        load_timm_halo_attn()
        torch.set_num_threads(args.threads)
        timm_ok = True
    except ImportError as exc:
        print(f"timm HaloAttn not available ({exc}); no timm column", file=sys.stderr)
        timm_ok = False

    print(f"threads: {args.threads} (BLAS, Numba, torch); repeats: {args.repeats}; numpy "
          f"{np.__version__}, numba {numba.__version__}")  # fmt: skip
    compile_info = compile_times(args.threads)
    print(
        "first-call compile (cold cache): {:.1f} s; warm-cache start-up: {:.2f} s "
        "(import + load kernels; whole process {:.2f} s)".format(
            compile_info["cold"]["kernels_s"],
            compile_info["warm"]["import_and_kernels_s"],
            compile_info["warm"]["process_s"],
        )
    )
    from halo_ref.backend import warm_up

    warm_up()
    ceiling = matmul_ceiling(args.threads)
    print(f"NumPy float32 matmul ceiling (1024^3): {ceiling:.0f} GFLOP/s\n")

    shapes = QUICK_SHAPES if args.quick else ISSUE_SHAPES + TINY_SHAPES
    backends = ["timm", "numba"] + ([] if args.no_numpy else ["numpy"])
    print_header()
    rows = run_shapes(shapes, backends, args.repeats, timm_ok)
    best = max((r for r in rows if r["backend"] == "numba"), key=lambda r: r["total_gflops"])
    print(
        f"\nbest numba rate: {best['total_gflops']:.1f} GFLOP/s = "
        f"{100 * best['total_gflops'] / ceiling:.0f}% of the matmul ceiling ({best['shape']})"
    )

    print("\nscaling (float32, B=1, 64 channels, 4 heads, b=8, h=3; attention core only):")
    sizes = (16, 32, 64) if args.quick else (16, 32, 64, 128)
    scaling = run_scaling(sizes, args.repeats, timm_ok)
    plot_scaling(scaling, args.png)
    write_json(
        dict(
            threads=args.threads,
            repeats=args.repeats,
            quick=args.quick,
            versions=dict(numpy=np.__version__, numba=numba.__version__),
            compile=compile_info,
            matmul_ceiling_gflops=ceiling,
            layers=rows,
            scaling=scaling,
        ),
        args.json,
    )
    print(f"\nwrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
