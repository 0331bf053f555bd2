"""Grading of the exercises that `halo-ref exercises DIR` writes: each learner function against
halo_ref's own, on shapes drawn by hypothesis, with a diagnosis when it fails.

`check(name, module, case)` runs the learner's function `name` (found in `module`) on one case
and raises `ExerciseFailure` when it disagrees with halo_ref. The message names the case and the
error, then runs the learner's function over a fixed grid of cases (`GRID`) and says which
property of the inputs the failing cases share, with the verifier's own diagnosis
(`halo_ref.verification.verify.diagnose`; for the attention exercise, the golden vectors
themselves), and a hint for that property. `cases(name)` is the hypothesis strategy of cases.

Tolerances: everything runs in float64 and the learner computes the same sums as halo_ref in
another order, so a right answer differs by rounding only (about 1e-15 relative); 1e-9 relative
to the largest entry is far below any real mistake, which is off by order 1.
"""

from __future__ import annotations

import functools

import numpy as np

from ..attention import blocking
from ..attention.core import halo_attention_backward, halo_attention_forward
from ..attention.relpos import relpos_backward, relpos_forward
from ..models.configs import StageConfig
from ..models.halonet import HaloBottleneck
from ..nn.functional import conv1x1_backward, conv1x1_forward, softmax_backward, softmax_forward
from ..verification.vectors import generate_vectors
from ..verification.verify import Adapter, diagnose, verify

RTOL = 1e-9


class ExerciseFailure(AssertionError):
    """A learner function disagrees with halo_ref; the message says where and why."""


# -- cases --------------------------------------------------------------------------------------
def _blocking_case(B=1, C=2, H=8, W=8, b=4, h=1, seed=0):
    return dict(B=B, C=C, H=H, W=W, b=b, h=h, seed=seed)


def _softmax_case(lead=(3,), n=5, masked=False, scale=1.0, seed=0):
    return dict(lead=tuple(lead), n=n, masked=masked, scale=scale, seed=seed)


def _relpos_case(lead=(), b=2, h=1, d=3, seed=0):
    return dict(lead=tuple(lead), b=b, h=h, d=d, seed=seed)


def _attention_case(B=1, heads=2, d=3, dv=2, H=8, W=8, b=4, h=1, seed=0):
    return dict(B=B, heads=heads, d=d, dv=dv, H=H, W=W, b=b, h=h, seed=seed)


def _bottleneck_case(B=2, C=8, mid=8, heads=2, H=4, W=4, b=2, h=1, seed=0):
    return dict(B=B, C=C, mid=mid, heads=heads, H=H, W=W, b=b, h=h, seed=seed)


_BLOCKING_GRID = [
    _blocking_case(),
    _blocking_case(h=0),
    _blocking_case(b=2, h=3, H=4, W=6),
    _blocking_case(H=4, W=12),
    _blocking_case(b=1, h=1, H=3, W=4),
    _blocking_case(B=2, C=1),
    _blocking_case(H=4, W=4, b=4, h=2),
    _blocking_case(C=3, H=12, W=8, b=4, h=2),
]
GRID = {
    "blocks_from_map": _BLOCKING_GRID,
    "gather_windows": _BLOCKING_GRID,
    "scatter_windows": _BLOCKING_GRID,
    "softmax_backward": [
        _softmax_case(),
        _softmax_case(lead=()),
        _softmax_case(lead=(2, 3)),
        _softmax_case(masked=True),
        _softmax_case(n=1),
        _softmax_case(scale=30.0),
    ],
    "relpos": [
        _relpos_case(),
        _relpos_case(lead=(2, 3)),
        _relpos_case(h=0),
        _relpos_case(b=4, h=2, d=1),
        _relpos_case(b=1, h=2),
        _relpos_case(b=3, h=1, d=2, lead=(2,)),
    ],
    "bottleneck": [
        _bottleneck_case(),
        _bottleneck_case(heads=1),
        _bottleneck_case(h=0),
        _bottleneck_case(H=4, W=8, b=4, h=2),
    ],
}


