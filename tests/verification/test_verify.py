"""halo_ref.verification.verify: the report, the exit criterion, timm, and detection of four planted bugs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from halo_ref import HaloRefError
from halo_ref.cli.main import main
from halo_ref.verification.adapters import halo_ref_adapter, resolve_adapter
from halo_ref.verification.vectors import CONFIG_GRID, generate_vectors, write_vectors
from halo_ref.verification.verify import ERROR, FAIL, NOT_APPLICABLE, PASS, Adapter, verify

ROOT = Path(__file__).resolve().parents[2]
LAYER_NAMES = [c.name for c in CONFIG_GRID]


@pytest.fixture(scope="module")
def vectors():
    """Every vector, both dtypes, generated once for the module."""
    return generate_vectors()


@pytest.fixture(scope="module")
def vectors64(vectors):
    return [v for v in vectors if v.dtype == "float64"]


def _names(predicate):
    """Layer configuration names whose config satisfies `predicate`."""
    return [c.name for c in CONFIG_GRID if predicate(c)]


# -- the machinery, with NumPy adapters (no torch needed) -------------------------------------
def test_halo_ref_itself_passes_every_vector(vectors):
    report = verify(halo_ref_adapter("numpy"), vectors)
    assert report.passed and not report.failed
    assert all(r.status == PASS for r in report.results)
    assert "PASSED" in report.render()


def _ignores_border(config, x, weights, dout):
    """A plausible port that has only timm's zero padding and silently ignores border='mask'."""
    return halo_ref_adapter("numpy").run({**config, "border": "zeros"}, x, weights, dout)


def test_a_wrong_border_fails_exactly_the_mask_configurations(vectors64):
    report = verify(_ignores_border, vectors64, name="zeros-only port")
    assert not report.passed
    # halo 0 has no padding at all, so the two borders agree there and it passes
    expected = _names(lambda c: c.border == "mask" and c.halo_size > 0)
    assert report.failing_names == expected
    assert "exactly the configurations with border='mask' and halo_size > 0" in report.diagnosis()
    text = report.render()
    for name in expected:
        assert re.search(rf"^{re.escape(name)}\s+float64\s+FAIL", text, re.M), name
    assert "halonet_micro" in text and NOT_APPLICABLE in text  # no run_model: not applicable


def test_forward_only_adapters_are_checked_on_the_output_alone(vectors64):
    def forward_only(config, x, weights, dout):
        out, _, _ = halo_ref_adapter("numpy").run(config, x, weights, dout)
        return out, None, None

    report = verify(forward_only, vectors64)
    assert report.passed
    assert {tuple(c.name for c in r.comparisons) for r in report.applicable} == {("out",)}
    assert "gradients not given (forward only)" in report.table()


def test_errors_and_wrong_shapes_fail_with_a_reason(vectors64):
    def raises(config, x, weights, dout):
        raise RuntimeError("kernel launch failed\nlong traceback text")

    report = verify(raises, vectors64[:2])
    assert [r.status for r in report.results] == [ERROR, ERROR] and not report.passed
    assert "RuntimeError: kernel launch failed" in report.table()

    def transposed(config, x, weights, dout):
        out, dx, grads = halo_ref_adapter("numpy").run(config, x, weights, dout)
        return out.swapaxes(-1, -2), dx, grads

    report = verify(transposed, [v for v in vectors64 if v.name == "stride2-zeros"])
    (result,) = report.results
    assert result.status == FAIL
    (bad,) = [c for c in result.comparisons if not c.passed]
    assert bad.name == "out" and "shape (2, 8, 6, 4), expected (2, 8, 4, 6)" in bad.problem


def test_a_float32_result_for_float64_vectors_is_named(vectors):
    def single_precision(config, x, weights, dout):
        x32, dout32 = x.astype(np.float32), dout.astype(np.float32)
        w32 = {k: v.astype(np.float32) for k, v in weights.items()}
        return halo_ref_adapter("numpy").run(config, x32, w32, dout32)

    report = verify(single_precision, [v for v in vectors if v.kind == "halo_attention"])
    assert "exactly the configurations with dtype float64" in report.diagnosis()
    assert "returned float32 for a float64 vector" in report.table()


def test_nothing_applicable_is_not_a_pass(vectors64):
    adapter = Adapter("nothing", lambda *a: None, supports=lambda config: "not supported")
    report = verify(adapter, vectors64)
    assert not report.passed and not report.failed
    assert "no vector applies" in report.diagnosis()


def test_bad_adapter_names_give_one_line_errors():
    with pytest.raises(HaloRefError, match="is not known"):
        resolve_adapter("nonsense")
    with pytest.raises(HaloRefError, match="cannot import"):
        resolve_adapter("no_such_module_xyz:run")
    with pytest.raises(HaloRefError, match="has no attribute"):
        resolve_adapter("halo_ref.verification.verify:no_such_thing")
    with pytest.raises(HaloRefError, match="not a planted bug"):
        resolve_adapter("torch:no_such_bug")
    with pytest.raises(HaloRefError, match="backend='no_such_backend' is not supported"):
        resolve_adapter("halo_ref:no_such_backend")
    with pytest.raises(HaloRefError, match="must be an Adapter or a function"):
        verify(42)
    assert main(["verify", "--against", "nonsense"]) == 2


