"""benchmarks/bench_model.py's --busy plumbing (not its timings: speed claims are measured by
the benchmark itself, never asserted in tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"
_spec = importlib.util.spec_from_file_location("bench_model", _PATH)
bench_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_model)


def test_busy_processes_run_during_the_block_and_are_gone_after_it():
    with bench_model.busy_processes(2) as procs:
        assert len(procs) == 2
        assert all(p.poll() is None for p in procs)  # still spinning
    assert all(p.returncode is not None for p in procs)  # killed and reaped


def test_busy_must_not_be_negative():
    with pytest.raises(ValueError, match="--busy"):
        bench_model.main(["--busy", "-1"])