def _blocking_properties(c):
    return {
        "halo_size = 0": c["h"] == 0,
        "halo_size > 0": c["h"] > 0,
        "halo_size >= block_size": c["h"] >= c["b"],
        "block_size = 1": c["b"] == 1,
        "non-square map": c["H"] != c["W"],
        "more than one image": c["B"] > 1,
        "more than one channel": c["C"] > 1,
        "one block": c["H"] == c["b"] and c["W"] == c["b"],
        "overlapping windows": c["h"] > 0 and (c["H"] > c["b"] or c["W"] > c["b"]),
    }


def _softmax_properties(c):
    return {
        "masked entries (-inf logits, p = 0)": c["masked"],
        "no leading axes": not c["lead"],
        "more than one leading axis": len(c["lead"]) > 1,
        "rows of length 1": c["n"] == 1,
        "large logits": c["scale"] > 10,
    }


def _relpos_properties(c):
    return {
        "leading axes": bool(c["lead"]),
        "halo_size = 0": c["h"] == 0,
        "halo_size > block_size": c["h"] > c["b"],
        "block_size = 1": c["b"] == 1,
        "d = 1": c["d"] == 1,
        "block_size > 2": c["b"] > 2,
    }


def _bottleneck_properties(c):
    return {
        "one head": c["heads"] == 1,
        "halo_size = 0": c["h"] == 0,
        "non-square map": c["H"] != c["W"],
    }


PROPERTIES = {
    "blocks_from_map": _blocking_properties,
    "gather_windows": _blocking_properties,
    "scatter_windows": _blocking_properties,
    "softmax_backward": _softmax_properties,
    "relpos": _relpos_properties,
    "bottleneck": _bottleneck_properties,
}

# A hint per property the diagnosis may name: where that property usually breaks code.
HINTS = {
    "halo_size = 0": "with h = 0, slices like a[h:-h] are empty: use a[h:h + H] instead",
    "halo_size > 0": "the halo: windows start h pixels above and left of their block",
    "halo_size >= block_size": "with h >= b a pixel lies in more than 4 windows: add every copy "
    "(+=), never assign, and do not assume a window only reaches its neighbours",
    "halo_size > block_size": "table rows: j - p + win - 1 runs from win - b to 2 win - 2",
    "block_size = 1": "b = 1: every pixel is its own block; check reshapes that assume b > 1",
    "non-square map": "H and W swapped somewhere: the blocks per row are W / b, not H / b",
    "more than one image": "the batch axis: keep B first and never sum over it by accident",
    "more than one channel": "channels last in blocks and windows, (B, N, P, C), first in maps",
    "one block": "a single block still has a padded window around it",
    "overlapping windows": "a pixel read by several windows gets the sum of their gradients: "
    "add with +=, never assign",
    "masked entries (-inf logits, p = 0)": "0 * -inf is NaN: compute with p, never with z",
    "no leading axes": "sum over axis=-1 with keepdims=True, whatever the leading axes",
    "more than one leading axis": "sum over axis=-1 with keepdims=True, not over axis 1",
    "rows of length 1": "a softmax over one entry is constant: dz must be 0",
    "large logits": "dz needs only p and dp: no exp of the logits in the backward",
    "leading axes": "matrix products and picks must broadcast over the leading axes (use ...)",
    "d = 1": "keep the channel axis even when d = 1 (no squeeze)",
    "block_size > 2": "the query's row is p // b and its column p % b",
    "num_heads > 1": "the kv channels are per head [k_0 | v_0 | k_1 | v_1 ...]: reshape to "
    "(B, heads, d + d_v, H, W) before splitting into keys and values",
    "one head": "with one head, check the scale: d = mid // num_heads",
    "d_qk != d_v": "values have d_v channels per head, keys d: split each head at d",
}


