"""Tools to check gradients and compare implementations (public: for halo_ref's tests and yours).

`check_gradients` compares a hand-written gradient with central finite differences in float64
along a random direction. For a scalar loss L(x) = sum(cotangent * f(x)) and a random unit-free
direction u, the directional derivative is

    numeric  = (L(x + eps*u) - L(x - eps*u)) / (2*eps)      (error O(eps^2) + O(ulp(L) / eps))
    analytic = sum(grad * u)
    scale    = max(|numeric|, |analytic|, sum(|grad * u|))

and the check passes when |numeric - analytic| <= rtol * scale + atol + noise, where
noise = 64 ulp(L) / (2 eps) is the round-off floor of the quotient (it matters only when the
true derivative is 0, e.g. a gradient that cancels exactly). `sum(|grad * u|)` is the
size of the directional derivative before its terms cancel: a random u can make the sum itself
small while L and its round-off stay large, and that is not a wrong gradient. With eps = 1e-6 in
float64 both error terms are around 1e-10 of the scale for smooth functions of O(1) values, so
rtol = 1e-7 leaves a wide margin yet catches any real mistake (a wrong gradient is typically off
by O(1); one wrong entry among n is off by about 1/n of the scale). One direction per array
checks every entry at once: a wrong entry shows up unless u happens to be orthogonal to the
error, which has probability zero.

`check_forward_backward` applies the same check to a functional pair
`out, cache = f_forward(...)`, `grads = f_backward(dout, cache)`.

Comparisons between implementations (`compare`, `assert_close`, `compare_outputs`) use one number
per array, error = max |actual - expected| / max |expected|: entries that cancel to nearly zero
cannot inflate it, and it is directly comparable with a dtype's machine epsilon. A `Comparison`
also keeps the worst index and a short diff of the worst entries, which is what points a person
at the bug (a border pixel, one head, one row of a position table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class GradientCheckError(AssertionError):
    """A hand-written gradient disagrees with finite differences."""


class Directional(NamedTuple):
    """One array's directional derivative of a loss, two ways (see `directional_errors`)."""

    numeric: float  # the central difference quotient
    analytic: float  # sum(grad * u)
    scale: float  # sum(|grad * u|)
    noise: float  # the round-off floor of `numeric`


def directional_errors(
    loss: Callable[[], float],
    arrays: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    *,
    rng: np.random.Generator,
    eps: float = 1e-6,
) -> dict[str, Directional]:
    """The directional derivatives of `loss`, numeric and analytic, for each named array.

    scale = sum(|grad * u|), the size of the analytic derivative before cancellation;
    noise = the round-off floor of `numeric`, 64 ulp(L) / (2 eps).

    `loss()` reads the arrays in `arrays`, which are perturbed in place and restored.
    """
    result = {}
    for name, arr in arrays.items():
        if arr.dtype != np.float64:
            raise TypeError(f"check_gradients needs float64 arrays; {name!r} is {arr.dtype}")
        u = rng.standard_normal(arr.shape)
        saved = arr.copy()
        arr += eps * u
        plus = loss()
        arr[...] = saved - eps * u
        minus = loss()
        arr[...] = saved
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.sum(grads[name] * u))
        scale = float(np.sum(np.abs(grads[name] * u)))
        # round-off of the difference quotient: a few ulps of |L| divided by 2*eps
        noise = 64 * np.finfo(np.float64).eps * max(abs(plus), abs(minus)) / (2 * eps)
        result[name] = Directional(numeric, analytic, scale, noise)
    return result


def check_gradients(
    loss: Callable[[], float],
    arrays: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    *,
    rng=None,
    eps: float = 1e-6,
    rtol: float = 1e-7,
    atol: float = 1e-12,
) -> dict[str, float]:
    """Raise `GradientCheckError` unless each `grads[name]` matches finite differences of `loss`.

    loss: a function of no arguments returning a float, reading the float64 `arrays`;
    grads: the hand-written gradients of loss with respect to each array, same shapes.
    Returns the relative error per name.
    """
    rng = np.random.default_rng(rng)
    errors, failed = {}, []
    for name, (num, ana, scale, noise) in directional_errors(
        loss, arrays, grads, rng=rng, eps=eps
    ).items():
        denom = max(abs(num), abs(ana), scale)
        err = abs(num - ana) / denom if denom > 0 else 0.0
        errors[name] = err
        if abs(num - ana) > rtol * denom + atol + noise:
            failed.append(
                f"{name}: numeric {num:.10g} vs analytic {ana:.10g} (rel. error {err:.2e})"
            )
    if failed:
        raise GradientCheckError("gradient check failed for " + "; ".join(failed))
    return errors


def check_layer_gradients(layer, x, *, rng=None, eps=1e-6, rtol=1e-7, atol=1e-12):
    """Finite-difference check of a float64 layer's dx and every parameter gradient.

    layer: a `halo_ref.nn.module.Module` with forward/backward; x: its float64 input.
    Uses the loss sum(cotangent * layer.forward(x)) with a random cotangent.
    Returns the relative error per name ("x" and each parameter name).
    """
    rng = np.random.default_rng(rng)
    x = np.array(x, dtype=np.float64)
    out = layer.forward(x)
    cotangent = rng.standard_normal(out.shape)
    dx = layer.backward(cotangent)
    arrays = {"x": x, **layer.params}
    grads = {"x": dx, **layer.grads}

    def loss():
        return float(np.sum(cotangent * layer.forward(x)))

    return check_gradients(loss, arrays, grads, rng=rng, eps=eps, rtol=rtol, atol=atol)


