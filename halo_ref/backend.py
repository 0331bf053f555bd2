"""The one place that chooses how the maths runs: NumPy's formulas or the Numba kernels.

Every operation that has a Numba kernel has two implementations under one contract: the
readable NumPy pair of a maths page (`halo_ref.attention.core`, `halo_ref.nn.functional`) and
the kernel beside it (`halo_ref.attention.kernels`, `halo_ref.nn.kernels`). A `Backend` names
one of the two and runs it::

    from halo_ref import backend
    backend.NUMBA.conv2d_forward(x, w, None, 1, 1)     # a kernel, whatever the context
    with backend.use("numpy"):                         # every layer inside: NumPy's formulas
        logits = model.forward(x)

`current()` is the backend of the enclosing `use` block (NUMBA outside any); the layers read it
at every forward (`HaloAttention(backend=...)`, `halonet(backend=...)` fix one instead). A
backward runs on the backend of its forward. With "numba", an operation whose arrays are not
all float32 or all float64 falls back to the formula (the kernels are compiled for those two).

`warm_up` compiles every kernel (or loads it from Numba's disk cache) before anything is timed.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _numba_math
from ._checks import FLOAT_DTYPES, HaloRefError, check_choice
from ._runtime import cache_dir
from .attention import core
from .attention import kernels as attention_kernels
from .nn import functional as F
from .nn import kernels as K

NAMES = ("numpy", "numba")
FAMILIES = (None, "blocks", "strips")


@dataclass(frozen=True)
class Backend:
    """NumPy's formulas (name "numpy") or the Numba kernels ("numba").

    family: how the Numba attention cuts its work, "blocks" or "strips" (see
    `halo_ref.attention.kernels`); None chooses per call. Both give the same results up to
    rounding; forcing one is for tests and benchmarks.
    """

    name: str = "numba"
    family: str | None = None

    def __post_init__(self):
        check_choice(self.name, "backend", NAMES)
        check_choice(self.family, "family", FAMILIES)
        if self.family is not None and self.name != "numba":
            raise HaloRefError(
                f"family={self.family!r} is for the numba backend, not {self.name!r}"
            )

    def _kernel_takes(self, *arrays) -> bool:
        """Whether to run the kernel: numba chosen, and every array float32 or every one float64."""
        dtypes = {a.dtype for a in arrays}
        return self.name == "numba" and len(dtypes) == 1 and dtypes.pop() in FLOAT_DTYPES

    # -- halo attention: the functional core, and the layer before pooling ------------------------
    def halo_attention_forward(self, q_map, kv_map, height_rel, width_rel, **kwargs):
        """`halo_ref.attention.core.halo_attention_forward` (its contract)."""
        if self.name == "numba":
            return attention_kernels.halo_attention_forward_numba(
                q_map, kv_map, height_rel, width_rel, family=self.family, **kwargs
            )
        return core.halo_attention_forward(q_map, kv_map, height_rel, width_rel, **kwargs)

    def halo_attention_backward(self, dout_map, cache):
        if self.name == "numba":
            return attention_kernels.halo_attention_backward_numba(dout_map, cache)
        return core.halo_attention_backward(dout_map, cache)

    def halo_layer_forward(self, x, params, **kwargs):
        """`halo_ref.attention.core.halo_layer_forward`: projections and attention."""
        if self.name == "numba":
            return attention_kernels.halo_layer_forward_numba(
                x, params, family=self.family, **kwargs
            )
        return core.halo_layer_forward(x, params, **kwargs)

    def halo_layer_backward(self, dout, cache):
        if self.name == "numba":
            return attention_kernels.halo_layer_backward_numba(dout, cache)
        return core.halo_layer_backward(dout, cache)

    # -- the network's layers: `halo_ref.nn.functional`'s contracts -------------------------------
    def conv2d_forward(self, x, weight, bias=None, stride=1, padding=0):
        """A convolution; a 1x1 kernel without padding takes the 1x1 path (the map is its own
        column matrix: no im2col)."""
        pointwise = weight.shape[2] == 1 and padding == 0
        if self._kernel_takes(x, weight):
            if pointwise:
                return K.conv1x1_forward(x, weight, bias, stride)
            return K.conv2d_forward(x, weight, bias, stride, padding)
        if pointwise:
            return F.conv1x1_forward(x, weight, bias, stride)
        return F.conv2d_forward(x, weight, bias, stride, padding)

    def conv2d_backward(self, dout, cache):
        """The backward of whichever of the four forwards made `cache` (known by its type)."""
        if isinstance(cache, K.Conv1x1KernelCache):
            return K.conv1x1_backward(dout.astype(cache.w.dtype, copy=False), cache)
        if isinstance(cache, K.Conv2dKernelCache):
            return K.conv2d_backward(dout.astype(cache.weight.dtype, copy=False), cache)
        if isinstance(cache, F.Conv1x1Cache):
            return F.conv1x1_backward(dout, cache)
        return F.conv2d_backward(dout, cache)

    def batchnorm2d_forward(self, x, weight, bias, running_mean, running_var, *, training,
                            momentum=0.1, eps=1e-5):  # fmt: skip
        if training and self._kernel_takes(x, weight, bias):
            return K.batchnorm2d_train_forward(
                x, weight, bias, running_mean, running_var, momentum=momentum, eps=eps
            )
        return F.batchnorm2d_forward(
            x, weight, bias, running_mean, running_var, training=training, momentum=momentum,
            eps=eps,
        )  # fmt: skip

    def batchnorm2d_backward(self, dout, cache):
        if cache.training and self._kernel_takes(dout, cache.x):
            return K.batchnorm2d_train_backward(dout, cache)
        return F.batchnorm2d_backward(dout, cache)

    def silu_forward(self, x):
        if self._kernel_takes(x):
            return K.silu_forward(x)
        return F.silu_forward(x)

    def silu_backward(self, dout, cache):
        if self._kernel_takes(dout, cache) and dout.shape == cache.shape:
            return K.silu_backward(dout, cache)
        return F.silu_backward(dout, cache)

    def add(self, a, b):
        """a + b for two arrays of one shape: where a residual block's two branches meet
        (forward) and where two gradients of one input meet (backward). A new array; the
        kernel adds on Numba's threads (NumPy's add runs on one core while the other waits)."""
        if a.shape == b.shape and self._kernel_takes(a, b):
            return K.add(np.ascontiguousarray(a), np.ascontiguousarray(b))
        return a + b


NUMPY = Backend("numpy")
NUMBA = Backend("numba")

# The backend of the innermost `use` block; set and reset only by `use`.
_CURRENT: contextvars.ContextVar[Backend] = contextvars.ContextVar(
    "halo_ref_backend", default=NUMBA
)


def resolve(backend=None) -> Backend:
    """A `Backend` from None (the current one), "numpy", "numba" or a `Backend`."""
    if backend is None:
        return _CURRENT.get()
    if isinstance(backend, Backend):
        return backend
    check_choice(backend, "backend", NAMES)
    return NUMBA if backend == "numba" else NUMPY


def current() -> Backend:
    """The backend of the enclosing `use` block, NUMBA outside any."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(backend):
    """Run a block on `backend` ("numpy", "numba" or a `Backend`; None changes nothing)."""
    if backend is None:
        yield current()
        return
    token = _CURRENT.set(resolve(backend))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


