"""halo_ref.verification.torch_side: halo_ref against PyTorch, layer by layer and model by model.

timm's `HaloAttn` with the same weights as `HaloAttention`: outputs, dx and weight gradients.

The HaloNets against their PyTorch twins (torch.nn layers + timm's HaloAttn, built by
`torch_twin` with the same names and weights). For the tiny CIFAR model and a reduced member of
the H family (with max pooling, the 7x7 stem, a final 1x1 conv and maps padded to whole
blocks), in train and eval modes: logits, loss,
the input gradient, every parameter gradient and the updated running statistics agree, and
weights move both ways through state dicts.

Tolerances, relative to the largest entry of each array: float64 1e-9 and float32 1e-4 (the
issue's targets). Both sides compute the same sums in different orders, so float64 agrees to
~1e-13 and float32 to ~1e-6 here; BatchNorm in train mode divides by batch standard deviations,
which can amplify rounding by a few orders of magnitude on small batches, hence the margin.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import perturb, reduced_config

from halo_ref import HaloAttention
from halo_ref.models import HaloNet, halonet
from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward
from halo_ref.verification.testing import assert_close

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def side(torch, timm_halo_attn):
    """halo_ref.verification.torch_side, imported once torch (and timm) are known to be there."""
    from halo_ref.verification import torch_side

    return torch_side


RTOL = {np.float64: 1e-9, np.float32: 1e-4}


def build(kind, dtype):
    """The model under test with every parameter moved off its initial value."""
    rng = np.random.default_rng(0)
    if kind == "tiny":
        model, shape = halonet("tiny", dtype=dtype, rng=0), (4, 3, 32, 32)
    else:  # reduced H3: 7x7 stem + max pool, b=10, 5x5 maps padded to 10x10, a df conv
        cfg = dataclasses.replace(reduced_config("h3", image=40), final_chs=48)
        model, shape = HaloNet(cfg, num_classes=7, in_chans=3, dtype=dtype, rng=0), (3, 3, 40, 40)
    perturb(model, rng, scale=0.1)
    x = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, model.num_classes, shape[0])
    return model, x, labels


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["tiny", "reduced-h"])
def test_logits_loss_and_gradients_match(torch, side, kind, training, dtype):
    torch.set_num_threads(1)  # deterministic float64 sums
    model, x, labels = build(kind, dtype)
    if not training:
        model.forward(x)  # move the running statistics away from 0 / 1 first
        model.eval()
    twin = side.torch_twin(model)
    rtol = RTOL[dtype]

    logits = model.forward(x)
    loss, cache = cross_entropy_forward(logits, labels, label_smoothing=0.1)
    dx = model.backward(cross_entropy_backward(cache))

    xt = torch.from_numpy(x).requires_grad_(True)
    logits_t = twin(xt)
    loss_t = torch.nn.functional.cross_entropy(
        logits_t, torch.from_numpy(labels), label_smoothing=0.1
    )
    loss_t.backward()

    assert_close(logits, logits_t.detach().numpy(), rtol=rtol, name="logits")
    assert abs(loss - loss_t.item()) <= rtol * abs(loss_t.item()), (loss, loss_t.item())
    assert_close(dx, xt.grad.numpy(), rtol=rtol, name="dx")
    grads = model.grads
    twin_grads = {k: p.grad for k, p in twin.named_parameters()}
    assert sorted(grads) == sorted(twin_grads)
    for name, g in twin_grads.items():
        assert_close(grads[name], g.numpy(), rtol=rtol, name=name)
    twin_state = twin.state_dict()
    for name, value in model.state_dict().items():  # running statistics after the step
        assert_close(value, twin_state[name].numpy(), rtol=rtol, name=name)


def test_weights_move_both_ways(torch, side):
    model, x, _ = build("reduced-h", np.float64)
    twin = side.torch_twin(model)
    with torch.no_grad():  # change the twin's weights and statistics, then copy them back
        for t in twin.state_dict().values():
            if t.is_floating_point():
                t.mul_(1.5).add_(0.01)
    other = HaloNet(model.config, num_classes=7, in_chans=3, dtype=np.float64, rng=1)
    other.load_state_dict(twin.state_dict())
    other.eval(), twin.eval()
    out = other.forward(x)
    ref = twin(torch.from_numpy(x)).detach().numpy()
    assert_close(out, ref, rtol=1e-9, name="logits after loading torch weights")
    twin2 = side.torch_twin(other.eval())
    for k, v in side.to_torch_state(other.state_dict()).items():
        assert torch.equal(twin2.state_dict()[k], v), k  # a copy, bit for bit


# -- timm's HaloAttn ------------------------------------------------------------------------------
TIMM_CONFIGS = [
    # block, halo, stride, avg_down, qkv_bias, scale_pos_embed, dim_head, H, W
    (4, 1, 1, False, False, False, None, 8, 8),
    (4, 0, 1, False, True, False, None, 8, 12),
    (2, 3, 1, False, False, True, None, 6, 4),  # halo > block
    (8, 3, 1, False, False, False, None, 16, 16),  # timm's defaults
    (8, 2, 2, False, True, False, None, 16, 8),  # queries subsampled
    (4, 2, 2, True, False, True, None, 8, 8),  # avg_down: full-resolution attention + pool
    (3, 1, 2, False, False, False, None, 6, 12),  # odd block: pooled
    (6, 2, 2, False, True, True, 5, 12, 6),  # explicit dim_head
]
TIMM_IDS = [f"b{c[0]}-h{c[1]}-s{c[2]}{'-avg' if c[3] else ''}{'-bias' if c[4] else ''}"
       f"{'-spe' if c[5] else ''}{'-dh' if c[6] else ''}" for c in TIMM_CONFIGS]  # fmt: skip

# float64: both sides compute the same sums in different orders (timm uses unfold and a
# pad-and-reshape trick for the relative logits); 1e-10 leaves room for accumulated round-off.
# float32: a few ulps of 6e-8 per operation over sums of ~100 terms stay well below 1e-5.
TOLERANCES = {np.float64: 1e-10, np.float32: 1e-5}


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", TIMM_CONFIGS, ids=TIMM_IDS)
def test_matches_timm(config, dtype, torch, side):
    b, h, stride, avg_down, bias, spe, dim_head, H, W = config
    layer = HaloAttention(
        12, 16, num_heads=4, dim_head=dim_head, block_size=b, halo_size=h, stride=stride,
        avg_down=avg_down, qkv_bias=bias, scale_pos_embed=spe, dtype=dtype, rng=b * 10 + h,
    )  # fmt: skip
    module = side.timm_halo_attn_from(layer)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, H, W)).astype(dtype)
    x_t = torch.tensor(x, requires_grad=True)
    out_t = module(x_t)
    dout = rng.standard_normal(tuple(out_t.shape)).astype(dtype)
    out_t.backward(torch.from_numpy(dout))

    out = layer.forward(x)
    dx = layer.backward(dout)
    tol = TOLERANCES[dtype]
    assert rel(out, out_t.detach().numpy()) <= tol
    assert rel(dx, x_t.grad.numpy()) <= tol
    timm_grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    assert set(timm_grads) == set(layer.grads)
    for key, g in timm_grads.items():
        assert rel(layer.grads[key], g) <= tol, key


def test_timm_weights_load_into_halo_ref(torch, timm_halo_attn):
    """A fresh timm module's state dict (tensors) loads directly, and forwards agree."""
    module = timm_halo_attn.HaloAttn(16, 16, num_heads=2, block_size=4, halo_size=2).double()
    layer = HaloAttention(16, 16, num_heads=2, block_size=4, halo_size=2, dtype=np.float64)
    layer.load_state_dict(module.state_dict())
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8))
    expected = module(torch.from_numpy(x)).detach().numpy()
    assert rel(layer.forward(x), expected) <= 1e-10  # float64, as above