def check_forward_backward(forward, backward, inputs, *, rng=None, eps=1e-6, rtol=1e-7, atol=1e-12):
    """Finite-difference check of a CS231n-style pair `out, cache = forward(**inputs)`,
    `grads = backward(dout, cache)`, where `grads` is a tuple in the order of `inputs`.

    inputs: dict name -> float64 array (the arguments to differentiate; pass anything else
    through a closure). A random cotangent dout makes the loss sum(dout * out).
    Returns the relative error per input name; raises `GradientCheckError` on a mismatch.
    """
    rng = np.random.default_rng(rng)
    arrays = {name: np.array(a, dtype=np.float64) for name, a in inputs.items()}
    out, cache = forward(**arrays)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple) or len(grads) != len(arrays):
        raise TypeError(f"backward must return a tuple of {len(arrays)} gradients (one per input)")

    def loss():
        return float(np.sum(dout * forward(**arrays)[0]))

    named = dict(zip(arrays, grads, strict=True))
    return check_gradients(loss, arrays, named, rng=rng, eps=eps, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Comparing arrays: one error number per array, and a report a person can act on.
# ---------------------------------------------------------------------------------------------
def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zeros)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    diff = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


@dataclass
class Comparison:
    """The agreement of one array with its expected value (see `compare`).

    error: max |actual - expected| / max |expected| (inf when the shapes differ, the actual has
    NaN/inf, or it is missing); max_abs: max |actual - expected|; scale: max |expected|;
    worst: index of the largest absolute difference; problem: why no error could be computed.
    """

    name: str
    rtol: float
    error: float
    max_abs: float = float("nan")
    scale: float = float("nan")
    worst: tuple[int, ...] | None = None
    problem: str = ""
    rows: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problem and self.error <= self.rtol

    def summary(self) -> str:
        """One line: name, error vs tolerance, worst index."""
        if self.problem:
            return f"{self.name}: {self.problem}"
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"{self.name}: {verdict}, relative error {self.error:.2e} (tolerance {self.rtol:.0e}), "
            f"max abs error {self.max_abs:.2e}, max |expected| {self.scale:.2e}, "
            f"worst at index {self.worst}"
        )

    def report(self) -> str:
        """The summary plus a short diff of the worst entries."""
        lines = [self.summary()]
        if self.rows:
            lines.append(f"    {'index':<20} {'actual':>16} {'expected':>16} {'difference':>12}")
            for idx, a, e in self.rows:
                lines.append(f"    {str(idx):<20} {a:>16.9g} {e:>16.9g} {a - e:>12.3e}")
        return "\n".join(lines)


def compare(actual, expected, *, rtol: float, name: str = "array", show: int = 5) -> Comparison:
    """Compare `actual` with `expected`: the error, the worst index and the `show` worst entries.

    actual, expected: array-likes of the same shape (any float dtype; compared in float64).
    The error is relative to the largest magnitude in `expected`, not entry by entry, so that
    entries that cancel to nearly zero (common in attention outputs and gradients) do not turn
    harmless round-off into huge relative errors.
    """
    if actual is None:
        return Comparison(
            name, rtol, float("inf"), problem="missing (the implementation gave None)"
        )
    try:
        a = np.asarray(actual, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return Comparison(name, rtol, float("inf"), problem=f"not a numeric array ({exc})")
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return Comparison(name, rtol, float("inf"), problem=f"shape {a.shape}, expected {e.shape}")
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        count = int((~np.isfinite(a)).sum())
        return Comparison(
            name, rtol, float("inf"), worst=bad, problem=f"{count} NaN/inf entries, first at {bad}"
        )
    if a.size == 0:
        return Comparison(name, rtol, 0.0, 0.0, 0.0)
    diff = np.abs(a - e)
    scale = float(np.max(np.abs(e)))
    max_abs = float(np.max(diff))
    error = max_abs / scale if scale > 0 else max_abs
    order = np.argsort(diff, axis=None, kind="stable")[::-1][:show]
    rows = []
    for flat in order:
        idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
        if diff[idx] == 0:
            break
        rows.append((idx, float(a[idx]), float(e[idx])))
    worst = rows[0][0] if rows else tuple(0 for _ in a.shape)
    return Comparison(name, rtol, error, max_abs, scale, worst, rows=rows)


def assert_close(actual, expected, *, rtol, name="array"):
    """Assert relative_error(actual, expected) <= rtol, with a readable report on failure.

    The error is relative to the largest magnitude in `expected`, so that tiny entries (attention
    outputs often cancel to near zero) do not dominate. On failure the message gives the max
    absolute and relative errors, the worst index and the five worst entries. Returns the error.
    """
    result = compare(actual, expected, rtol=rtol, name=name)
    if not result.passed:
        raise AssertionError(result.report())
    return result.error


def compare_outputs(actual: Mapping, expected: Mapping, *, rtol) -> list[Comparison]:
    """Compare every array of `expected` with the same key of `actual`, in `expected`'s order.

    actual: what an implementation produced, e.g. {"out": ..., "dx": ..., "grad/q.weight": ...};
    a missing key or a None value is a failure. rtol: one float, or a mapping key -> float.
    Keys of `actual` that `expected` lacks are ignored. Returns one `Comparison` per key.
    """
    results = []
    for key, exp in expected.items():
        tol = rtol[key] if isinstance(rtol, Mapping) else rtol
        results.append(compare(actual.get(key), exp, rtol=tol, name=key))
    return results
