"""The README's two commands, run in that order in one fresh virtual environment (issue 13).

The first (`pip install . && halo-ref train`) compiles the Numba kernels and caches them; the
second installs the clone in editable mode over it. The kernel cache must not live inside the
installed package: files left in `site-packages/halo_ref/` by the first install made that
folder a namespace package that shadowed the editable install (`halo-ref --help` failed with
"cannot import name '__version__' from 'halo_ref' (unknown location)").

Slow (a fresh venv, PyTorch's install and a kernel compile: minutes); `.ci/run` runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _readme_commands():
    """The README's first two commands (the first ```bash blocks of "Two commands")."""
    blocks = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    return blocks[0].strip(), blocks[1].strip()


def _install_part(command: str) -> str:
    """`pip install ... && pip install ... && python -m pytest` -> its pip installs only."""
    return " && ".join(p.strip() for p in command.split("&&") if p.strip().startswith("pip "))


@pytest.mark.slow
def test_the_readme_commands_in_one_venv_leave_a_working_editable_install(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git clone of halo_ref")
    first, second = _readme_commands()
    assert first.startswith("pip install . && halo-ref train"), first
    assert 'pip install -e ".[dev,torch,outside,io]"' in second, second
    clone, venv, elsewhere = tmp_path / "clone", tmp_path / "venv", tmp_path / "elsewhere"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        VIRTUAL_ENV=str(venv),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),  # the user's cache folder, here a fresh one
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )

    def sh(command, cwd=clone, timeout=1800):
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    # the first command; one epoch is enough to compile and cache every kernel training uses
    log = sh(first.replace("halo-ref train", "halo-ref train --epochs 1 --no-progress"))
    cache = tmp_path / "xdg" / "halo_ref" / "numba"
    assert f"cached in {cache}" in log, log[-2000:]
    assert list(cache.rglob("*.nbi")), "no kernel was cached in the user's cache folder"
    site = Path(sh("python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'",
                   cwd=elsewhere).strip())  # fmt: skip
    assert not list((site / "halo_ref").rglob("*.nb[ic]")), "kernels cached inside site-packages"

    sh(_install_part(second))
    assert not (site / "halo_ref").exists(), "the first install left site-packages/halo_ref"
    assert "usage: halo-ref" in sh("halo-ref --help", cwd=elsewhere)
    where = sh("python -c 'import halo_ref; print(halo_ref.__file__)'", cwd=elsewhere).strip()
    assert Path(where) == clone / "halo_ref" / "__init__.py", where
    # the test that failed with the shadowing folder, from the editable tree
    sh("python -m pytest -q -p no:cacheprovider tests/cli/test_train.py -k kill_9")