# The compiled kernels live in three source files; Numba's cache entries follow their stamps.
_KERNEL_SOURCES = (K.__file__, attention_kernels.__file__, _numba_math.__file__)
# Run in a second interpreter by `warm_up`: the attention kernels for the dtypes in argv[2:],
# from the copy of halo_ref in the folder argv[1] (the one this process runs; a command started
# in a source checkout would otherwise import the checkout's copy, whose cache entries differ)
_ATTENTION_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np; "
    "from halo_ref import backend; [backend._warm_attention(np.dtype(d)) for d in sys.argv[2:]]"
)


def _attention_child_command(dtypes) -> list[str]:
    """The command line of the second interpreter that compiles the attention kernels."""
    package_root = str(Path(__file__).resolve().parent.parent)
    return [sys.executable, "-c", _ATTENTION_CHILD, package_root,
            *(np.dtype(d).name for d in dtypes)]  # fmt: skip


def _warm_attention(dt) -> None:
    """Run one tiny case of the two attention kernels (forward, backward) in dtype dt."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 4, 4)).astype(dt)
    kv = rng.standard_normal((1, 4, 4, 4)).astype(dt)
    rel = rng.standard_normal((9, 2)).astype(dt)
    kwargs = dict(num_heads=1, block_size=2, halo_size=1, scale=0.5, border="mask")
    out, cache = NUMBA.halo_attention_forward(q, kv, rel, rel, **kwargs)  # one kernel pair
    NUMBA.halo_attention_backward(out, cache)  # serves blocks and strips


def _warm_layers(dt) -> None:
    """Run one tiny case of every layer kernel (convolutions, BatchNorm, SiLU, add) in dtype dt."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, 4, 4)).astype(dt)
    kv = rng.standard_normal((1, 4, 4, 4)).astype(dt)
    y, cache = K.conv1x1_to_pixels(kv, rng.standard_normal((3, 4)).astype(dt), None, 2)
    dx, _, _ = K.conv1x1_to_pixels_backward(y, cache)
    K.conv1x1_to_pixels_backward(y, cache, add_into=dx)
    y, cache = K.conv1x1_forward(q, rng.standard_normal((3, 2, 1, 1)).astype(dt))
    K.conv1x1_backward(y, cache)
    w = np.ones(4, dt)  # contiguous, as a layer's parameters: a strided one compiles anew
    out, cache = K.batchnorm2d_train_forward(
        kv, w, w, np.zeros(4, dt), np.ones(4, dt), momentum=0.1, eps=1e-5
    )
    K.batchnorm2d_train_backward(out, cache)
    out, cache = K.silu_forward(kv)
    K.silu_backward(K.add(out, kv), cache)
    y, cache = K.conv2d_forward(kv, rng.standard_normal((3, 4, 3, 3)).astype(dt), None, 2, 1)
    K.conv2d_backward(y, cache)