# When the diagnosis names no single property: where each function usually goes wrong.
FUNCTION_HINTS = {
    "blocks_from_map": "reshape to (B, C, H/b, b, W/b, b), then order the axes as (B, H/b, W/b, "
    "b, b, C) before the last reshape",
    "gather_windows": "window n starts at padded (n_y b, n_x b); its entries run row-major",
    "scatter_windows": "check the adjoint identity on a tiny case by hand: every window entry goes "
    "back to the pixel it was read from, and entries are added",
    "softmax_backward": "dz = p * (dp - sum(dp * p, axis=-1, keepdims=True)): the correction "
    "term comes from the normalisation",
    "relpos_forward": "table row of key row j_y for query row p_y: j_y - p_y + win - 1",
    "relpos_backward": "sum dB over the other key axis first, put it at the table rows, then "
    "dq = dT^H R^H + dT^W R^W and dR = dT^T q summed over every leading axis",
    "halo_attention_forward": "scale the content logits only; the position logits are added "
    "unscaled",
    "halo_attention_backward": "dS = softmax_backward(dO V^T, A); dK, dV back onto the map by "
    "scatter_windows",
    "bottleneck_forward": "the order is conv1, BN, SiLU, attention, BN, SiLU, conv3, BN, + x, SiLU",
    "bottleneck_backward": "x feeds both branches: dx = (gradient at the sum) + (the branch's dx)",
}


def cases(name):
    """The hypothesis strategy of cases for exercise function `name`."""
    from hypothesis import strategies as st

    seed = st.integers(0, 2**16)
    if name in ("blocks_from_map", "gather_windows", "scatter_windows"):

        @st.composite
        def blocking(draw):
            b = draw(st.integers(1, 4))
            return _blocking_case(
                B=draw(st.integers(1, 2)),
                C=draw(st.integers(1, 3)),
                H=b * draw(st.integers(1, 3)),
                W=b * draw(st.integers(1, 3)),
                b=b,
                h=draw(st.integers(0, 3)),
                seed=draw(seed),
            )

        return blocking()
    if name == "softmax_backward":
        return st.builds(
            _softmax_case,
            lead=st.lists(st.integers(1, 3), max_size=2),
            n=st.integers(1, 7),
            masked=st.booleans(),
            scale=st.sampled_from([1.0, 30.0]),
            seed=seed,
        )
    if name in ("relpos_forward", "relpos_backward"):
        return st.builds(
            _relpos_case,
            lead=st.lists(st.integers(1, 3), max_size=2),
            b=st.integers(1, 4),
            h=st.integers(0, 3),
            d=st.integers(1, 4),
            seed=seed,
        )
    if name in ("halo_attention_forward", "halo_attention_backward"):

        @st.composite
        def attention(draw):
            b = draw(st.integers(1, 4))
            return _attention_case(
                B=draw(st.integers(1, 2)),
                heads=draw(st.integers(1, 3)),
                d=draw(st.integers(1, 4)),
                dv=draw(st.integers(1, 4)),
                H=b * draw(st.integers(1, 3)),
                W=b * draw(st.integers(1, 3)),
                b=b,
                h=draw(st.integers(0, 3)),
                seed=draw(seed),
            )

        return attention()
    if name in ("bottleneck_forward", "bottleneck_backward"):
        return st.builds(
            _bottleneck_case,
            heads=st.sampled_from([1, 2, 4]),
            h=st.integers(0, 2),
            W=st.sampled_from([4, 8]),
            seed=seed,
        )
    raise KeyError(f"no exercise function named {name!r}")


# -- comparing ----------------------------------------------------------------------------------
def _error(actual, expected, label):
    """None when `actual` matches `expected` (RTOL of its largest entry), else what is wrong."""
    if actual is None:
        return f"{label}: got None"
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"{label}: shape {actual.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(actual)):
        return f"{label}: contains NaN or inf"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if err > RTOL * max(scale, 1e-300) and err > 1e-300:
        worst = np.unravel_index(np.argmax(np.abs(actual - expected)), expected.shape)
        return (
            f"{label}: max |yours - halo_ref| = {err:.3g} (largest |halo_ref| {scale:.3g}), "
            f"worst at index {tuple(int(i) for i in worst)}: yours {actual[worst]:.6g}, "
            f"halo_ref {expected[worst]:.6g}"
        )
    return None


