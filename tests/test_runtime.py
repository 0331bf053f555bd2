"""Where the kernel cache goes and how OpenMP threads wait (halo_ref/_runtime.py; issue 13). Each case runs in a fresh interpreter: both settings are
made once, at import, before Numba defines a kernel or loads OpenMP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import halo_ref

PACKAGE = Path(halo_ref.__file__).resolve().parent

# every cached kernel's cache folder, and where halo_ref says the cache is
_CACHE_PATHS = """
import json, sys
if "numba-first" in sys.argv:
    import numba  # noqa: F401  (Numba read its settings before halo_ref chose the folder)
import halo_ref.attention.kernels as a, halo_ref.nn.kernels as n, halo_ref._numba_math as m
from halo_ref._runtime import cache_dir
from numba.core.registry import CPUDispatcher
paths = sorted({f._cache._cache_path for mod in (a, n, m) for f in vars(mod).values()
                if isinstance(f, CPUDispatcher) and hasattr(f._cache, "_cache_path")})
print(json.dumps({"dir": cache_dir(), "paths": paths}))
"""


def _python(code, env, *args):
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _cache_paths(env, *args):
    done = _python(_CACHE_PATHS, env, *args)
    return json.loads(done.stdout), done.stderr


def _under(path, folder):
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_the_kernel_cache_goes_to_the_users_cache_folder_never_into_the_package(tmp_path):
    for args in ((), ("numba-first",)):
        got, _ = _cache_paths({"NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": str(tmp_path)}, *args)
        assert got["dir"] == str(tmp_path / "halo_ref" / "numba")
        assert len(got["paths"]) >= 2  # the attention and layer kernels' folders at least
        assert all(_under(p, got["dir"]) for p in got["paths"]), got
        assert not any(_under(p, PACKAGE) for p in got["paths"]), got


def test_numba_cache_dir_when_set_is_where_the_cache_goes(tmp_path):
    got, _ = _cache_paths({"NUMBA_CACHE_DIR": str(tmp_path / "mine")})
    assert got["dir"] == str(tmp_path / "mine")
    assert all(_under(p, tmp_path / "mine") for p in got["paths"]), got


def test_an_unwritable_cache_folder_falls_back_to_the_temporary_folder_with_a_notice(tmp_path):
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "cache"  # cannot be created: its parent is a file
    got, err = _cache_paths({"NUMBA_CACHE_DIR": str(bad), "TMPDIR": str(tmp_path)})
    assert "cannot write the kernel cache" in err and "NUMBA_CACHE_DIR" in err, err
    assert _under(got["dir"], tmp_path) and not _under(got["dir"], bad), got
    assert all(_under(p, got["dir"]) for p in got["paths"]), got


# the wait policy importing halo_ref (the library, or the command line) leaves in the
# environment, and whether an OpenMP runtime was loaded by then (it reads OMP_WAIT_POLICY once,
# when loaded)
_OPENMP = """
import json, os, sys
import halo_ref  # noqa: F401
if "cli" in sys.argv:
    import halo_ref.cli.main  # noqa: F401
maps = open("/proc/self/maps").read()
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"),
                  "loaded": any(lib in maps for lib in ("libgomp", "libiomp", "libomp"))}))
"""


@pytest.mark.parametrize("entry", ["library", "cli"])
def test_openmp_threads_wait_passively_unless_the_user_chose(entry):
    got = json.loads(_python(_OPENMP, {"OMP_WAIT_POLICY": None}, entry).stdout)
    assert got == {"policy": "PASSIVE", "loaded": False}, got
    got = json.loads(_python(_OPENMP, {"OMP_WAIT_POLICY": "ACTIVE"}, entry).stdout)
    assert got["policy"] == "ACTIVE", got
