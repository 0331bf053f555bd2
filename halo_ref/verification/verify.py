"""Verify another implementation of halo attention against the golden vectors
(`halo_ref.verification.vectors`).

An *adapter* connects the other implementation: a function

    run(config, x, weights, dout) -> (out, dx, grads)

that builds the implementation for `config` (a dict: timm `HaloAttn`'s arguments plus border,
see docs/verification.md), loads `weights` (timm's names -> arrays), computes out = f(x) and
the gradients of sum(dout * out): dx and grads (weight name -> gradient). A forward-only
implementation returns (out, None, None). `Adapter.supports(config)` returns None when the
implementation has the configuration's semantics, else the reason it has not (for example timm
has no border="mask"): such vectors are reported as not applicable, not as failures.

`verify(adapter)` runs every vector, compares each result array with
`halo_ref.verification.testing.compare`
(error = max|actual - expected| / max|expected|, against the manifest's tolerance for the dtype)
and returns a `Report`: a pass/fail table per configuration, the worst entries of each failing
array, and a diagnosis naming the configuration property that the failures share.

Shipped adapters (`halo_ref.verification.adapters`): `halo_ref_adapter(backend)`, halo_ref
itself (to check a new backend), and, with PyTorch (`halo_ref.verification.torch_side`),
`timm_adapter()` (timm's `HaloAttn`) and `torch_adapter()`, a from-scratch PyTorch
implementation with both borders (docs/verification.md has a standalone one as the template);
`torch_adapter(bug=...)` plants one of four known mistakes in it (`PLANTED_BUGS`), to show, and
to test, that each one is caught.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .._checks import HaloRefError
from .testing import Comparison, compare
from .vectors import DTYPES, GRAD_PREFIX, TOLERANCES, Vector, generate_vectors

PASS, FAIL, ERROR, NOT_APPLICABLE = "pass", "FAIL", "ERROR", "n/a"


@dataclass
class Adapter:
    """Another implementation, seen through `run(config, x, weights, dout) -> (out, dx, grads)`.

    supports(config) -> None when the implementation has this configuration's semantics, else a
    short reason (the vector is then reported as not applicable).
    run_model(config, x, labels, weights) -> (logits, loss, dx, grads), optional: a whole
    HaloNet (vectors of kind "halonet"); without it those vectors are not applicable.
    """

    name: str
    run: Callable | None
    supports: Callable[[dict], str | None] = field(default=lambda config: None)
    run_model: Callable | None = None
    # whether `run` implements the pad-then-crop rule for maps that are not a multiple of the
    # block (vectors with config["pad_to_blocks"]); without it those vectors are n/a
    pad_to_blocks: bool = False
    # what the implementation can express (`halo_ref.verification.adapters.Semantics`), for the
    # conformance table; None for an adapter that only has `supports`
    semantics: object | None = None


@dataclass
class VectorResult:
    """The outcome for one vector: status, one `Comparison` per result array, and a note."""

    name: str
    dtype: str
    config: dict
    status: str
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    kind: str = "halo_attention"

    def worst(self, keys) -> Comparison | None:
        """The comparison with the largest error among `keys` (None if none checked)."""
        found = [c for c in self.comparisons if c.name in keys]
        return max(found, key=lambda c: c.error) if found else None

    def config_summary(self) -> str:
        """The configuration on one line."""
        c = self.config
        if self.kind != "halo_attention":
            return f"{c.get('builder', self.kind)}, input {tuple(c['input_shape'])}"
        return (
            f"heads={c['num_heads']} dim={c['dim']}->{c['dim_out']} d_qk={c['dim_head']} "
            f"block={c['block_size']} halo={c['halo_size']} stride={c['stride']} "
            f"avg_down={c['avg_down']} bias={c['qkv_bias']} "
            f"scale_pos_embed={c['scale_pos_embed']} border={c['border']} "
            f"input={tuple(c['input_shape'])}"
        )


def _fmt(c: Comparison | None) -> str:
    if c is None:
        return "-"
    if c.problem:
        return "bad" if "NaN" not in c.problem else "NaN"
    return f"{c.error:.1e}"


# Properties that explain failures: a failure set equal to the set of vectors with one of these
# properties points at the code path that property switches on.
def _properties(config: dict) -> dict[str, bool]:
    d = config["derived"]
    return {
        "border='mask'": config["border"] == "mask",
        "border='zeros'": config["border"] == "zeros",
        "num_heads > 1": config["num_heads"] > 1,
        "halo_size = 0": config["halo_size"] == 0,
        "halo_size > 0": config["halo_size"] > 0,
        "scale_pos_embed=True": bool(config["scale_pos_embed"]),
        "qkv_bias=True": bool(config["qkv_bias"]),
        "stride=2": config["stride"] == 2,
        "stride=2 with strided queries": d["query_stride"] == 2,
        "stride=2 with average pooling": bool(d["avg_pool_after"]),
        "d_qk != d_v": config["dim_head"] != d["dim_head_v"],
        "dim != dim_out": config["dim"] != config["dim_out"],
        "non-square map": config["height"] != config["width"],
        "more than one block": config["height"] * config["width"] > config["block_size"] ** 2,
    }


def diagnose(properties: dict, failed: set) -> str:
    """The sentence naming what the failing cases have in common (the pinpointing sentence).

    properties: case -> {property name: bool}, for every case that ran (each case the same
    property names); failed: the cases that failed, a non-empty proper subset. Finds a property,
    else a pair of properties, whose cases are exactly the failing ones; else lists those that
    every failing case has and some passing case lacks. Used for the golden vectors here and for
    the graded exercises (`halo_ref.exercises`).
    """
    props = properties
    names = list(next(iter(props.values())))
    exact = [p for p in names if {key for key, v in props.items() if v[p]} == failed]
    if exact:
        return "the failures are exactly the configurations with " + " / ".join(exact)
    # a bug can need two conditions (a masking slip shows only where there is padding)
    pairs = [
        f"{a} and {b}"
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if {key for key, v in props.items() if v[a] and v[b]} == failed
    ]
    if pairs:
        return "the failures are exactly the configurations with " + " / ".join(pairs)
    common = [
        p
        for p in names
        if all(props[key][p] for key in failed)
        and any(props[key][p] for key in props if key not in failed)
    ]
    text = f"{len(failed)} of {len(props)} applicable configurations fail"
    if common:
        text += "; every failing configuration has " + ", ".join(common)
    return text


@dataclass
class Report:
    """All results of one verification run; `passed` is the exit criterion."""

    adapter: str
    results: list[VectorResult]

    @property
    def applicable(self) -> list[VectorResult]:
        return [r for r in self.results if r.status != NOT_APPLICABLE]

    @property
    def failed(self) -> list[VectorResult]:
        """Applicable vectors that failed or raised."""
        return [r for r in self.results if r.status in (FAIL, ERROR)]

    @property
    def failing_names(self) -> list[str]:
        """Names of the failing configurations (each once, in grid order)."""
        return list(dict.fromkeys(r.name for r in self.failed))

    @property
    def passed(self) -> bool:
        """True iff at least one vector applies and every applicable vector passed."""
        return bool(self.applicable) and not self.failed

    def table(self) -> str:
        """One row per vector: status, error of out, of dx, and the worst weight gradient."""
        head = (
            f"{'configuration':<26} {'dtype':<7} {'result':<6} {'out':>8} {'dx':>8} "
            f"{'weights':>8}  worst weight gradient / note"
        )
        lines = [head, "-" * len(head)]
        for r in self.results:
            wg = r.worst([c.name for c in r.comparisons if c.name.startswith(GRAD_PREFIX)])
            out, dx = r.worst(["out", "logits", "loss"]), r.worst(["dx"])
            if r.status == NOT_APPLICABLE or r.status == ERROR:
                note = r.note
            elif wg is None:
                note = "gradients not given (forward only)"
            else:
                note = wg.name[len(GRAD_PREFIX) :]
            if r.note and r.status == FAIL:
                note += f" ({r.note})"
            lines.append(
                f"{r.name:<26} {r.dtype:<7} {r.status:<6} {_fmt(out):>8} {_fmt(dx):>8} "
                f"{_fmt(wg):>8}  {note}"
            )
        return "\n".join(lines)

    def details(self, limit: int = 3) -> str:
        """The failing arrays of the first `limit` failing vectors, with their worst entries."""
        lines = []
        for r in self.failed[:limit]:
            lines.append(f"{r.name} ({r.dtype}): {r.config_summary()}")
            if r.status == ERROR:
                lines.append(f"  raised: {r.note}")
            for c in r.comparisons:
                if not c.passed:
                    lines.append("  " + c.report().replace("\n", "\n  "))
        if len(self.failed) > limit:
            lines.append(f"... and {len(self.failed) - limit} more failing vectors")
        return "\n".join(lines)

    def diagnosis(self) -> str:
        """Which configuration property the failures share (the pinpointing sentence)."""
        applicable = self.applicable
        failed = {(r.name, r.dtype) for r in self.failed}
        if not applicable:
            return "no vector applies to this implementation"
        if not failed:
            return f"all {len(applicable)} applicable vectors pass"
        if len(failed) == len(applicable):
            return "every applicable vector fails: the error is on a path all configurations use"
        props = {
            (r.name, r.dtype): {
                **_properties(r.config),
                "dtype float64": r.dtype == "float64",
                "dtype float32": r.dtype == "float32",
            }
            for r in applicable
            if r.kind == "halo_attention"
        }
        failed = {key for key in failed if key in props}
        if not failed:
            return "only whole-model vectors fail: the layer passes, look outside the attention"
        return diagnose(props, failed)

    def summary(self) -> str:
        n_app, n_fail = len(self.applicable), len(self.failed)
        n_na = len(self.results) - n_app
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"{self.adapter}: {verdict}: {n_app - n_fail} of {n_app} applicable vectors pass"
            f" ({n_na} not applicable)"
        )

    def render(self, details: int = 3) -> str:
        """Table, diagnosis, details of failures and the summary line, ready to print."""
        parts = [self.table(), "", "diagnosis: " + self.diagnosis()]
        if self.failed and details:
            parts += ["", self.details(details)]
        parts += ["", self.summary()]
        return "\n".join(parts)


def check_vector(adapter: Adapter, vector: Vector, *, rtol: float | None = None) -> VectorResult:
    """Run one vector through `adapter` and compare every result array."""
    rtol = TOLERANCES[vector.kind][vector.dtype] if rtol is None else rtol
    result = VectorResult(
        vector.name, vector.dtype, vector.config, NOT_APPLICABLE, kind=vector.kind
    )
    if vector.kind == "halonet":
        run = adapter.run_model
        reason = None if run else "whole-model vector; the adapter has no run_model"
    else:
        run = adapter.run
        reason = adapter.supports(vector.config) if run else "the adapter has no run"
        if not reason and vector.config.get("pad_to_blocks") and not adapter.pad_to_blocks:
            reason = "pad-then-crop vector; the adapter does not declare that rule"
    if reason:
        result.note = reason
        return result
    weights = {k: v.copy() for k, v in vector.weights.items()}
    t0 = time.perf_counter()
    try:
        if vector.kind == "halonet":
            logits, loss, dx, grads = run(vector.config, vector.x.copy(), vector.labels, weights)
            actual = {"logits": logits, "loss": loss}
        else:
            out, dx, grads = run(vector.config, vector.x.copy(), weights, vector.dout.copy())
            actual = {"out": out}
    except Exception as exc:  # the implementation under test may raise anything
        first = str(exc).splitlines()[0] if str(exc) else ""
        result.status, result.note = ERROR, f"{type(exc).__name__}: {first}"
        return result
    result.seconds = time.perf_counter() - t0
    expected = vector.expected
    if dx is None and grads is None:  # forward only: compare the forward results alone
        expected = {k: v for k, v in expected.items() if k in actual}
    else:
        actual["dx"] = dx
        for key, value in (grads or {}).items():
            actual[GRAD_PREFIX + key] = value
    result.comparisons = [
        compare(actual.get(key), value, rtol=rtol, name=key) for key, value in expected.items()
    ]
    result.status = PASS if all(c.passed for c in result.comparisons) else FAIL
    lower = sorted(
        {
            str(np.asarray(v).dtype)
            for v in actual.values()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.dtype != vector.x.dtype
        }
    )
    if lower and result.status == FAIL:  # say so: a float32 result cannot meet 1e-10
        result.note = f"returned {', '.join(lower)} for a {vector.dtype} vector"
    return result


def verify(
    adapter,
    vectors: Iterable[Vector] | None = None,
    *,
    dtypes=("float64",),
    rtol: float | None = None,
    name: str | None = None,
) -> Report:
    """Check an implementation against golden vectors and return a `Report`.

    adapter: an `Adapter`, or a bare function run(config, x, weights, dout) -> (out, dx, grads)
    (then every configuration is assumed supported);
    vectors: e.g. `halo_ref.verification.vectors.load_vectors(folder)`; default: generated in
    memory, seed 0;
    dtypes: which copies to run when generating; rtol: override the manifest's tolerances.
    """
    if not isinstance(adapter, Adapter):
        if not callable(adapter):
            raise HaloRefError(
                f"adapter must be an Adapter or a function (config, x, weights, dout) -> "
                f"(out, dx, grads), got {type(adapter).__name__}"
            )
        adapter = Adapter(name or getattr(adapter, "__name__", "adapter"), adapter)
    if vectors is None:
        vectors = generate_vectors(dtypes=dtypes)
    results = [check_vector(adapter, v, rtol=rtol) for v in vectors]
    return Report(name or adapter.name, results)


__all__ = [
    "DTYPES",
    "ERROR",
    "FAIL",
    "NOT_APPLICABLE",
    "PASS",
    "Adapter",
    "Report",
    "VectorResult",
    "check_vector",
    "verify",
]
