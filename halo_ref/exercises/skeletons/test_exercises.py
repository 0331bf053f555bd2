"""Grades your exercises against halo_ref: run `python -m pytest` in this folder.

Each test draws shapes and values with hypothesis and compares your function with halo_ref's
(float64, relative tolerance 1e-9: a right answer differs by rounding only). A failure names the
case and the error, the property of the inputs that the failing cases share (from a fixed grid of
cases; for the attention, from halo_ref's golden vectors and its verifier) and a hint.
Start with exercise 1: later exercises may use your earlier functions.
"""

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # your ex*.py files, next to this one

import ex1_blocking  # noqa: E402
import ex2_softmax  # noqa: E402
import ex3_relpos  # noqa: E402
import ex4_attention  # noqa: E402
import ex5_bottleneck  # noqa: E402

from halo_ref.exercises.grading import cases, check  # noqa: E402

GRADE = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@GRADE
@given(case=cases("blocks_from_map"))
def test_1a_blocks_from_map(case):
    check("blocks_from_map", ex1_blocking, case)


@GRADE
@given(case=cases("gather_windows"))
def test_1b_gather_windows(case):
    check("gather_windows", ex1_blocking, case)


@GRADE
@given(case=cases("scatter_windows"))
def test_1c_scatter_windows_is_the_adjoint(case):
    check("scatter_windows", ex1_blocking, case)


@GRADE
@given(case=cases("softmax_backward"))
def test_2_softmax_backward(case):
    check("softmax_backward", ex2_softmax, case)


@GRADE
@given(case=cases("relpos_forward"))
def test_3a_relpos_forward(case):
    check("relpos_forward", ex3_relpos, case)


@GRADE
@given(case=cases("relpos_backward"))
def test_3b_relpos_backward(case):
    check("relpos_backward", ex3_relpos, case)


@GRADE
@given(case=cases("halo_attention_forward"))
def test_4a_halo_attention_forward(case):
    check("halo_attention_forward", ex4_attention, case)


@GRADE
@given(case=cases("halo_attention_backward"))
def test_4b_halo_attention_backward(case):
    check("halo_attention_backward", ex4_attention, case)


@GRADE
@given(case=cases("bottleneck_forward"))
def test_5a_bottleneck_forward(case):
    check("bottleneck_forward", ex5_bottleneck, case)


@GRADE
@given(case=cases("bottleneck_backward"))
def test_5b_bottleneck_backward(case):
    check("bottleneck_backward", ex5_bottleneck, case)
