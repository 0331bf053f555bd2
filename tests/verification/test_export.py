"""`halo-ref export`: a trained checkpoint's weights in .pt and .safetensors under the PyTorch
twin's names; the twin rebuilt from them gives halo_ref's logits; the lines it prints (and the
docs page's) rebuild the model as written; an existing file is never overwritten."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_checkpoint

from halo_ref import HaloRefError
from halo_ref.cli.main import main
from halo_ref.models import halonet
from halo_ref.training.checkpoint import load_checkpoint
from halo_ref.training.config import TrainConfig
from halo_ref.training.data import load_dataset
from halo_ref.training.evaluate import Batcher
from halo_ref.training.loop import train
from halo_ref.verification.export import export_checkpoint
from halo_ref.verification.testing import assert_close

pytestmark = pytest.mark.torch
DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """best.npz of a real (one-epoch) digits run, float32 as runs are by default."""
    out = tmp_path_factory.mktemp("digits") / "run"
    train(TrainConfig(dataset="digits", epochs=1, out=str(out)), log=lambda *a: None,
          progress=False)  # fmt: skip
    return str(out / "best.npz")


def halo_ref_logits(ckpt, images):
    """The checkpoint's model, in float64 and eval mode, on uint8 images (N, H, W, C)."""
    state, _, meta, _ = load_checkpoint(ckpt)
    C = meta["in_chans"]
    model = halonet(meta["config"]["model"], num_classes=meta["num_classes"], in_chans=C,
                    dtype=np.float64, rng=1)  # fmt: skip
    model.load_state_dict(state)  # float32 weights are exact in float64
    model.eval()
    x = Batcher(meta["mean"], meta["std"], meta["input_multiple"], np.float64)(images)
    return model.forward(x), x


def twin_logits(torch, net, x):
    with torch.no_grad():
        return net.double()(torch.from_numpy(x)).numpy()


# The same float64 weights and input on both sides, the same operations summed in different
# orders (timm's unfold and relative-logit tricks): they agree to ~1e-13; 1e-9 of the largest
# logit, the torch side's float64 tolerance, leaves room and still fails on any wrong weight.
RTOL = 1e-9


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_the_twin_rebuilt_from_an_export_gives_halo_refs_logits(
    torch, timm_halo_attn, io_packages, trained, tmp_path, suffix
):
    torch.set_num_threads(1)  # deterministic float64 sums
    out = str(tmp_path / f"model{suffix}")
    done = export_checkpoint(trained, out)
    state, _, meta, _ = load_checkpoint(trained)
    if suffix == ".pt":
        weights = torch.load(out, weights_only=True)
    else:
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights = load_file(out)
        with safe_open(out, "pt") as f:
            info = json.loads(f.metadata()["halo_ref"])
        assert info == done.info and info["model"] == "micro" and info["pixel_max"] == 16
        assert info["class_names"] == meta["class_names"] and info["mean"] == meta["mean"]
    assert done.tensors == len(state) == len(weights)
    for name, value in state.items():  # the checkpoint's arrays, bit for bit
        assert np.array_equal(weights[name].numpy(), value), name

    from halo_ref.verification.torch_side import build_twin

    net = build_twin("micro", num_classes=10, in_chans=1)
    net.load_state_dict(weights)  # strict: every twin name is in the file, and nothing else
    images = load_dataset("digits").x_test[:64]
    want, x = halo_ref_logits(trained, images)
    assert not net.training  # rebuilt for use: BatchNorm from the running statistics
    assert_close(want, twin_logits(torch, net, x), rtol=RTOL, name="logits")


