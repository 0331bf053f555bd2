"""Tools to check gradients and compare implementations (public: for halo_ref's tests and yours).

`check_gradients` compares a hand-written gradient with central finite differences in float64
along a random direction. For a scalar loss L(x) = sum(cotangent * f(x)) and a random unit-free
direction u, the directional derivative is

    numeric  = (L(x + eps*u) - L(x - eps*u)) / (2*eps)      (error O(eps^2) + O(ulp(L) / eps))
    analytic = sum(grad * u)

and the check passes when |numeric - analytic| <= rtol * max(|numeric|, |analytic|) + atol.
With eps = 1e-6 in float64 both error terms are around 1e-10 relative for smooth functions of
O(1) values, so rtol = 1e-7 leaves a wide margin yet catches any real mistake (a wrong gradient
is typically off by O(1)). One direction per array checks every entry at once: a wrong entry
shows up unless u happens to be orthogonal to the error, which has probability zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


class GradientCheckError(AssertionError):
    """A hand-written gradient disagrees with finite differences."""


def directional_errors(
    loss: Callable[[], float],
    arrays: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    *,
    rng: np.random.Generator,
    eps: float = 1e-6,
) -> dict[str, tuple[float, float]]:
    """(numeric, analytic) directional derivatives of `loss` for each named array.

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
        result[name] = (numeric, analytic)
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
    for name, (num, ana) in directional_errors(loss, arrays, grads, rng=rng, eps=eps).items():
        denom = max(abs(num), abs(ana))
        err = abs(num - ana) / denom if denom > 0 else 0.0
        errors[name] = err
        if abs(num - ana) > rtol * denom + atol:
            failed.append(
                f"{name}: numeric {num:.10g} vs analytic {ana:.10g} (rel. error {err:.2e})"
            )
    if failed:
        raise GradientCheckError("gradient check failed for " + "; ".join(failed))
    return errors


def check_layer_gradients(layer, x, *, rng=None, eps=1e-6, rtol=1e-7, atol=1e-12):
    """Finite-difference check of a float64 layer's dx and every parameter gradient.

    layer: a `halo_ref.module.Module` with forward/backward; x: its float64 input.
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


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zeros)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    diff = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def assert_close(actual, expected, *, rtol, name="array"):
    """Assert relative_error(actual, expected) <= rtol, with a readable report on failure.

    The error is relative to the largest magnitude in `expected`, so that tiny entries (attention
    outputs often cancel to near zero) do not dominate. The report gives the worst index.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if not np.isfinite(actual).all():
        raise AssertionError(f"{name}: contains NaN or inf")
    err = relative_error(actual, expected)
    if err > rtol:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        worst = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(
            f"{name}: relative error {err:.3e} > {rtol:.1e}; worst at index "
            f"{tuple(int(i) for i in worst)}: {actual[worst]!r} vs expected {expected[worst]!r} "
            f"(max |expected| = {np.max(np.abs(expected)):.3e})"
        )
    return err
