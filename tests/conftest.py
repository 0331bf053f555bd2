"""Shared test set-up: hypothesis profiles, and a skip-or-fail rule for the optional packages
(PyTorch, timm, the outside implementations, safetensors and Pillow)."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import threading

import pytest
from hypothesis import HealthCheck, settings

# deadline=None: the first call of a shape may JIT-compile or allocate, which is not a bug.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=300)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)


def _skip_or_fail(reason: str):
    """Skip with a reason, or fail where HALO_REF_REQUIRE_TORCH is set: CI (.ci/run) installs
    every optional package the tests use, so none of these tests may skip there."""
    if os.environ.get("HALO_REF_REQUIRE_TORCH"):
        pytest.fail(f"{reason}, but HALO_REF_REQUIRE_TORCH is set", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def torch():
    """The torch module (float64 matmuls deterministic on 1 thread), or skip with the command."""
    try:
        import torch
    except ImportError:
        _skip_or_fail("torch is not installed: pip install torch==2.13.0")
    return torch


@pytest.fixture(scope="session")
def timm_halo_attn(torch):
    """timm's `halo_attn` module loaded in isolation (halo_ref.verification.torch_side), or skip."""
    from halo_ref.verification.torch_side import load_timm_halo_attn

    try:
        return load_timm_halo_attn()
    except ImportError as exc:
        _skip_or_fail(str(exc))


def _require(packages, extra: str):
    """Skip (or fail, see `_skip_or_fail`) unless every (module, pip name) is importable."""
    missing = [pip for module, pip in packages if importlib.util.find_spec(module) is None]
    if missing:
        _skip_or_fail(f"{', '.join(missing)} not installed: pip install -e '.[{extra}]'")


@pytest.fixture(scope="session")
def timm(torch):
    """The whole timm package (`timm.create_model`), imported with the torchvision stand-in of
    tests/torchvision_stub.py (torchvision's wheel cannot load against the CPU PyTorch), or
    skip."""
    if importlib.util.find_spec("timm") is None:
        _skip_or_fail("timm is not installed: pip install --no-deps timm==1.0.31")
    from torchvision_stub import import_timm

    return import_timm()


@pytest.fixture(scope="session")
def outside_packages(torch):
    """halonet-pytorch (and its einops) and kecam (and its h5py, ftfy, regex), or skip."""
    _require(
        [
            ("halonet_pytorch", "halonet-pytorch"),
            ("einops", "einops"),
            ("keras_cv_attention_models", "kecam"),
            ("h5py", "h5py"),
            ("ftfy", "ftfy"),
            ("regex", "regex"),
        ],
        "outside",
    )


@pytest.fixture(scope="session")
def io_packages():
    """safetensors and Pillow (golden vectors as .safetensors, images for `predict`), or skip."""
    _require([("safetensors", "safetensors"), ("PIL", "pillow")], "io")


@pytest.fixture(scope="session")
def numba_warm():
    """Compile (or load from Numba's disk cache) every Numba kernel once per session, so no
    single test, and no hypothesis example, carries the compile time."""
    from halo_ref.backend import warm_up

    return warm_up()


@pytest.fixture
def http_folder(tmp_path):
    """Serve tmp_path/"www" on 127.0.0.1 (a random free port); yields (folder, base url)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