def _call(module, fname, *args, **kwargs):
    fn = getattr(module, fname, None)
    if fn is None:
        raise ExerciseFailure(f"{module.__name__} has no function {fname}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as exc:
        raise ExerciseFailure(f"{module.__name__}.{fname} is not written yet ({exc})") from None


# -- running one case ---------------------------------------------------------------------------
def _run_blocking(name, module, c):

    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["B"], c["C"], c["H"], c["W"]))
    b, h = c["b"], c["h"]
    if name == "blocks_from_map":
        return [_error(_call(module, name, x, b), blocking.blocks_from_map(x, b), "blocks")]
    if name == "gather_windows":
        return [_error(_call(module, name, x, b, h), blocking.gather_windows(x, b, h), "windows")]
    w = rng.standard_normal(blocking.gather_windows(x, b, h).shape)
    mine = _call(module, name, w, c["H"], c["W"], b, h)
    problems = [_error(mine, blocking.scatter_windows(w, c["H"], c["W"], b, h), "scattered map")]
    if problems[0] is None or mine is None or np.shape(mine) != x.shape:
        return problems
    lhs, rhs = float(np.sum(blocking.gather_windows(x, b, h) * w)), float(np.sum(x * mine))
    if abs(lhs - rhs) > RTOL * max(abs(lhs), 1.0):
        problems.insert(0, f"not the adjoint of the gather: sum(gather(x) * w) = {lhs:.6g} but "
                        f"sum(x * scatter(w)) = {rhs:.6g}")  # fmt: skip
    return problems


def _run_softmax(name, module, c):

    rng = np.random.default_rng(c["seed"])
    z = c["scale"] * rng.standard_normal(c["lead"] + (c["n"],))
    if c["masked"] and c["n"] > 1:
        z[..., 1::2] = -np.inf  # every other entry masked; entry 0 keeps every row finite
    p, _ = softmax_forward(z)
    dp = rng.standard_normal(p.shape)
    return [_error(_call(module, name, dp, p), softmax_backward(dp, p), "dz")]


def _relpos_inputs(c):
    rng = np.random.default_rng(c["seed"])
    b, h, d = c["b"], c["h"], c["d"]
    R = 2 * (b + 2 * h) - 1
    q = rng.standard_normal(c["lead"] + (b * b, d))
    return q, rng.standard_normal((R, d)), rng.standard_normal((R, d)), rng


def _run_relpos(name, module, c):

    q, th, tw, rng = _relpos_inputs(c)
    b = c["b"]
    bias, cache = relpos_forward(q, th, tw, b)
    out = _call(module, "relpos_forward", q, th, tw, b)
    if not (isinstance(out, tuple) and len(out) == 2):
        return ["relpos_forward must return (bias, cache)"]
    problems = [_error(out[0], bias, "bias")]
    if name == "relpos_forward" or problems[0]:
        return problems
    dbias = rng.standard_normal(bias.shape)
    grads = _call(module, name, dbias, out[1])
    if not (isinstance(grads, tuple) and len(grads) == 3):
        return ["relpos_backward must return (dq, dheight_rel, dwidth_rel)"]
    ref = relpos_backward(dbias, cache)
    return [
        _error(g, r, n)
        for g, r, n in zip(grads, ref, ("dq", "dheight_rel", "dwidth_rel"), strict=True)
    ]


def _attention_inputs(c, rng):
    heads, d, dv, b, h = c["heads"], c["d"], c["dv"], c["b"], c["h"]
    q_map = rng.standard_normal((c["B"], heads * d, c["H"], c["W"]))
    kv_map = rng.standard_normal((c["B"], heads * (d + dv), c["H"], c["W"]))
    R = 2 * (b + 2 * h) - 1
    return q_map, kv_map, 0.5 * rng.standard_normal((R, d)), 0.5 * rng.standard_normal((R, d))


