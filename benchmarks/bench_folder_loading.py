"""Loading an image folder: the first load (list, read and decode every file with Pillow, then
write the cache) against a load from the cache, in the same run. Prints a table and writes
benchmarks/results/folder_loading.json.

    python benchmarks/bench_folder_loading.py --source /path/to/cifar10-jpeg.tar.gz
    python benchmarks/bench_folder_loading.py --images 60000   # writes random 32x32 JPEGs

Without --source it writes --images random 32x32 RGB JPEGs (10 classes, train/ and test/) into
a temporary folder first; random pixels compress worse than photographs, so decoding them is a
little slower than decoding CIFAR-10's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np


def write_jpegs(root: str, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        split = "test" if i % 6 == 5 else "train"
        folder = os.path.join(root, split, f"class{i % 10}")
        os.makedirs(folder, exist_ok=True)
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", help="an image folder or archive (default: write random JPEGs)")
    p.add_argument("--images", type=int, default=60000, help="random JPEGs to write")
    p.add_argument("--repeats", type=int, default=3, help="cache loads to time (median)")
    args = p.parse_args()
    from halo_ref.training.data.folder import load_folder

    work = tempfile.mkdtemp(prefix="bench_folder_")
    try:
        source = args.source
        if source is None:
            source = os.path.join(work, "images")
            t0 = time.perf_counter()
            write_jpegs(source, args.images)
            print(f"wrote {args.images} JPEGs in {time.perf_counter() - t0:.1f} s")
        cache = os.path.join(work, "cache")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        data = load_folder(source, cache_dir=cache)
        first = time.perf_counter() - t0
        decode = float(data.notes[0].split(" in ")[-1].rstrip(" s"))  # the decoding pass alone
        cached = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            load_folder(source, cache_dir=cache)
            cached.append(time.perf_counter() - t0)
        n = len(data.x_train) + len(data.x_test)
        rows = [
            dict(load="first (list, read, decode, cache)", seconds=first, us_per_image=1e6 * first / n),
            dict(load="  of which decoding", seconds=decode, us_per_image=1e6 * decode / n),
            dict(load="from the cache (median)", seconds=float(np.median(cached)),
                 us_per_image=1e6 * float(np.median(cached)) / n),
        ]  # fmt: skip
        print(f"{n} images of {data.image_shape}, load average {load_before:.1f} -> "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"{'load':<36} {'seconds':>8} {'us/image':>9}")
        for r in rows:
            print(f"{r['load']:<36} {r['seconds']:8.2f} {r['us_per_image']:9.1f}")
        print(f"the cache loads {first / rows[-1]['seconds']:.0f}x faster than the first load")
        out = os.path.join(os.path.dirname(__file__), "results")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "folder_loading.json")
        with open(path + ".tmp", "w") as f:
            json.dump(dict(source=args.source or f"{args.images} random JPEGs", images=n,
                           shape=list(data.image_shape), rows=rows, load_before=load_before,
                           load_after=os.getloadavg()[0], cpus=os.cpu_count(),
                           machine=platform.processor() or platform.machine()), f, indent=2)  # fmt: skip
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
