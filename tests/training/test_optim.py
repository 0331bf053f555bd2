"""Optimisers, the learning-rate schedule and gradient clipping.

The update rules are checked against PyTorch's `torch.optim` step by step in float64 (when
torch is installed), and against closed forms that need nothing but NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from halo_ref import HaloRefError
from halo_ref.training.optim import (
    SGD,
    AdamW,
    clip_grad_norm,
    cosine_lr,
    global_norm,
    make_optimizer,
)


def _problem(seed=0):
    """Parameters (a 2-D weight that decays and a 1-D bias that does not) and 5 gradient sets."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    return params, grads


@pytest.mark.torch
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("sgd", dict(momentum=0.9, weight_decay=1e-2)),
        ("nesterov", dict(momentum=0.8, weight_decay=1e-2)),
        ("adamw", dict(weight_decay=0.05)),
    ],
)
def test_updates_match_torch_optim(torch, name, kwargs):
    params, grads = _problem()
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    groups = [
        {"params": [tp["w"]], "weight_decay": kwargs["weight_decay"]},
        {"params": [tp["b"]], "weight_decay": 0.0},  # halo_ref never decays 1-D parameters
    ]
    if name == "adamw":
        topt = torch.optim.AdamW(groups, lr=0.1)
    else:
        topt = torch.optim.SGD(groups, lr=0.1, momentum=kwargs["momentum"],
                               nesterov=name == "nesterov")  # fmt: skip
    ours = make_optimizer(name, params, **kwargs)
    for step, g in enumerate(grads):
        lr = 0.1 / (1 + step)  # a changing rate, as under a schedule
        for group in topt.param_groups:
            group["lr"] = lr
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
        ours.step({k: v.copy() for k, v in g.items()}, lr)
        for k in params:
            # same float64 formulas, possibly in another order: a few ulps over 5 steps, so
            # 1e-13 relative is a margin of ~100x; a wrong rule is off by O(lr * g) ~ 1e-2
            np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-13, atol=1e-15)


def test_sgd_closed_form_without_momentum_and_with_decay():
    p = {"w": np.array([[2.0, -1.0]]), "b": np.array([3.0])}
    g = {"w": np.array([[0.5, 0.5]]), "b": np.array([1.0])}
    SGD(p, momentum=0.0, weight_decay=0.1).step(g, lr=0.5)
    # w -= 0.5 * (g + 0.1 w); b (1-D, no decay) -= 0.5 * g. Exact in binary: tolerance 0
    assert np.array_equal(p["w"], [[2.0 - 0.5 * (0.5 + 0.2), -1.0 - 0.5 * (0.5 - 0.1)]])
    assert np.array_equal(p["b"], [2.5])


def test_adamw_first_step_moves_each_weight_by_lr():
    # after bias correction the first Adam step is lr * g / (|g| + eps): lr * sign(g)
    p = {"w": np.zeros((2, 2))}
    AdamW(p, weight_decay=0.0, eps=0.0).step({"w": np.array([[3.0, -0.2], [1e-3, -7.0]])}, 0.01)
    # m_hat / sqrt(v_hat) = g / |g| up to rounding of the squares and the root: 1e-15 relative
    np.testing.assert_allclose(p["w"], -0.01 * np.array([[1, -1], [1, -1]]), rtol=1e-15)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adamw"])
def test_state_dict_round_trip_continues_bit_identically(name):
    params_a, grads = _problem(1)
    params_b = {k: v.copy() for k, v in params_a.items()}
    a = make_optimizer(name, params_a, weight_decay=0.01)
    for g in grads:
        a.step(g, 0.05)
    b = make_optimizer(name, params_b, weight_decay=0.01)
    for g in grads[:2]:
        b.step(g, 0.05)
    state = b.state_dict()
    params_c = {k: v.copy() for k, v in params_b.items()}
    c = make_optimizer(name, params_c, weight_decay=0.01)
    c.load_state_dict(state)
    for g in grads[2:]:
        c.step(g, 0.05)
    for k in params_a:
        assert np.array_equal(params_a[k], params_c[k])  # a resumed optimiser is exact


def test_optimizer_state_for_another_model_is_refused():
    a = SGD({"w": np.zeros((2, 2))})
    with pytest.raises(HaloRefError, match="missing .*'momentum/v'.*unexpected .*'momentum/w'"):
        SGD({"v": np.zeros((2, 2))}).load_state_dict(a.state_dict())
    bad = {**a.state_dict(), "momentum/w": np.zeros(3)}
    with pytest.raises(HaloRefError, match=r"momentum/w has shape \(3,\), expected \(2, 2\)"):
        a.load_state_dict(bad)


def test_bad_hyperparameters_are_one_line_errors():
    with pytest.raises(HaloRefError, match="momentum must be in"):
        SGD({}, momentum=1.0)
    with pytest.raises(HaloRefError, match="--optimizer 'adam' is not known"):
        make_optimizer("adam", {}, weight_decay=0)
    with pytest.raises(HaloRefError, match="weight_decay must be >= 0"):
        AdamW({}, weight_decay=-1)


def test_cosine_schedule_warms_up_linearly_then_decays_to_min():
    kw = dict(total_steps=110, base_lr=1.0, warmup_steps=10, min_lr=0.1)
    assert cosine_lr(0, **kw) == 0.1  # (0 + 1) / 10: the first step already learns
    assert cosine_lr(9, **kw) == 1.0
    assert cosine_lr(10, **kw) == 1.0
    # half-way through the decay the cosine is 0: the mean of base and min (float rounding only)
    assert math.isclose(cosine_lr(60, **kw), 0.55, rel_tol=1e-15)
    assert math.isclose(cosine_lr(110, **kw), 0.1, rel_tol=1e-15)
    rates = [cosine_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_clip_grad_norm_scales_all_gradients_together():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(g, 10.0) == 5.0 and g["a"][0] == 3.0  # below the limit: unchanged
    assert clip_grad_norm(g, 1.0) == 5.0
    # the 1e-6 guard in the divisor shrinks the result by 2e-7 relative: 1e-6 tolerance
    assert math.isclose(global_norm(g), 1.0, rel_tol=1e-6)
    assert math.isclose(g["a"][0] / g["b"][0, 0], 0.75, rel_tol=1e-15)  # direction kept
    nan = {"a": np.array([np.nan, 1.0])}
    assert math.isnan(clip_grad_norm(nan, 1.0)) and nan["a"][1] == 1.0  # reported, not hidden
