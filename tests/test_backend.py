"""halo_ref.backend: the one switch between NumPy's formulas and the Numba kernels.

What it chooses (the kernels for float32 and float64 arrays, the formulas otherwise or when
asked), how a choice is scoped (`use` blocks, a layer's or a model's own backend), that a
backward follows its forward, and that `warm_up` leaves nothing to compile.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from halo_ref import HaloAttention, HaloRefError, backend
from halo_ref.models import halonet
from halo_ref.nn import kernels as K
from halo_ref.nn.layers import Conv2d

# the entry points of halo_ref.nn.kernels that a backend calls
KERNELS = ("silu_forward", "silu_backward", "conv1x1_forward", "conv2d_forward",
           "batchnorm2d_train_forward", "batchnorm2d_train_backward", "add")  # fmt: skip


@pytest.fixture
def kernel_calls(monkeypatch):
    """The names of the layer kernels called in the test, in order (each is replaced by one
    that records its call: a silent fallback to NumPy cannot pass for a kernel)."""
    called = []

    def spy(name):
        real = getattr(K, name)

        def record(*args, **kwargs):
            called.append(name)
            return real(*args, **kwargs)

        return record

    for name in KERNELS:
        monkeypatch.setattr(K, name, spy(name))
    return called


def run_layers(on, x):
    """Every layer operation with a kernel, once, on backend `on`."""
    dt = x.dtype
    out, cache = on.silu_forward(x)
    on.silu_backward(out, cache)
    on.conv2d_forward(x, np.ones((5, 3, 1, 1), dt))
    on.conv2d_forward(x, np.ones((5, 3, 3, 3), dt), padding=1)
    ones, zeros = np.ones(3, dt), np.zeros(3, dt)
    out, cache = on.batchnorm2d_forward(x, ones, zeros, zeros.copy(), ones.copy(), training=True)
    on.batchnorm2d_backward(out, cache)
    on.add(x, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_runs_the_kernels_for_float_inputs_and_numpy_never(kernel_calls, dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(dtype)
    run_layers(backend.NUMBA, x)
    assert kernel_calls == list(KERNELS)
    kernel_calls.clear()
    run_layers(backend.NUMPY, x)
    assert kernel_calls == []


def test_numba_falls_back_to_the_formulas_where_no_kernel_applies(kernel_calls):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    x16 = x.astype(np.float16)  # not a kernel dtype
    backend.NUMBA.silu_forward(x16)
    backend.NUMBA.add(x16, x16)
    backend.NUMBA.add(x, x[:, :1])  # shapes that broadcast
    h16, z16 = np.ones(3, np.float16), np.zeros(3, np.float16)
    backend.NUMBA.batchnorm2d_forward(x16, h16, z16, z16.copy(), h16.copy(), training=True)
    backend.NUMBA.conv2d_forward(x, np.ones((5, 3, 1, 1)))  # float32 map, float64 weight
    assert kernel_calls == []


def test_a_backward_follows_the_forward_that_made_its_cache():
    """A convolution's cache says which of the four forwards made it, whatever the backend at
    backward time (the layers keep their forward's backend anyway)."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 1, 1))
    for maker in (backend.NUMBA, backend.NUMPY):
        out, cache = maker.conv2d_forward(x, w)
        for other in (backend.NUMBA, backend.NUMPY):
            dx, dw, _ = other.conv2d_backward(np.ones_like(out), cache)
            assert dx.shape == x.shape and dw.shape == w.shape


def test_use_scopes_the_current_backend_and_restores_it():
    assert backend.current() is backend.NUMBA
    with backend.use("numpy") as inside:
        assert inside is backend.NUMPY and backend.current() is backend.NUMPY
        with backend.use(None):
            assert backend.current() is backend.NUMPY
        with pytest.raises(RuntimeError):
            with backend.use(backend.NUMBA):
                assert backend.current() is backend.NUMBA
                raise RuntimeError
        assert backend.current() is backend.NUMPY
    assert backend.current() is backend.NUMBA


def test_layers_follow_the_current_backend_and_a_layer_or_model_may_fix_one(kernel_calls):
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    conv = Conv2d(3, 4, 1, rng=0)
    with backend.use("numpy"):
        conv.backward(conv.forward(x))
    assert kernel_calls == []
    conv.backward(conv.forward(x))
    assert kernel_calls == ["conv1x1_forward"]  # the 1x1 backward is not spied on
    kernel_calls.clear()
    model = halonet("micro", in_chans=3, rng=0, backend="numpy")  # every layer, in any context
    with backend.use("numba"):
        model.backward(model.forward(x[:, :, :8, :8]))
    assert kernel_calls == []


def test_attention_layer_backend_explicit_or_current():
    layer = HaloAttention(8, num_heads=2, block_size=4, halo_size=1, rng=0)
    fixed = HaloAttention(8, num_heads=2, block_size=4, halo_size=1, rng=0, backend="numba")
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype(np.float32)
    with backend.use("numpy"):
        layer.forward(x)
        fixed.forward(x)
    assert layer._cache.backend is backend.NUMPY and fixed._cache.backend is backend.NUMBA
    strips = backend.Backend("numba", family="strips")
    layer = HaloAttention(8, num_heads=2, block_size=4, halo_size=1, rng=0, backend=strips)
    layer.forward(x)
    assert layer._cache.core.attention.geometry.strips


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: backend.resolve("cuda"), "backend='cuda' is not supported"),
        (lambda: backend.Backend("numba", family="rows"), "family='rows' is not supported"),
        (lambda: backend.Backend("numpy", family="blocks"), "for the numba backend"),
        (lambda: HaloAttention(8, num_heads=2, backend="jax"), "backend='jax'"),
    ],
)
def test_bad_choices_are_one_line_errors(make, message):
    with pytest.raises(HaloRefError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


WARM_UP_CHECK = """
from halo_ref.attention import kernels as attention_kernels
from halo_ref.backend import warm_up
from halo_ref.nn import kernels as layer_kernels
warm_up()
kernels = [getattr(m, n) for m in (attention_kernels, layer_kernels) for n in dir(m)
           if n.endswith("_kernel") and hasattr(getattr(m, n), "signatures")]
assert len(kernels) >= 12, len(kernels)
for k in kernels:
    dtypes = {str(sig[0].dtype) for sig in k.signatures}
    assert {"float32", "float64"} <= dtypes, (k.__name__, dtypes)
"""


def test_warm_up_compiles_every_kernel(numba_warm):
    """warm_up leaves nothing to compile later (a first training epoch would otherwise stall on
    a kernel it never ran): in a fresh interpreter, where nothing else has run a kernel, every
    parallel kernel has a float32 and a float64 version afterwards (loaded from the disk cache
    that this session's warm-up filled)."""
    proc = subprocess.run(
        [sys.executable, "-c", WARM_UP_CHECK], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_warm_up_marks_the_cache_and_checks_its_processes(numba_warm):
    """After a warm-up the cache holds its ready marker (so the next run does not start a
    second interpreter for nothing); `processes` is 1 or 2, said in one line."""
    assert backend._ready_marker(np.float32).exists()
    assert backend._ready_marker(np.float64).exists()
    with pytest.raises(HaloRefError, match="processes=3") as e:
        backend.warm_up(processes=3)
    assert "\n" not in str(e.value)


def test_warm_ups_second_interpreter_imports_this_halo_ref(tmp_path):
    """Started in a folder holding another `halo_ref` (a source checkout beside an installed
    copy), the interpreter that compiles the attention kernels still imports this process's
    copy: kernels compiled from another copy's files would be cached under other names."""
    decoy = tmp_path / "halo_ref"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    command = backend._attention_child_command(dtypes=())  # no dtypes: import only
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
