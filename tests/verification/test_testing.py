"""halo_ref.verification.testing: the comparison report and the finite-difference checker of functional pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from strategies import perturbed_arrays

from halo_ref.nn.functional import (
    conv1x1_backward,
    conv1x1_forward,
    softmax_backward,
    softmax_forward,
)
from halo_ref.verification.testing import (
    GradientCheckError,
    assert_close,
    check_forward_backward,
    compare,
    compare_outputs,
    relative_error,
)


def test_compare_reports_the_error_and_the_worst_entries():
    expected = np.array([[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]])
    actual = expected.copy()
    actual[0, 2] += 0.4
    actual[1, 0] -= 0.1
    c = compare(actual, expected, rtol=1e-3, name="out")
    # exact binary fractions: 0.4 / 4 computed in float64 is within one ulp of 0.1
    assert c.error == pytest.approx(0.1, rel=1e-15)
    assert c.max_abs == pytest.approx(0.4, rel=1e-15)
    assert c.scale == 4.0
    assert c.worst == (0, 2)
    assert [idx for idx, _, _ in c.rows] == [(0, 2), (1, 0)]  # only entries that differ
    assert not c.passed
    report = c.report()
    assert "out: FAIL" in report and "(0, 2)" in report and "(1, 0)" in report


def test_assert_close_message_names_the_array_the_errors_and_the_index():
    expected = np.arange(24.0).reshape(2, 3, 4)
    actual = expected.copy()
    actual[1, 2, 3] = 0.0
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, rtol=1e-6, name="grad/q.weight")
    msg = str(info.value)
    assert msg.startswith("grad/q.weight: FAIL")
    assert "max abs error 2.30e+01" in msg and "(1, 2, 3)" in msg
    # within tolerance: returns the error (0.5 / 23, exactly representable ratio up to 1 ulp)
    actual[1, 2, 3] = 22.5
    assert assert_close(actual, expected, rtol=0.1) == pytest.approx(0.5 / 23, rel=1e-15)


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        (None, "missing"),
        (np.zeros((2, 2)), "shape (2, 2), expected (3,)"),
        (np.array([1.0, np.nan, np.inf]), "2 NaN/inf entries, first at (1,)"),
        (np.array(["a", "b", "c"]), "not a numeric array"),
    ],
)
def test_compare_fails_with_a_reason_on_unusable_output(actual, problem):
    c = compare(actual, np.ones(3), rtol=1.0)
    assert not c.passed and problem in c.problem and c.error == float("inf")


@given(perturbed_arrays())
def test_compare_measures_one_moved_entry_exactly(case):
    c = compare(case.actual(), case.expected, rtol=0.0)
    # the moved entry defines the error; rounding of the addition is below 1e-15 relative
    assert c.error == pytest.approx(abs(case.delta), rel=1e-9, abs=1e-15)
    assert c.error == pytest.approx(relative_error(case.actual(), case.expected), rel=1e-15)
    assert c.worst == case.index
    # a tolerance just under the error fails, just over passes
    assert not compare(case.actual(), case.expected, rtol=c.error * 0.99).passed
    assert compare(case.actual(), case.expected, rtol=c.error * 1.01).passed


def test_compare_outputs_checks_every_expected_key_with_its_tolerance():
    expected = {"out": np.ones(3), "dx": np.ones(2)}
    results = compare_outputs(
        {"out": np.ones(3) * 1.01, "extra": 0}, expected, rtol={"out": 0.02, "dx": 0.0}
    )
    assert [c.name for c in results] == ["out", "dx"]
    assert results[0].passed  # 1e-2 error under the 2e-2 tolerance
    assert not results[1].passed and "missing" in results[1].problem


def _softmax_pair():
    def forward(logits):
        return softmax_forward(logits)

    def backward(dout, cache):
        return (softmax_backward(dout, cache),)

    return forward, backward


def test_check_forward_backward_accepts_correct_pairs():
    rng = np.random.default_rng(0)
    forward, backward = _softmax_pair()
    errors = check_forward_backward(forward, backward, {"logits": rng.standard_normal((3, 5))})
    assert set(errors) == {"logits"}

    def conv_forward(x, weight, bias):
        return conv1x1_forward(x, weight, bias)

    inputs = {
        "x": rng.standard_normal((2, 3, 4, 4)),
        "weight": rng.standard_normal((5, 3, 1, 1)),
        "bias": rng.standard_normal(5),
    }
    errors = check_forward_backward(conv_forward, conv1x1_backward, inputs, rng=1)
    assert set(errors) == {"x", "weight", "bias"}


def test_check_forward_backward_catches_a_wrong_backward():
    forward, backward = _softmax_pair()

    def off_by_a_little(dout, cache):  # a 0.1% error in one output entry's gradient
        (d,) = backward(dout, cache)
        d = d.copy()
        d[0, 0] *= 1.001
        return (d,)

    logits = np.random.default_rng(0).standard_normal((2, 4))
    with pytest.raises(GradientCheckError, match="logits"):
        check_forward_backward(forward, off_by_a_little, {"logits": logits}, rng=0)


def test_check_forward_backward_rejects_a_backward_with_the_wrong_arity():
    def forward(a, b):
        return a * b, (a, b)

    def backward(dout, cache):
        return (dout * cache[1],)  # forgot db

    with pytest.raises(TypeError, match="tuple of 2 gradients"):
        check_forward_backward(forward, backward, {"a": np.ones(2), "b": np.ones(2)})
