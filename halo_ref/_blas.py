"""The thread count of the OpenBLAS libraries in this process (NumPy's, and SciPy's, which is
the one Numba's `np.dot` calls): read it, and set it.

The Numba kernels call BLAS from inside Numba's threads, so they run with BLAS single-threaded
(`one_blas_thread`; `halo-ref train` sets it so for the whole run): BLAS threads of its own
would nest inside Numba's and oversubscribe the cores, and the kernels' products, so their
bits, stay the same whatever the caller's BLAS thread count. Linux only (the libraries are
found through /proc/self/maps); elsewhere the thread count cannot be read or set.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

_PREFIXES = ("openblas_", "scipy_openblas_")
_SUFFIXES = ("", "64_")


@functools.cache
def _libraries() -> tuple:
    """(getter, setter) pairs of every OpenBLAS loaded once NumPy and SciPy's BLAS are."""
    import numpy  # noqa: F401  (loads NumPy's OpenBLAS)

    try:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS that Numba's np.dot calls)
    except ImportError:
        pass
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return ()
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    found.append((get, put))
    return tuple(found)


def blas_threads() -> int:
    """The largest thread count of the loaded OpenBLAS libraries (2 if none can be read)."""
    libs = _libraries()
    return max((get() for get, _ in libs), default=2)


def set_blas_threads(n: int) -> bool:
    """Give every loaded OpenBLAS n threads; returns whether one was found."""
    for _, put in _libraries():
        put(ctypes.c_int(n))
    return bool(_libraries())


@contextlib.contextmanager
def one_blas_thread():
    """Run a block with every loaded OpenBLAS single-threaded, then restore its thread count.

    For kernels that call BLAS from inside Numba's threads: an OpenBLAS with threads of its own
    would start them there too (more threads than cores; OpenBLAS also warns that it "may
    hang"). Products of any size are then safe, with no need to keep them small."""
    before = blas_threads()
    if before == 1:
        yield
        return
    set_blas_threads(1)
    try:
        yield
    finally:
        set_blas_threads(before)