def _run_attention(name, module, c):

    rng = np.random.default_rng(c["seed"])
    arrays = _attention_inputs(c, rng)
    kw = dict(num_heads=c["heads"], block_size=c["b"], halo_size=c["h"], scale=c["d"] ** -0.5)
    out, cache = halo_attention_forward(*arrays, **kw)
    mine = _call(module, "halo_attention_forward", *arrays, **kw)
    if not (isinstance(mine, tuple) and len(mine) == 2):
        return ["halo_attention_forward must return (out, cache)"]
    problems = [_error(mine[0], out, "out")]
    if name == "halo_attention_forward" or problems[0]:
        return problems
    dout = rng.standard_normal(out.shape)
    grads = _call(module, name, dout, mine[1])
    names = ("dq_map", "dkv_map", "dheight_rel", "dwidth_rel")
    if not (isinstance(grads, tuple) and len(grads) == 4):
        return ["halo_attention_backward must return (" + ", ".join(names) + ")"]
    ref = halo_attention_backward(dout, cache)
    return [_error(g, r, n) for g, r, n in zip(grads, ref, names, strict=True)]


def bottleneck_reference(c):
    """halo_ref's HaloBottleneck for case `c` (NumPy backend, float64): (block, x, params)."""

    stage = StageConfig(depth=1, out=c["C"], mid=c["mid"], num_heads=c["heads"], stride=1,
                        block_size=c["b"], halo_size=c["h"])  # fmt: skip
    block = HaloBottleneck(c["C"], stage, 1, act="silu", pad_to_blocks=False, dtype=np.float64,
                           rng=c["seed"], backend="numpy")  # fmt: skip
    rng = np.random.default_rng(c["seed"] + 1)
    for name, value in block.params.items():  # random BN weights too: a zero init hides bugs
        value[...] = rng.uniform(0.5, 1.5, value.shape) if "bn" in name else value
    x = rng.standard_normal((c["B"], c["C"], c["H"], c["W"]))
    return block, x, {k: v.copy() for k, v in block.params.items()}


def _run_bottleneck(name, module, c):
    block, x, params = bottleneck_reference(c)
    out = block.forward(x)
    kw = dict(num_heads=c["heads"], block_size=c["b"], halo_size=c["h"])
    mine = _call(module, "bottleneck_forward", x.copy(), params, **kw)
    if not (isinstance(mine, tuple) and len(mine) == 2):
        return ["bottleneck_forward must return (out, cache)"]
    problems = [_error(mine[0], out, "out")]
    if name == "bottleneck_forward" or problems[0]:
        return problems
    dout = np.random.default_rng(c["seed"] + 2).standard_normal(out.shape)
    dx = block.backward(dout)
    result = _call(module, name, dout, mine[1])
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        return ["bottleneck_backward must return (dx, grads) with grads a dict"]
    problems = [_error(result[0], dx, "dx")]
    for key, ref in block.grads.items():
        problems.append(_error(result[1].get(key), ref, f"grads[{key!r}]"))
    return problems


RUNNERS = {
    "blocks_from_map": (_run_blocking, "blocks_from_map"),
    "gather_windows": (_run_blocking, "gather_windows"),
    "scatter_windows": (_run_blocking, "scatter_windows"),
    "softmax_backward": (_run_softmax, "softmax_backward"),
    "relpos_forward": (_run_relpos, "relpos"),
    "relpos_backward": (_run_relpos, "relpos"),
    "halo_attention_forward": (_run_attention, None),
    "halo_attention_backward": (_run_attention, None),
    "bottleneck_forward": (_run_bottleneck, "bottleneck"),
    "bottleneck_backward": (_run_bottleneck, "bottleneck"),
}


def _describe(case):
    return ", ".join(f"{k}={v}" for k, v in case.items() if k != "seed") + f", seed={case['seed']}"


