"""Verify another implementation of halo attention against the golden vectors (`halo_ref.vectors`).

An *adapter* connects the other implementation: a function

    run(config, x, weights, dout) -> (out, dx, grads)

that builds the implementation for `config` (a dict: timm `HaloAttn`'s arguments plus border,
see docs/verification.md), loads `weights` (timm's names -> arrays), computes out = f(x) and
the gradients of sum(dout * out): dx and grads (weight name -> gradient). A forward-only
implementation returns (out, None, None). `Adapter.supports(config)` returns None when the
implementation has the configuration's semantics, else the reason it has not (for example timm
has no border="mask"): such vectors are reported as not applicable, not as failures.

`verify(adapter)` runs every vector, compares each result array with `halo_ref.testing.compare`
(error = max|actual - expected| / max|expected|, against the manifest's tolerance for the dtype)
and returns a `Report`: a pass/fail table per configuration, the worst entries of each failing
array, and a diagnosis naming the configuration property that the failures share.

Shipped adapters: `timm_adapter()` (timm's `HaloAttn`), `torch_adapter()`, a from-scratch
PyTorch implementation with both borders (docs/verification.md has a standalone one as the
template), and `halo_ref_adapter(backend)`, halo_ref itself (to check a new backend).
`torch_adapter(bug=...)` plants one of four known mistakes in it (`PLANTED_BUGS`), to show, and
to test, that each one is caught.
"""

from __future__ import annotations

import importlib
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
            for p in next(iter(props.values()))
            if all(props[key][p] for key in failed)
            and any(props[key][p] for key in props if key not in failed)
        ]
        text = f"{len(failed)} of {len(applicable)} applicable vectors fail"
        if common:
            text += "; every failing configuration has " + ", ".join(common)
        return text

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
    vectors: e.g. `halo_ref.vectors.load_vectors(folder)`; default: generated in memory, seed 0;
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


# ---------------------------------------------------------------------------------------------
# Adapters shipped with halo_ref
# ---------------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError:
        raise HaloRefError(
            "this adapter needs PyTorch: pip install torch==2.13.0 (CPU is enough)"
        ) from None
    return torch


def _torch_grads(torch, x, weights, dout, forward):
    """Run `forward(x_t, weights_t)` in torch with autograd; return NumPy (out, dx, grads)."""
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    threads = torch.get_num_threads()
    # these layers are tiny: thread start-up costs more than it saves (10x on a busy machine)
    torch.set_num_threads(1)
    try:
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        wt = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in weights.items()}
        out = forward(xt, wt)
        out.backward(torch.tensor(dout, dtype=dtype))
        grads = {k: v.grad.numpy() for k, v in wt.items()}
        return out.detach().numpy(), xt.grad.numpy(), grads
    finally:
        torch.set_num_threads(threads)


def _timm_supports(config: dict) -> str | None:
    if config["border"] != "zeros":
        return "timm has only border='zeros'"
    return None


def timm_adapter() -> Adapter:
    """timm's `HaloAttn` (loaded in isolation by `halo_ref.timm_compat`): border="zeros" only."""
    torch = _torch()
    from .torch_side import load_timm_halo_attn

    try:
        halo_attn = load_timm_halo_attn()
    except ImportError as exc:
        raise HaloRefError(str(exc)) from None

    def run(config, x, weights, dout):
        module = halo_attn.HaloAttn(
            config["dim"],
            config["dim_out"],
            stride=config["stride"],
            num_heads=config["num_heads"],
            dim_head=config["dim_head"],
            block_size=config["block_size"],
            halo_size=config["halo_size"],
            qkv_bias=config["qkv_bias"],
            avg_down=config["avg_down"],
            scale_pos_embed=config["scale_pos_embed"],
        )

        def forward(xt, wt):
            # the weights as leaves we own, so that their .grad is ours to read
            return torch.func.functional_call(module, wt, (xt,))

        return _torch_grads(torch, x, weights, dout, forward)

    return Adapter("timm HaloAttn", run, _timm_supports)


