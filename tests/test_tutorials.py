"""Every numbered tutorial runs, in quick mode, and draws at least one figure.

Each tutorial runs in its own subprocess (a fresh interpreter, as a reader would run it), headless
(MPLBACKEND=Agg) with HALO_REF_TUTORIAL_QUICK=1. A small driver executes the file with `runpy`,
then saves every open matplotlib figure as a PNG and prints how many there were, so a tutorial
that silently stops drawing fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))

# Runs one tutorial file (argv[1]) and saves its figures into argv[2]. plt.show is replaced by a
# no-op: under Agg it would only warn, and the figures must stay open to be counted.
DRIVER = """
import runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.show = lambda *args, **kwargs: None
runpy.run_path(sys.argv[1], run_name="__main__")
nums = plt.get_fignums()
for n in nums:
    plt.figure(n).savefig(f"{sys.argv[2]}/fig{n:02d}.png", dpi=80)
print(f"FIGURES {len(nums)}")
"""


def run_tutorial(path, figdir, timeout=300):
    """Run one tutorial in quick mode; return the completed process."""
    env = dict(os.environ, MPLBACKEND="Agg", HALO_REF_TUTORIAL_QUICK="1")
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(path), str(figdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tutorials_exist():
    # eight tutorials are promised in the docs (01 to 08); a missing one must not pass silently
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, 9)], TUTORIALS


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_and_draws(path, tmp_path):
    proc = run_tutorial(path, tmp_path)
    assert proc.returncode == 0, (
        f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    last = proc.stdout.strip().splitlines()[-1]
    count = int(last.split()[1])
    assert count >= 1, f"{path.name} drew no figure"
    pngs = sorted(tmp_path.glob("fig*.png"))
    assert len(pngs) == count
    assert all(p.stat().st_size > 1000 for p in pngs), "a saved figure is empty"
