"""HaloNet models: configurations and parameter counts, the whole-network gradient check,
state dicts, modes, and one-line errors for bad input.

The finite-difference checks use `check_gradients`' defaults (rtol 1e-7, eps 1e-6, float64;
see halo_ref/testing.py for why). The H0-H7 forward passes at paper size are slow (minutes in
all): they are marked slow; `python benchmarks/bench_model.py --family` times them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import perturb, reduced_config

from halo_ref import HaloRefError
from halo_ref.models import CONFIGS, NAMES, PAPER_TABLE, HaloNet, StageConfig, count_params, halonet
from halo_ref.nn.functional import cross_entropy_backward, cross_entropy_forward
from halo_ref.verification.testing import assert_close, check_gradients

# Exact counts (1000 classes for h*, 10 for micro/tiny): any change to a configuration or a
# layer's parameters shows up here, and must then be explained in docs/models.md.
EXPECTED_PARAMS = {
    "micro": 20_234,
    "tiny28": 192_474,
    "tiny": 337_882,
    "tiny64": 340_418,
    "h0": 5_502_248,
    "h1": 8_101_352,
    "h2": 9_405_608,
    "h3": 11_842_792,
    "h4": 19_103_464,
    "h5": 30_718_952,
    "h6": 43_458_280,
    "h7": 67_434_728,
}


# The finite-difference checks run the model 2 x (number of parameter tensors) times. They use
# the NumPy backend, 3x faster than Numba's at batch 2 in float64; the two backends are checked
# against each other in tests/attention/test_kernels.py and tests/nn/, and the PyTorch twin
# tests run the default backend.
NUMPY = "numpy"


# -- configurations ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    model = halonet(name, num_classes=1000 if name.startswith("h") else 10, rng=0)
    assert count_params(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("row", PAPER_TABLE, ids=[r[0] for r in PAPER_TABLE])
def test_h_family_within_ten_percent_of_paper(row):
    name, *_, paper_millions, _ = row
    ratio = EXPECTED_PARAMS[name] / (paper_millions * 1e6)
    # the target is 10%; the paper rounds to 0.1M, so 0.5% is what we actually get
    assert abs(ratio - 1) < 0.005, ratio


@pytest.mark.parametrize(
    "name, size, chans", [("micro", 8, 1), ("tiny28", 28, 1), ("tiny", 32, 3), ("tiny64", 64, 3)]
)
def test_small_models_fit_their_image_size_with_attention_in_every_block(name, size, chans):
    m = halonet(name, in_chans=chans)
    assert m.config.image_size == size and size % m.input_multiple == 0  # no padding needed
    assert 10_000 <= count_params(m) < 1_000_000
    assert m.forward(np.zeros((2, chans, size, size), np.float32)).shape == (2, 10)
    # attention in most blocks: every residual block of these models has a halo attention
    blocks = [b for stage in m.stages for b in stage]
    assert all(type(b.attn).__name__ == "HaloAttention" for b in blocks)


def test_stage_widths_follow_the_documented_reading_of_rb_and_rv():
    """rb scales the block outputs (64..512) x rb; rv scales the attention's values."""
    h5 = halonet("h5", num_classes=1000)
    block = h5.stages["2"]["0"]
    assert block.conv1.conv.params["weight"].shape == (256, 256, 1, 1)  # 128*rb in, mid 256 out
    assert block.attn.dim_out == 640 and block.attn.dim_head_qk == 32  # 256 * 2.5; 256 / 8
    assert block.conv3.conv.params["weight"].shape == (512, 640, 1, 1)  # 256 * rb = 512
    assert h5.final_conv.conv.params["weight"].shape == (1536, 1024, 1, 1)  # df


# -- gradients --------------------------------------------------------------------------------
def model_loss_check(model, x, labels, rng, smoothing=0.1):
    """FD-check d loss / d x and d loss / d every parameter of a float64 model."""
    logits = model.forward(x)
    loss, cache = cross_entropy_forward(logits, labels, smoothing)
    dx = model.backward(cross_entropy_backward(cache))
    grads = {"x": dx, **model.grads}
    arrays = {"x": x, **model.params}
    assert sorted(grads) == sorted(arrays)

    def f():
        return cross_entropy_forward(model.forward(x), labels, smoothing)[0]

    return check_gradients(f, arrays, grads, rng=rng)


def test_tiny_model_gradients_train_mode():
    """Whole tiny model, BN in train mode: every parameter tensor along a random direction
    (which checks all its entries at once, so a random subset of entries is included)."""
    rng = np.random.default_rng(0)
    model = halonet("tiny", dtype=np.float64, rng=0, backend=NUMPY)
    perturb(model, rng)
    x = rng.standard_normal((2, 3, 32, 32))
    errors = model_loss_check(model, x, np.array([3, 8]), rng)
    assert len(errors) == len(model.params) + 1


def test_micro_model_gradients_eval_mode():
    rng = np.random.default_rng(1)
    model = halonet("micro", in_chans=1, dtype=np.float64, rng=1, backend=NUMPY)
    perturb(model, rng)
    model.forward(rng.standard_normal((4, 1, 8, 8)))  # move the running statistics
    model.eval()
    model_loss_check(model, rng.standard_normal((3, 1, 8, 8)), np.array([0, 9, 4]), rng)


def test_padded_h_family_member_gradients():
    """A reduced H model whose maps need padding to whole blocks (as H7's do).

    Without the stem's max pool: among thousands of 3x3 windows some hold two values within
    1e-6 of each other, where max is not differentiable and finite differences straddle the
    kink (max pooling is checked on its own in tests/nn/, and in the PyTorch twin tests).
    """
    rng = np.random.default_rng(2)
    cfg = reduced_config(pool=False)
    model = HaloNet(cfg, num_classes=5, in_chans=3, dtype=np.float64, rng=2, backend="numpy")
    perturb(model, rng)
    assert model.input_multiple == 1
    x = rng.standard_normal((2, 3, 40, 40))
    model_loss_check(model, x, np.array([1, 4]), rng)
    model.eval()
    model_loss_check(model, x[:1], np.array([2]), rng)