def _ready_marker(dt) -> Path:
    """The file `warm_up` leaves in the kernel cache once dtype dt's kernels are in it, named
    after what Numba's cache entries depend on (versions, this CPU, the kernel sources' stamps):
    any change gives a new name, so a stale marker is never read."""
    import llvmlite.binding
    import numba

    stamps = [(os.path.getmtime(f), os.path.getsize(f)) for f in _KERNEL_SOURCES]
    key = repr((numba.__version__, sys.version, llvmlite.binding.get_host_cpu_name(),
                np.dtype(dt).name, stamps))  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir()) / f"halo_ref-warm-{np.dtype(dt).name}-{digest}"


def _start_attention_compile(dtypes):
    """A second interpreter that compiles the attention kernels into the shared disk cache
    while this one compiles the layer kernels; None if it cannot start (then this one does it)."""
    try:
        return subprocess.Popen(
            _attention_child_command(dtypes),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    except OSError:
        return None


def warm_up(dtypes=(np.float32, np.float64), *, processes=None) -> float:
    """Compile every Numba kernel for each dtype (or load it from the disk cache) by running a
    tiny case of each; returns the seconds spent. Call it once before timing anything.

    processes: 1 compiles everything here; 2 compiles the attention kernels in a second
    interpreter at the same time (they and the layer kernels take about as long, so a first
    run on two cores waits about half as long), then loads them from the cache. None (the
    default) uses 2 when a dtype's kernels are not yet in the cache and this process may run
    on two cores or more, else 1. The results are the same bits either way: a loaded kernel
    computes what the compiled one does (tests/test_cache_state.py).
    """
    start = time.perf_counter()
    dtypes = [np.dtype(d) for d in dtypes]
    if processes is None:
        cold = [d for d in dtypes if not _ready_marker(d).exists()]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        processes = 2 if cold and (cores or 1) >= 2 else 1
    check_choice(processes, "processes", (1, 2))
    child = _start_attention_compile(dtypes) if processes == 2 else None
    try:
        for dt in dtypes:
            _warm_layers(dt)
        if child is not None:
            child.wait()  # whatever it reached is in the cache; the rest compiles below
    finally:
        if child is not None and child.poll() is None:  # interrupted here: do not leave it
            child.kill()
    for dt in dtypes:
        _warm_attention(dt)
        with contextlib.suppress(OSError):  # a read-only cache: the next run just cannot tell
            _ready_marker(dt).touch()
    return time.perf_counter() - start
