"""What halo_ref sets up in the process before Numba compiles or loads any kernel.

Imported first by `halo_ref/__init__.py`, so it runs before any module that defines a kernel:
Numba picks a kernel's cache folder when the kernel is defined (`@njit(cache=True)`).

Kernel cache folder. By default Numba writes its cache next to the source, into
`site-packages/halo_ref/**/__pycache__/` for an installed package. Uninstalling the package
leaves those files behind, and the leftover `site-packages/halo_ref/` folder (no `__init__.py`)
is then a namespace package that shadows a later editable install: `import halo_ref` finds the
empty folder first. So halo_ref puts the cache in the user's cache folder instead:

1. `NUMBA_CACHE_DIR`, when the user set it (Numba's own setting; also used by the tests);
2. else `$XDG_CACHE_HOME/halo_ref/numba`, `~/.cache/halo_ref/numba` without XDG_CACHE_HOME;
3. if that folder cannot be created or written, `halo_ref-numba-<uid>` in the system's
   temporary directory, with a one-line notice on stderr (the kernels may then compile again
   after a reboot).

The choice goes into `NUMBA_CACHE_DIR` of this process (so child processes share the cache)
and, if Numba is already imported, into `numba.config.CACHE_DIR`, which Numba read at import.
It applies to every function defined with `cache=True` from then on, the user's own included
(each source folder has its own subfolder there, so nothing collides). `cache_dir()` says where
the cache went.

OpenMP wait policy. Numba's threading layer here is GNU OpenMP, whose idle threads spin between
parallel regions. A training step has many short regions, so beside any other busy process (a
browser, another job) the spinning threads and that process take turns on the cores and a step
runs several times slower (issue 13: 4.5x slower beside one busy process, about 2x with passive
waiting). So halo_ref sets `OMP_WAIT_POLICY=PASSIVE` unless the user set it. OpenMP reads the
variable once, when its runtime is loaded, which Numba does at the first parallel kernel call:
after this import, for every user of the library, not only the command line
(tests/test_runtime.py checks that nothing loads OpenMP earlier). A user who wants spinning
threads (a dedicated machine) sets `OMP_WAIT_POLICY=ACTIVE` before importing halo_ref.
"""

from __future__ import annotations

import os
import sys
import tempfile

_CHOSEN: list[str] = []  # the folder chosen at import (one entry)


def _writable_folder(path: str) -> str | None:
    """None if `path` is (or could be created as) a folder this process can write, else why."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "halo_ref", "numba")


def _fallback_cache_dir() -> str:
    user = getattr(os, "getuid", lambda: "user")()
    return os.path.join(tempfile.gettempdir(), f"halo_ref-numba-{user}")


def choose_cache_dir() -> str:
    """Set Numba's kernel cache folder for this process (see the module docstring); returns it."""
    path = os.environ.get("NUMBA_CACHE_DIR") or _default_cache_dir()
    why = _writable_folder(path)
    if why is not None:  # Numba would fall back to writing into the package: not there
        fallback = _fallback_cache_dir()
        print(
            f"halo_ref: note: cannot write the kernel cache to {path} ({why}); using "
            f"{fallback} instead (set NUMBA_CACHE_DIR to a writable folder to choose)",
            file=sys.stderr,
        )
        path = fallback
    os.environ["NUMBA_CACHE_DIR"] = path
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:  # Numba read the environment at its import: tell it too
        numba_config.CACHE_DIR = path
    _CHOSEN[:] = [path]
    return path


def cache_dir() -> str:
    """The folder Numba caches halo_ref's compiled kernels in."""
    return _CHOSEN[0] if _CHOSEN else choose_cache_dir()


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
choose_cache_dir()
