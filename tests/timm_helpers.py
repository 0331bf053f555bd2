"""Running timm's HaloNets beside halo_ref's on the same weights and input (tests only).

`compare_with_timm` builds timm's model through the torchvision stand-in (the `timm` fixture),
randomises its BatchNorm layers, copies its state dict into halo_ref's twin and returns the
relative error of the logits, dx and every parameter gradient against timm in float64.
"""

from __future__ import annotations

import numpy as np

from halo_ref.models.timm_byobnet import timm_halonet
from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward

# Small blocks let the real architectures run on 64x64 images (timm has no padding, so every
# attention map must be a multiple of its block). Stage-level settings (halonet50ts' stage 2,
# blocks of 8) stay; haloregnetz_b keeps an odd block (1) so that its stride-2 attention still
# pools, as with its real block of 7.
SMALL = {
    "halonet26t": dict(block_size=2, halo_size=1),
    "sehalonet33ts": dict(block_size=2, halo_size=1),
    "halonet50ts": dict(block_size=2, halo_size=1),
    "eca_halonext26ts": dict(block_size=2, halo_size=1, dim_head=16),
    "halonet_h1": dict(block_size=2, halo_size=1),
    "haloregnetz_b": dict(block_size=1, halo_size=1, qk_ratio=0.33),
    # every stage sets its own attention arguments (blocks of 8, halo 3), which a model-wide
    # setting does not replace, so the image must be 128: its third stage's map is 8x8, and the
    # bottleneck attention of the last is built for 4x4 maps (img_size)
    "halo2botnet50ts_256": {},
    "lamhalobotnet50ts_256": {},
}
# halonet_h1 (19 attention blocks, no convolution) saturates on 64x64 images: its float64
# gradients underflow to 1e-153 in evaluation mode. 128x128 keeps it well conditioned.
AT_128 = ("halonet_h1", "halo2botnet50ts_256", "lamhalobotnet50ts_256")
SIZE = {name: 128 if name in AT_128 else 64 for name in SMALL}
# create_model arguments besides self_attn_kwargs at the small size
EXTRA = {name: dict(img_size=128) for name in ("halo2botnet50ts_256", "lamhalobotnet50ts_256")}


def randomise_batchnorm(torch, model, seed, x):
    """Random BatchNorm scales and shifts (with timm's initial ones, the last scale of every
    block is zero and every residual branch is switched off), and running statistics set to
    the statistics of `x` itself: running statistics drawn at random leave 30 blocks
    unnormalised in evaluation mode, and the network becomes so ill-conditioned that timm's
    own float32 gradients differ from its float64 ones by 10x."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
            m.momentum = 1.0  # the next training-mode forward sets running = batch statistics
        model.train()(x)
    for m in norms:
        m.momentum = 0.1


def relative(a, b):
    """max |a - b| / max |b|, in float64."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def run_timm(torch, model, x, labels):
    """timm's (logits, dx, parameter gradients) of the mean cross-entropy, as NumPy."""
    xt = torch.tensor(x, requires_grad=True)
    logits = model(xt)
    torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).backward()
    grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
    return logits.detach().numpy(), xt.grad.numpy(), grads


def run_ours(model, x, labels):
    """halo_ref's (logits, dx, parameter gradients) of the mean cross-entropy."""
    logits = model.forward(x)
    _, cache = cross_entropy_forward(logits, labels)
    dx = model.backward(cross_entropy_backward(cache))
    return logits, dx, model.grads


def errors(result, truth):
    """Relative error of logits, dx and every parameter gradient of `result` against `truth`.

    Some gradients are zero in exact arithmetic: haloregnetz_b's blocks end without an
    activation and feed only convolutions that train-mode BatchNorm follows, which removes any
    constant shift, so the last BatchNorm's bias gets no gradient; both implementations then
    return rounding noise (about 1e-17 of the largest gradient), and max|a - e| / max|e| of two
    noises is meaningless. An array whose truth is below 1e-13 of the largest gradient counts
    as zero, and its error is measured against that largest gradient instead.
    """
    found = {"logits": relative(result[0], truth[0]), "dx": relative(result[1], truth[1])}
    assert set(result[2]) == set(truth[2])
    largest = max(float(np.abs(g).max()) for g in truth[2].values())
    for k, g in truth[2].items():
        if np.abs(g).max() < 1e-13 * largest:
            found[k] = float(np.abs(np.asarray(result[2][k], np.float64) - g).max() / largest)
        else:
            found[k] = relative(result[2][k], g)
    return found


def compare_with_timm(timm, torch, name, *, size, dtype, training, batch=2, small=True):
    """halo_ref and timm on the same weights and input, both in `dtype`, against timm in
    float64: returns (halo_ref's errors, timm's own errors), each a dict array -> error.

    In float64 timm's own errors are zero by definition (an empty dict); the running
    statistics after a training step are compared too."""
    kwargs = {"self_attn_kwargs": SMALL[name], **EXTRA.get(name, {})} if small else {}
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 3, size, size))
    labels = rng.integers(0, 1000, batch)
    torch.manual_seed(0)
    truth_model = timm.create_model(name, **kwargs).double()
    randomise_batchnorm(torch, truth_model, 1, torch.tensor(x))
    state = truth_model.state_dict()
    truth_model.train(training)
    truth = run_timm(torch, truth_model, x, labels)

    ours = timm_halonet(name, dtype=np.dtype(dtype).type, **kwargs)
    ours.load_state_dict(state)
    ours.train(training)
    ours_errors = errors(run_ours(ours, x.astype(dtype), labels), truth)
    if dtype == "float64":
        if training:
            for key, b in truth_model.named_buffers():
                if "running" in key:
                    ours_errors[key] = relative(ours.buffers[key], b.numpy())
        return ours_errors, {}
    theirs = timm.create_model(name, **kwargs)
    theirs.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    theirs.train(training)
    return ours_errors, errors(run_timm(torch, theirs, x.astype(dtype), labels), truth)


def assert_layer_matches_torch(torch, ours, theirs, x, rng):
    """One float64 layer of halo_ref and its torch counterpart (already holding the same
    weights and mode) on input x with a random dout: output, dx and every parameter gradient
    agree to 1e-12 absolute (float64 rounding on O(1) values; a wrong channel or row order errs
    by O(1))."""
    out = ours.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = ours.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    out_t = theirs(xt)
    out_t.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-12)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=0, atol=1e-12)