# -- diagnosis over a grid ----------------------------------------------------------------------
def _grid_diagnosis(name, module):
    """(diagnosis sentence, the one property it names or None) over the fixed grid."""
    run, grid_name = RUNNERS[name]
    if grid_name is None:
        return _attention_diagnosis(name, module)
    grid, props_of = GRID[grid_name], PROPERTIES[grid_name]
    props, failed = {}, set()
    for i, case in enumerate(GRID[grid_name]):
        props[i] = props_of(case)
        try:
            bad = [p for p in run(name, module, case) if p]
        except Exception:  # the learner's code may raise anything: that case fails
            bad = ["raised"]
        if bad:
            failed.add(i)
    if not failed:
        return "every case of the fixed grid passes: the failure needs the drawn shape", None
    if len(failed) == len(grid):
        return "every case of the fixed grid fails: the error is on a path every input takes", None
    return _named(diagnose(props, failed))


def _named(sentence):
    """The diagnosis and the single property it names (for the hint), if it names one."""
    prefix = "the failures are exactly the configurations with "
    if sentence.startswith(prefix) and " / " not in sentence and " and " not in sentence:
        return sentence, sentence[len(prefix) :]
    return sentence, None


def _attention_diagnosis(name, module):
    """The learner's attention core inside a whole layer, through the verifier and the golden
    vectors: the configurations it supports (border='zeros', stride 1, no scale_pos_embed)."""

    def supports(config):
        if config["border"] != "zeros" or config["stride"] != 1 or config["scale_pos_embed"]:
            return "the exercise covers border='zeros', stride 1, scale_pos_embed=False"
        return None

    def run(config, x, weights, dout):
        q_map, q_cache = conv1x1_forward(x, weights["q.weight"], weights.get("q.bias"))
        kv_map, kv_cache = conv1x1_forward(x, weights["kv.weight"], weights.get("kv.bias"))
        rel = weights["pos_embed.height_rel"], weights["pos_embed.width_rel"]
        kw = dict(num_heads=config["num_heads"], block_size=config["block_size"],
                  halo_size=config["halo_size"], scale=config["dim_head"] ** -0.5)  # fmt: skip
        out, cache = module.halo_attention_forward(q_map, kv_map, *rel, **kw)
        if name == "halo_attention_forward":
            return out, None, None
        dq, dkv, dh, dw = module.halo_attention_backward(dout, cache)
        dxq, dwq, dbq = conv1x1_backward(dq, q_cache)
        dxkv, dwkv, dbkv = conv1x1_backward(dkv, kv_cache)
        grads = {"q.weight": dwq, "kv.weight": dwkv, "pos_embed.height_rel": dh,
                 "pos_embed.width_rel": dw}  # fmt: skip
        if "q.bias" in weights:
            grads.update({"q.bias": dbq, "kv.bias": dbkv})
        return out, dxq + dxkv, grads

    vectors = _golden_vectors()
    report = verify(Adapter(f"your {name}", run, supports), vectors)
    return _named(report.diagnosis())


@functools.cache
def _golden_vectors():

    return tuple(generate_vectors(dtypes=("float64",), models=()))


_DIAGNOSES: dict = {}


def check(name, module, case):
    """Run the learner's `name` from `module` on `case`; raise `ExerciseFailure` if it is wrong."""
    __tracebackhide__ = True  # pytest: show the message, not this function's code
    run, _ = RUNNERS[name]
    problems = [p for p in run(name, module, case) if p]
    if not problems:
        return
    key = (name, id(getattr(module, name, None)))
    if key not in _DIAGNOSES:  # hypothesis retries many cases while shrinking: diagnose once
        try:
            _DIAGNOSES[key] = _grid_diagnosis(name, module)
        except ExerciseFailure:
            raise
        except Exception as exc:  # a diagnosis must never hide the failure itself
            _DIAGNOSES[key] = (f"(no diagnosis: {type(exc).__name__}: {exc})", None)
    sentence, prop = _DIAGNOSES[key]
    lines = [f"{module.__name__}.{name} disagrees with halo_ref for {_describe(case)}:"]
    lines += ["  " + p for p in problems[:4]]
    lines.append(f"diagnosis: {sentence}")
    lines.append(f"hint: {HINTS.get(prop) or FUNCTION_HINTS[name]}")
    raise ExerciseFailure("\n".join(lines))