def test_tiny64_and_tiny_export_too(torch, timm_halo_attn, io_packages, tmp_path):
    """Models with a strided stem and a whole-block padding (tiny64) and CIFAR-10's (tiny),
    float32 as runs are: build_twin's default dtype holds their weights exactly."""
    from safetensors.torch import load_file

    from halo_ref.verification.torch_side import build_twin

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    for model, size in (("tiny64", 64), ("tiny", 32)):
        ckpt = fake_checkpoint(tmp_path / f"{model}.npz", dataset="folder:x", model=model,
                               shape=(size, size, 3), class_names=("a", "b", "c", "d"),
                               dtype="float32")  # fmt: skip
        out = str(tmp_path / f"{model}.safetensors")
        export_checkpoint(ckpt, out)
        net = build_twin(model, num_classes=4, in_chans=3)
        net.load_state_dict(load_file(out))
        want, x = halo_ref_logits(ckpt, rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8))
        assert_close(want, twin_logits(torch, net, x), rtol=RTOL, name=f"{model} logits")


def test_the_printed_lines_and_the_docs_lines_rebuild_the_model(
    torch, timm_halo_attn, trained, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", trained, "--out", "model.pt"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("wrote 83 tensors of 'micro' (10 classes) to model.pt")
    assert printed[-1].startswith("input: uint8 images (N, 8, 8, 1) in 0..16 as (N, C, H, W)")
    code = "\n".join(line.strip() for line in printed[1:-1])
    scope = {"torch": torch}
    exec(code, scope)
    images = load_dataset("digits").x_test[:8]
    want, x = halo_ref_logits(trained, images)
    assert_close(want, twin_logits(torch, scope["net"], x), rtol=RTOL, name="printed lines")
    # the docs page's block, for a CIFAR-10 model saved as model.pt
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
                if "build_twin" in b]  # fmt: skip
    tiny = fake_checkpoint(tmp_path / "tiny.npz", dataset="cifar10", model="tiny",
                           shape=(32, 32, 3), class_names=[str(i) for i in range(10)],
                           dtype="float32")  # fmt: skip
    (tmp_path / "model.pt").unlink()
    export_checkpoint(tiny, "model.pt")
    scope = {}
    exec(block, scope)
    want, x = halo_ref_logits(tiny, np.full((1, 32, 32, 3), 100, np.uint8))
    assert_close(want, twin_logits(torch, scope["net"], x), rtol=RTOL, name="docs lines")


@pytest.mark.parametrize(
    "out, message",
    [("model.npz", r"--out model.npz must end in .pt \(PyTorch's torch.save\) or .safetensors"),
     ("taken.pt", "--out taken.pt already exists; choose a new file name"),
     ("no/model.pt", "--out no/model.pt: folder .*/no does not exist; create it first")],
)  # fmt: skip
def test_bad_outputs_are_one_line_and_nothing_is_written(
    trained, tmp_path, capsys, monkeypatch, out, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.pt").write_bytes(b"keep me")
    assert main(["export", "--checkpoint", trained, "--out", out]) == 2
    out_text, err = capsys.readouterr()
    assert out_text == "" and err.count("\n") == 1 and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.pt"]
    assert (tmp_path / "taken.pt").read_bytes() == b"keep me"
    with pytest.raises(HaloRefError, match="checkpoint nope.npz does not exist"):
        export_checkpoint("nope.npz", "new.safetensors")
    assert not (tmp_path / "new.safetensors").exists()


def test_a_float64_run_is_rebuilt_in_float64(torch, timm_halo_attn, tmp_path, capsys):
    """The printed lines ask for a float64 twin, which holds a float64 run's weights unrounded
    (the default float32 twin would round them to ~1e-8, far above the tolerance)."""
    ckpt = fake_checkpoint(tmp_path / "d.npz", dataset="digits", model="micro", shape=(8, 8, 1),
                           pixel_max=16)  # fmt: skip
    out = str(tmp_path / "m.pt")
    assert main(["export", "--checkpoint", ckpt, "--out", out]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].endswith("in_chans=1, dtype=torch.float64)")
    scope = {"torch": torch}
    exec("\n".join(line.strip() for line in printed[1:-1]), scope)
    want, x = halo_ref_logits(ckpt, load_dataset("digits").x_test[:8])
    assert_close(want, twin_logits(torch, scope["net"], x), rtol=RTOL, name="float64 twin")