def halo_ref_adapter(backend: str = "numba") -> Adapter:
    """halo_ref itself with the given attention backend (checks a new backend, e.g. numba)."""
    from ..attention import BACKENDS

    if backend not in BACKENDS:
        raise HaloRefError(f"backend={backend!r} is unknown; choose one of {sorted(BACKENDS)}")

    def run(config, x, weights, dout):
        from ..attention import HaloAttention

        kw = {k: config[k] for k in _LAYER_KEYS}
        layer = HaloAttention(
            config["dim"], config["dim_out"], **kw, dtype=x.dtype, backend=backend
        )
        layer.load_state_dict(weights)
        out = layer.forward(x)
        dx = layer.backward(dout)
        return out, dx, layer.grads

    def run_model(config, x, labels, weights):
        from ..models import halonet
        from ..nn.functional import cross_entropy_backward, cross_entropy_forward

        model = halonet(
            config["model"],
            num_classes=config["num_classes"],
            in_chans=config["in_chans"],
            dtype=x.dtype,
            rng=0,
            backend=backend,
        )
        model.load_state_dict(weights)
        logits = model.forward(x)
        loss, cache = cross_entropy_forward(logits, labels)
        dx = model.backward(cross_entropy_backward(cache))
        return logits, loss, dx, model.grads

    return Adapter(f"halo_ref (backend {backend!r})", run, run_model=run_model)


_LAYER_KEYS = (
    "num_heads",
    "dim_head",
    "block_size",
    "halo_size",
    "stride",
    "avg_down",
    "qkv_bias",
    "scale_pos_embed",
    "border",
)


PLANTED_BUGS = {
    "inverted_mask": "the padding mask is inverted: keys inside the image are masked out",
    "relpos_off_by_one": "the relative index is off by one (offset + win instead of + win - 1)",
    "double_scale": "with scale_pos_embed, the position logits are scaled twice",
    "kv_split": "k and v are split as [all k | all v] instead of per head [k_0 | v_0 | k_1 ...]",
}


def torch_halo_attention(x, weights, config, *, bug=None):
    """Halo attention written from scratch in PyTorch (autograd gives the gradients).

    x: (B, dim, H, W) torch tensor; weights: timm names -> tensors; config: a vector's config.
    Returns (B, dim_out, H/stride, W/stride). `bug` plants one of `PLANTED_BUGS` (or None).
    """
    import torch
    import torch.nn.functional as F

    B, _, H, W = x.shape
    heads, b, h = config["num_heads"], config["block_size"], config["halo_size"]
    d_qk, d_v = config["dim_head"], config["dim_out"] // config["num_heads"]
    win, R = b + 2 * h, 2 * (b + 2 * h) - 1
    pool = config["stride"] == 2 and (config["avg_down"] or b % 2 == 1)
    s = 2 if config["stride"] == 2 and not pool else 1  # query subsampling
    bq, nh, nw = b // s, H // b, W // b

    q = F.conv2d(x, weights["q.weight"], weights.get("q.bias"), stride=s)
    q = q.reshape(B, heads, d_qk, nh, bq, nw, bq).permute(0, 1, 3, 5, 4, 6, 2)
    q = q.reshape(B, heads, nh * nw, bq * bq, d_qk)  # B, heads, N, Pq, d_qk
    kv = F.conv2d(x, weights["kv.weight"], weights.get("kv.bias"))
    kv = F.pad(kv, [h, h, h, h]).unfold(2, win, b).unfold(3, win, b)  # B, C, nh, nw, win, win
    kv = kv.reshape(B, -1, nh * nw, win * win)  # B, heads*(d_qk+d_v), N, Pw
    if bug == "kv_split":
        k = kv[:, : heads * d_qk].reshape(B, heads, d_qk, nh * nw, win * win)
        v = kv[:, heads * d_qk :].reshape(B, heads, d_v, nh * nw, win * win)
    else:
        kv = kv.reshape(B, heads, d_qk + d_v, nh * nw, win * win)
        k, v = kv[:, :, :d_qk], kv[:, :, d_qk:]
    k, v = k.permute(0, 1, 3, 4, 2), v.permute(0, 1, 3, 4, 2)  # B, heads, N, Pw, d

    # relative position: query (qy, qx) in its block, key (ky, kx) in the window
    qy, qx = torch.arange(bq).repeat_interleave(bq), torch.arange(bq).repeat(bq)
    kk = torch.arange(win)
    shift = win if bug == "relpos_off_by_one" else win - 1
    idx_h = (kk[None, :] - qy[:, None] + shift).clamp(max=R - 1)  # Pq, win
    idx_w = (kk[None, :] - qx[:, None] + shift).clamp(max=R - 1)
    rel_h = torch.gather(
        q @ weights["pos_embed.height_rel"].T, -1, idx_h.expand(*q.shape[:-2], bq * bq, win)
    )
    rel_w = torch.gather(
        q @ weights["pos_embed.width_rel"].T, -1, idx_w.expand(*q.shape[:-2], bq * bq, win)
    )
    pos = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)  # B, heads, N, Pq, Pw
    scale = d_qk**-0.5
    content = q @ k.transpose(-1, -2)
    if config["scale_pos_embed"]:
        pos_term = pos * scale if bug == "double_scale" else pos
        logits = (content + pos_term) * scale
    else:
        logits = content * scale + pos
    if config["border"] == "mask":
        rows = torch.arange(nh)[:, None] * b - h + kk  # nh, win: image row of each window row
        cols = torch.arange(nw)[:, None] * b - h + kk
        inside = ((rows >= 0) & (rows < H))[:, None, :, None] & ((cols >= 0) & (cols < W))[
            None, :, None, :
        ]
        inside = inside.reshape(nh * nw, 1, win * win)  # N, 1, Pw
        if bug == "inverted_mask":
            inside = ~inside
        logits = logits.masked_fill(~inside, float("-inf"))
    out = logits.softmax(-1) @ v  # B, heads, N, Pq, d_v
    out = out.reshape(B, heads, nh, nw, bq, bq, d_v).permute(0, 1, 6, 2, 4, 3, 5)
    out = out.reshape(B, heads * d_v, nh * bq, nw * bq)
    return F.avg_pool2d(out, 2) if pool else out