def broken(config, x, weights, dout):
    """An adapter whose output is off by 1%: fails every vector."""
    out, dx, grads = halo_ref_adapter("numpy").run(config, x, weights, dout)
    return out * 1.01, dx, grads


def test_cli_exit_status_follows_the_report(tmp_path, capsys):
    write_vectors(tmp_path, configs=CONFIG_GRID[:2], models=())
    argv = ["verify", "--against", "halo_ref:numpy", "--vectors", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PASSED: 4 of 4 applicable vectors pass" in out
    # module:function names any adapter function; this module is importable under pytest
    assert main([*argv[:2], f"{__name__}:broken", *argv[3:]]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 0 of 4 applicable vectors pass" in out


# -- PyTorch: timm and the planted bugs --------------------------------------------------------
@pytest.mark.torch
def test_timm_passes_every_configuration_it_implements(timm_halo_attn, vectors):
    from halo_ref.verification.torch_side import timm_adapter

    report = verify(timm_adapter(), vectors)
    assert report.passed, report.render()
    for r in report.results:
        if r.config.get("border") == "mask" or r.kind == "halonet":
            assert r.status == NOT_APPLICABLE  # reported as n/a, never as a failure
        else:
            assert r.status == PASS
    assert len(report.applicable) == 2 * len(_names(lambda c: c.border == "zeros"))


@pytest.mark.torch
def test_cli_verify_against_timm_exits_zero(timm_halo_attn, capsys):
    assert main(["verify", "--against", "timm", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "timm HaloAttn: PASSED: 14 of 14 applicable vectors pass (22 not applicable)" in out
    assert re.search(r"^basic-mask\s+float32\s+n/a .*timm has only border='zeros'", out, re.M)


@pytest.mark.torch
def test_torch_example_passes_both_borders(torch, vectors64):
    from halo_ref.verification.torch_side import torch_adapter

    report = verify(torch_adapter(), vectors64)
    assert report.passed, report.render()
    assert len(report.applicable) == len(CONFIG_GRID)


# which configurations each planted bug must break, and the diagnosis that names it
EXPECTED_FAILURES = {
    "inverted_mask": (
        lambda c: c.border == "mask",
        "exactly the configurations with border='mask'",
    ),
    "relpos_off_by_one": (lambda c: True, "every applicable vector fails"),
    "double_scale": (
        lambda c: c.scale_pos_embed,
        "exactly the configurations with scale_pos_embed=True",
    ),
    "kv_split": (lambda c: c.num_heads > 1, "exactly the configurations with num_heads > 1"),
}


@pytest.mark.torch
@pytest.mark.parametrize("bug", sorted(EXPECTED_FAILURES))
def test_each_planted_bug_is_detected_and_pinpointed(torch, vectors, bug):
    from halo_ref.verification.torch_side import PLANTED_BUGS, torch_adapter

    assert set(PLANTED_BUGS) == set(EXPECTED_FAILURES)
    predicate, diagnosis = EXPECTED_FAILURES[bug]
    report = verify(torch_adapter(bug), vectors)
    expected = _names(predicate)
    assert not report.passed
    assert report.failing_names == expected
    # both copies of each failing configuration fail; every other layer vector passes
    for r in report.results:
        if r.kind == "halo_attention":
            assert (r.status == FAIL) == (r.name in expected), (r.name, r.dtype)
    assert diagnosis in report.diagnosis()
    text = report.render()
    for name in expected:
        assert re.search(rf"^{re.escape(name)}\s+float(64|32)\s+FAIL", text, re.M)
    assert "worst at index" in text  # the details show where


@pytest.mark.torch
def test_tutorial_runs_as_a_plain_script(torch):
    path = ROOT / "tutorials" / "verify_broken_implementations.py"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, MPLBACKEND="Agg"),
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    for _, diagnosis in EXPECTED_FAILURES.values():
        assert diagnosis in proc.stdout
    assert seconds < 120  # "a few seconds" when the machine is quiet; 120 s under heavy load


@pytest.mark.torch
def test_docs_pytorch_example_runs_and_passes(torch):
    """The complete PyTorch adapter in docs/verification.md, executed as written."""
    text = (ROOT / "docs" / "verification.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (example,) = [b for b in blocks if "# complete example" in b]
    namespace = {"__name__": "docs_example"}
    threads = torch.get_num_threads()
    try:  # the example pins torch to one thread; give the rest of the session its setting back
        exec(compile(example, "docs/verification.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    report = namespace["report"]
    assert report.passed, report.render()
    assert len(report.applicable) == 2 * len(CONFIG_GRID)  # both dtypes