def test_padding_equals_zero_border():
    """Padding a map to whole blocks changes nothing inside it: a block whose map is already
    blockable gives the same output as the same block forced through the padded path."""
    rng = np.random.default_rng(3)
    st = StageConfig(depth=1, out=8, mid=8, num_heads=2, stride=1, block_size=4, halo_size=1)
    cfg = dataclasses.replace(CONFIGS["micro"], stages=(st,), pad_to_blocks=True)
    model = HaloNet(cfg, num_classes=3, in_chans=1, dtype=np.float64, rng=3).eval()
    x = rng.standard_normal((1, 1, 6, 7))  # not a multiple of 4: padded to 8x8
    out = model.forward(x)
    # the same maths, with the map padded by hand: zeros beyond the image act as zero keys
    block = model.stages["0"]["0"]
    x = model.stem.forward(x)
    y = block.conv1.forward(x)
    big = np.zeros((1, 8, 8, 8))
    big[:, :, :6, :7] = y
    att = block.attn.forward(big)[:, :, :6, :7]
    z = block.act.forward(
        block.conv3.forward(block.post_attn.forward(att)) + block.shortcut.forward(x)
    )
    logits = model.fc.forward(model.pool.forward(z))
    assert_close(out, logits, rtol=1e-14, name="padded block")  # same operations, same order


# -- state, modes ------------------------------------------------------------------------------
def test_state_dict_round_trip_and_modes():
    rng = np.random.default_rng(4)
    a, b = halonet("micro", in_chans=1, rng=0), halonet("micro", in_chans=1, rng=1)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    a.forward(x)  # train mode: running statistics move
    state = a.state_dict()
    assert "stem.conv1.bn.running_var" in state and "stem.conv1.bn.running_var" not in a.params
    b.load_state_dict(state)
    a.eval(), b.eval()
    assert np.array_equal(a.forward(x), b.forward(x))  # identical weights, identical arithmetic
    # eval mode: each image's logits do not depend on the rest of the batch
    assert_close(a.forward(x[:3]), a.forward(x)[:3], rtol=1e-5, name="eval batch")  # float32
    with pytest.raises(HaloRefError, match="missing key"):
        b.load_state_dict({k: v for k, v in state.items() if "running_mean" not in k})


def test_a_state_of_another_naming_gets_a_short_message():
    # keys saved with a "module." prefix (DataParallel's habit): the message once listed every
    # expected key, 2.9 KB on one line; now counts and the first three of each side
    model = halonet("tiny", rng=0)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    with pytest.raises(HaloRefError) as info:
        model.load_state_dict(state)
    message, first = str(info.value), sorted(model.state_dict())[:3]
    assert f"missing key(s) {first[:3]}"[:-1] + f", ...] ({len(state)} in all)" in message
    assert "unexpected key(s) ['module." in message and len(message) < 500


# -- bad input ---------------------------------------------------------------------------------
def one_line(exc_info):
    assert "\n" not in str(exc_info.value)


def test_bad_input_gives_one_line_errors():
    tiny = halonet("tiny", rng=0)
    with pytest.raises(HaloRefError, match="1 channels.*expects 3") as e:
        tiny.forward(np.zeros((2, 1, 32, 32), np.float32))
    one_line(e)
    with pytest.raises(HaloRefError, match="multiples of 32.*64x64") as e:
        tiny.forward(np.zeros((2, 3, 48, 40), np.float32))
    one_line(e)
    with pytest.raises(HaloRefError, match="dtype float64"):
        tiny.forward(np.zeros((2, 3, 32, 32)))
    with pytest.raises(HaloRefError, match="4-D"):
        tiny.forward(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(HaloRefError, match="name='h8'"):
        halonet("h8")
    with pytest.raises(HaloRefError, match="num_classes"):
        halonet("micro", num_classes=0)
    logits = tiny.forward(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(HaloRefError, match="out of range for 10 classes") as e:
        cross_entropy_forward(logits, np.array([3, 10]))
    one_line(e)
    with pytest.raises(HaloRefError, match=r"shape \(B, 10\)"):
        tiny.backward(np.zeros((2, 9), np.float32))


# -- H0-H7 at paper size (slow) --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", [r[0] for r in PAPER_TABLE])
def test_h_family_forward_at_paper_size(name, request):
    """Batch 1 in eval mode at the paper's image size; `benchmarks/bench_model.py --family`
    reports the time and peak memory. Minutes in all: runs only under `pytest -m slow`."""
    if "slow" not in (request.config.getoption("markexpr") or "").replace("not slow", ""):
        pytest.skip("H0-H7 at paper size takes minutes; run with `pytest -m slow`")
    cfg = CONFIGS[name]
    model = halonet(name, num_classes=1000, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, cfg.image_size, cfg.image_size))
    logits = model.forward(x.astype(np.float32))
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


# -- the `halo-ref params` command -------------------------------------------------------------
def test_params_command_prints_paper_and_halo_ref_counts(capsys):
    from halo_ref.cli.main import main

    assert main(["params", "--models", "h0,h1,micro"]) == 0
    out = capsys.readouterr().out
    assert "5.5M" in out and "5.50M" in out and "+0.0%" in out  # H0: paper, ours, difference
    assert "8.10M" in out and "0.020M" in out
    assert main(["params", "--models", "h9"]) == 2  # a one-line error, exit status 2
    assert "h9" in capsys.readouterr().err