def torch_adapter(bug: str | None = None) -> Adapter:
    """`torch_halo_attention` as an adapter (both borders); bug: None or a `PLANTED_BUGS` key."""
    if bug is not None and bug not in PLANTED_BUGS:
        raise HaloRefError(
            f"bug={bug!r} is not a planted bug; choose one of {sorted(PLANTED_BUGS)}"
        )
    torch = _torch()

    def run(config, x, weights, dout):
        return _torch_grads(
            torch, x, weights, dout, lambda xt, wt: torch_halo_attention(xt, wt, config, bug=bug)
        )

    name = "PyTorch example" + (f" with planted bug {bug!r}" if bug else "")
    return Adapter(name, run)


def resolve_adapter(spec: str) -> Adapter:
    """An adapter from a command-line name: "timm", "torch", "torch:<bug>", "halo_ref:<backend>"
    or "module:name".

    "module:name" imports `module`; `name` is either an `Adapter` or a function
    run(config, x, weights, dout) -> (out, dx, grads) (then every configuration is tried).
    """
    if spec == "timm":
        return timm_adapter()
    if spec == "torch":
        return torch_adapter()
    if spec.startswith("torch:"):
        return torch_adapter(spec.split(":", 1)[1])
    if spec.startswith("halo_ref:"):
        return halo_ref_adapter(spec.split(":", 1)[1])
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HaloRefError(
            f"--against {spec!r} is not known; use timm, torch, torch:<bug>, halo_ref:<backend> "
            "or module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HaloRefError(f"--against {spec!r}: cannot import {module_name!r} ({exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise HaloRefError(f"--against {spec!r}: {module_name!r} has no attribute {attr!r}")
    if isinstance(obj, Adapter):
        return obj
    if isinstance(obj, type) or not callable(obj):
        raise HaloRefError(f"--against {spec!r}: {attr!r} is not a function or an Adapter")
    return Adapter(spec, obj)


__all__ = [
    "DTYPES",
    "PLANTED_BUGS",
    "Adapter",
    "Report",
    "VectorResult",
    "check_vector",
    "halo_ref_adapter",
    "resolve_adapter",
    "timm_adapter",
    "torch_adapter",
    "torch_halo_attention",
    "verify",
]
