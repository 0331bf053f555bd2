"""Benchmark: the README's first command as a new user meets it, from a fresh clone in a fresh
virtual environment with empty caches, and the kernel compile it waits for.

    python benchmarks/bench_first_run.py            # about 2-3 minutes on 2 cores
    python benchmarks/bench_first_run.py --busy 1   # the same beside 1 busy process

What it does:

1. `git clone` this repository's HEAD (committed work only) into a temporary folder and make a
   virtual environment there with this Python; `XDG_CACHE_HOME` points at a new empty folder,
   so pip's cache and halo_ref's kernel cache start empty.
2. Times `pip install .` and then `halo-ref train` (the README's first command, in the clone,
   as a user types it), and reads the "kernels ready in" line the run prints.
3. Times `halo-ref train` again (the kernels now load from the cache).
4. Baseline in the same run: in the new environment, `backend.warm_up` of the float32 kernels
   on two more empty caches, once in one interpreter (processes=1) and once split over two
   (processes=2, what a first `halo-ref train` on two cores does), and prints the ratio.

pip's time depends on the package index: here it is close by; over a home connection it is
longer. The result is printed as a table and written to benchmarks/results/first_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_model import busy_processes  # this folder: run as a script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

WARM_UP = (
    "import sys, numpy as np; from halo_ref import backend; "
    "print(backend.warm_up(dtypes=(np.float32,), processes=int(sys.argv[1])))"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", type=int, default=0, help="busy processes spinning beside the run")
    p.add_argument("--json", type=Path, default=RESULTS / "first_run.json")
    return p.parse_args(argv)


def timed(command, **kwargs) -> tuple[float, str]:
    """Run `command` (a list); (seconds, its stdout and stderr). A failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"{' '.join(map(str, command))} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return seconds, proc.stdout + proc.stderr


def kernels_ready(log: str) -> float:
    """The seconds of the run's "kernels ready in X s" line."""
    found = re.search(r"kernels ready in ([0-9.]+) s", log)
    if found is None:
        sys.exit(f"no 'kernels ready' line in the run's output:\n{log[-2000:]}")
    return float(found.group(1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    with busy_processes(args.busy):
        with tempfile.TemporaryDirectory(prefix="halo_ref-first-run-") as tmp:
            tmp = Path(tmp)
            clone, venv, cache = tmp / "clone", tmp / "venv", tmp / "cache"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
            env.pop("NUMBA_CACHE_DIR", None)  # the user's default: the new cache folder
            env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "."]
            train = [str(venv / "bin" / "halo-ref"), "train"]  # the README's command
            pip_s, _ = timed(pip, cwd=clone, env=env)
            first_s, first_log = timed(train, cwd=clone, env=env)
            again_s, again_log = timed([*train, "--out", "runs/again"], cwd=clone, env=env)
            split = {}
            for processes in (1, 2):
                env_p = {**env, "NUMBA_CACHE_DIR": str(tmp / f"warm-{processes}")}
                _, out = timed([str(venv / "bin" / "python"), "-c", WARM_UP, str(processes)],
                               cwd=tmp, env=env_p)  # fmt: skip
                split[processes] = float(out.strip().splitlines()[-1])
    result = {
        "busy_processes": args.busy,
        "pip_install_s": pip_s,
        "first_train_s": first_s,
        "first_kernels_ready_s": kernels_ready(first_log),
        "whole_command_s": pip_s + first_s,
        "second_train_s": again_s,
        "second_kernels_ready_s": kernels_ready(again_log),
        "warm_up_one_interpreter_s": split[1],
        "warm_up_two_interpreters_s": split[2],
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
    }
    rows = [
        ("pip install .", pip_s),
        ("halo-ref train (first run)", first_s),
        ("  of which kernels ready", result["first_kernels_ready_s"]),
        ("pip install . && halo-ref train", result["whole_command_s"]),
        ("halo-ref train (second run)", again_s),
        ("  of which kernels ready", result["second_kernels_ready_s"]),
        ("warm_up float32, one interpreter (baseline)", split[1]),
        ("warm_up float32, two interpreters", split[2]),
    ]
    print(f"first run from a fresh clone, {args.busy} busy process(es) beside it")
    for name, seconds in rows:
        print(f"{name:<46} {seconds:8.1f} s")
    print(f"{'two interpreters / one (compile time)':<46} {split[2] / split[1]:8.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.json}")
    return result


if __name__ == "__main__":
    main()
