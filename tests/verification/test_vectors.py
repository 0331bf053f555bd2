"""Golden vectors: the grid's coverage, byte-for-byte reproducibility, the file format, and the
correctness of the stored answers (against the dense oracle and finite differences)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from halo_ref import HaloRefError
from halo_ref.attention.dense import dense_halo_attention_forward
from halo_ref.cli.main import main
from halo_ref.nn.functional import avgpool2x2_forward, conv1x1_forward
from halo_ref.verification.adapters import halo_ref_adapter
from halo_ref.verification.testing import check_gradients, relative_error
from halo_ref.verification.vectors import (
    CONFIG_GRID,
    MANIFEST,
    MODEL_GRID,
    PAD_GRID,
    TOLERANCES,
    ZIP_DATE,
    generate_vectors,
    load_vectors,
    make_vector,
    reference_result,
    write_vectors,
)
from halo_ref.verification.verify import NOT_APPLICABLE, PASS, verify

ONE_CONFIG = CONFIG_GRID[:1]


@pytest.fixture(scope="module")
def vectors64():
    """Every float64 vector (layers and the whole model), generated in memory once."""
    return generate_vectors(dtypes=("float64",))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The full set written to a folder by the command line."""
    out = tmp_path_factory.mktemp("vectors")
    assert main(["vectors", "--out", str(out)]) == 0
    return out


def _sha256s(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# -- the grid ---------------------------------------------------------------------------------
def test_grid_covers_every_option_implementations_disagree_on():
    cfgs = [c.to_json() for c in CONFIG_GRID]

    def some(pred):
        return any(pred(c) for c in cfgs)

    assert some(lambda c: c["halo_size"] == 0)
    assert some(lambda c: c["halo_size"] > c["block_size"])
    assert some(lambda c: c["block_size"] == 1)
    assert some(lambda c: c["stride"] == 1) and some(lambda c: c["derived"]["query_stride"] == 2)
    assert some(lambda c: c["avg_down"])
    assert some(lambda c: c["stride"] == 2 and c["block_size"] % 2 == 1)  # forced pooling
    assert some(lambda c: c["scale_pos_embed"]) and some(lambda c: not c["scale_pos_embed"])
    assert some(lambda c: c["qkv_bias"]) and some(lambda c: not c["qkv_bias"])
    assert some(lambda c: c["num_heads"] == 1) and some(lambda c: c["num_heads"] == 3)
    assert some(lambda c: c["dim_head"] != c["derived"]["dim_head_v"])
    assert some(lambda c: c["dim"] != c["dim_out"])
    assert some(lambda c: c["height"] != c["width"]) and some(lambda c: c["height"] == c["width"])
    assert some(lambda c: c["height"] * c["width"] == c["block_size"] ** 2)  # a single block
    # every configuration exists with both borders, so a border bug shows as exactly one half
    zeros = {c.name.removesuffix("-zeros") for c in CONFIG_GRID if c.border == "zeros"}
    mask = {c.name.removesuffix("-mask") for c in CONFIG_GRID if c.border == "mask"}
    assert zeros == mask and len(zeros) * 2 == len(CONFIG_GRID)
    assert len({c.name for c in (*CONFIG_GRID, *MODEL_GRID)}) == len(CONFIG_GRID) + len(MODEL_GRID)


# -- reproducibility and format ---------------------------------------------------------------
def test_writing_twice_gives_identical_bytes(tmp_path, written):
    """A second run, in a fresh interpreter with another hash seed, writes the same bytes."""
    again = tmp_path / "again"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    cmd = [sys.executable, "-m", "halo_ref", "vectors", "--out", str(again)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    assert _sha256s(again) == _sha256s(written)
    other_seed = tmp_path / "seed1"
    write_vectors(other_seed, seed=1, configs=ONE_CONFIG, models=())
    name = f"{ONE_CONFIG[0].name}.float64.npz"
    assert _sha256s(other_seed)[name] != _sha256s(written)[name]


def test_manifest_describes_every_file(written):
    manifest_bytes = (written / MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    # deterministic JSON: re-serialising with sorted keys gives the same bytes
    assert json.dumps(manifest, sort_keys=True, indent=2) + "\n" == manifest_bytes.decode()
    assert manifest["tolerances"] == TOLERANCES
    names = [c.name for c in (*CONFIG_GRID, *PAD_GRID, *MODEL_GRID)]
    assert [v["name"] for v in manifest["vectors"]] == names
    files = {MANIFEST}
    for entry in manifest["vectors"]:
        for dtype, info in entry["files"].items():
            data = (written / info["file"]).read_bytes()
            files.add(info["file"])
            assert hashlib.sha256(data).hexdigest() == info["sha256"]
            # plain NumPy reads it, with pickles refused
            with np.load(written / info["file"], allow_pickle=False) as npz:
                assert npz.files == [*entry["inputs"], *entry["results"]]
                for key, desc in info["arrays"].items():
                    assert list(npz[key].shape) == desc["shape"]
                    assert str(npz[key].dtype) == desc["dtype"]
                    if key != "labels" and "num_batches_tracked" not in key:
                        assert npz[key].dtype == np.dtype(dtype)
            with zipfile.ZipFile(written / info["file"]) as zf:
                assert {i.date_time for i in zf.infolist()} == {ZIP_DATE}
    assert {p.name for p in written.iterdir()} == files  # no temporary files left behind


def test_float32_copies_are_the_float64_truth_for_rounded_inputs():
    config = CONFIG_GRID[0]
    made = make_vector(config)
    v64, v32 = made["float64"], made["float32"]
    for key in v64:
        if key in ("x", "dout") or "/" not in key and key not in ("out", "dx"):
            np.testing.assert_array_equal(v32[key], v64[key].astype(np.float32))
    weights = {k: v for k, v in v32.items() if k not in ("x", "dout", "out", "dx") and "/" not in k}
    truth = reference_result(config, v32["x"], weights, v32["dout"])
    for key, value in truth.items():
        np.testing.assert_array_equal(v32[key], value.astype(np.float32))


# -- the stored answers are right --------------------------------------------------------------
def test_outputs_match_the_dense_oracle(vectors64):
    from halo_ref.nn.functional import avgpool2x2_forward, conv1x1_forward

    for v in vectors64:
        if v.kind != "halo_attention":
            continue
        c, w = v.config, v.weights
        s = c["derived"]["query_stride"]
        q, _ = conv1x1_forward(v.x, w["q.weight"], w.get("q.bias"), s)
        kv, _ = conv1x1_forward(v.x, w["kv.weight"], w.get("kv.bias"))
        out, _ = dense_halo_attention_forward(
            q,
            kv,
            w["pos_embed.height_rel"],
            w["pos_embed.width_rel"],
            num_heads=c["num_heads"],
            block_size=c["block_size"],
            halo_size=c["halo_size"],
            query_stride=s,
            scale=c["derived"]["scale"],
            scale_pos_embed=c["scale_pos_embed"],
            border=c["border"],
        )
        if c["derived"]["avg_pool_after"]:
            out, _ = avgpool2x2_forward(out)
        # two float64 computations in different orders: rounding only, ~1e-15
        assert relative_error(v.expected["out"], out) < 1e-12, v.name


def test_gradients_match_finite_differences(vectors64):
    """dx and every weight gradient of sum(dout * out), for every layer configuration."""
    for v in vectors64:
        if v.kind != "halo_attention":
            continue
        x, weights, dout = v.x.copy(), v.weights, v.dout

        def loss(v=v, x=x, weights=weights, dout=dout):
            return float(np.sum(dout * reference_result(_config(v), x, weights, dout)["out"]))

        grads = {"x": v.expected["dx"]}
        grads.update({k: v.expected["grad/" + k] for k in weights})
        # central differences in float64, rel. error <= 1e-7 (see halo_ref.verification.testing)
        check_gradients(loss, {"x": x, **weights}, grads, rng=0)


def _config(v):
    return next(c for c in CONFIG_GRID if c.name == v.name)


@pytest.mark.parametrize("config", MODEL_GRID, ids=lambda c: c.name)
def test_model_vector_gradients_match_finite_differences(vectors64, config):
    from halo_ref.verification.vectors import reference_model_result

    (v,) = [v for v in vectors64 if v.name == config.name]
    x, weights = v.x.copy(), {k: w.copy() for k, w in v.weights.items()}
    params = {k: w for k, w in weights.items() if "running" not in k and "num_batches" not in k}
    assert np.isfinite(v.expected["loss"])
    assert v.expected["logits"].shape == (config.batch, config.num_classes)
    # every weight gradient must be alive: the BatchNorm scales were redrawn for that reason
    for key in params:
        assert np.abs(v.expected["grad/" + key]).max() > 0, key

    def loss():
        return float(reference_model_result(config, x, v.labels, weights)["loss"])

    grads = {"x": v.expected["dx"], **{k: v.expected["grad/" + k] for k in params}}
    # The loss is a mean over the batch through BatchNorm: smooth, but with a batch of 2 through
    # tiny's deep stages strongly curved, so the central difference's O(eps^2) error dominates.
    # Measured on tiny's stem weight: relative error 3.9e-5, 3.9e-7, 3.9e-9 at eps 1e-5, 1e-6,
    # 1e-7 (exactly eps^2), with round-off 1.6e-10. eps = 1e-7 keeps the same 1e-7 bound honest.
    check_gradients(loss, {"x": x, **params}, grads, rng=0, eps=1e-7)


# -- loading and bad input --------------------------------------------------------------------
def test_load_vectors_round_trips_and_detects_tampering(tmp_path):
    write_vectors(tmp_path, configs=ONE_CONFIG, models=())
    loaded = load_vectors(tmp_path, dtypes=("float64",))
    (fresh,) = generate_vectors(dtypes=("float64",), configs=ONE_CONFIG, models=())
    assert [v.name for v in loaded] == [fresh.name]
    for key, value in fresh.arrays.items():
        np.testing.assert_array_equal(loaded[0].arrays[key], value)
    path = tmp_path / f"{ONE_CONFIG[0].name}.float64.npz"
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(HaloRefError, match="does not match the SHA-256"):
        load_vectors(tmp_path)


def test_bad_folders_give_one_line_errors(tmp_path):
    with pytest.raises(HaloRefError, match="manifest.json not found; write the vectors first"):
        load_vectors(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(HaloRefError, match="not a readable JSON manifest"):
        load_vectors(tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(HaloRefError, match="out_dir=.* is a file, not a folder"):
        write_vectors(a_file)
    assert main(["vectors", "--out", str(a_file)]) == 2


# -- pad-then-crop vectors and the safetensors copies -------------------------------------------
def test_pad_then_crop_vectors_are_the_oracle_on_the_padded_map():
    """Zero-pad x at the bottom and right to a multiple of lcm(block, stride), attend with the
    dense oracle, crop: the stored output; and the gradients pass finite differences."""
    for config in PAD_GRID:
        v = make_vector(config)["float64"]
        c = config.to_json()
        assert c["pad_to_blocks"] and c["input_shape"][2] % config.block_size != 0
        Hp, Wp = config.padded_size()
        w = {k: a for k, a in v.items() if k not in ("x", "dout") and not _is_result_key(k)}
        xp = np.pad(v["x"], ((0, 0), (0, 0), (0, Hp - config.height), (0, Wp - config.width)))
        s = c["derived"]["query_stride"]
        q, _ = conv1x1_forward(xp, w["q.weight"], None, s)
        kv, _ = conv1x1_forward(xp, w["kv.weight"], None)
        out, _ = dense_halo_attention_forward(
            q, kv, w["pos_embed.height_rel"], w["pos_embed.width_rel"],
            num_heads=config.num_heads, block_size=config.block_size,
            halo_size=config.halo_size, query_stride=s, scale=c["derived"]["scale"],
            scale_pos_embed=config.scale_pos_embed, border=config.border,
        )  # fmt: skip
        if c["derived"]["avg_pool_after"]:
            out, _ = avgpool2x2_forward(out)
        Ho, Wo = c["derived"]["output_shape"][2:]
        assert v["out"].shape[2:] == (Ho, Wo)
        assert out.shape[2] > Ho or out.shape[3] > Wo  # the padding did produce extra outputs
        # two float64 computations in different orders: rounding only
        assert relative_error(v["out"], out[:, :, :Ho, :Wo]) < 1e-12, config.name
        x = v["x"].copy()

        def loss(x=x, w=w, config=config, dout=v["dout"]):
            return float(np.sum(dout * reference_result(config, x, w, dout)["out"]))

        grads = {"x": v["dx"], **{k: v["grad/" + k] for k in w}}
        check_gradients(loss, {"x": x, **w}, grads, rng=0)  # rel. error <= 1e-7


def _is_result_key(key):
    return key in ("out", "dx") or key.startswith("grad/")


def test_pad_vectors_are_not_applicable_without_the_rule():
    vectors = generate_vectors(dtypes=("float64",), configs=PAD_GRID, models=())
    assert verify(halo_ref_adapter("numpy"), vectors).passed
    plain = dataclasses.replace(halo_ref_adapter("numpy"), pad_to_blocks=False)
    report = verify(plain, vectors)
    assert {r.status for r in report.results} == {NOT_APPLICABLE} != {PASS}
    assert "does not declare that rule" in report.results[0].note


def test_safetensors_copies_hold_the_same_arrays(io_packages, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "both"
    assert main(["vectors", "--out", str(out), "--format", "both"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    count = 0
    for entry in manifest["vectors"]:
        for info in entry["files"].values():
            st = info["safetensors"]
            data = (out / st["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == st["sha256"] and len(data) == st["bytes"]
            tensors = load_file(out / st["file"])
            with np.load(out / info["file"], allow_pickle=False) as npz:
                assert set(tensors) == set(npz.files)
                for key in npz.files:
                    assert tensors[key].dtype == npz[key].dtype
                    np.testing.assert_array_equal(tensors[key], npz[key])
            count += 1
    assert count == 2 * len(manifest["vectors"])
    by_format = load_vectors(out, format="safetensors")
    by_npz = load_vectors(out)
    assert [(v.name, v.dtype) for v in by_format] == [(v.name, v.dtype) for v in by_npz]
    (out / manifest["vectors"][0]["files"]["float64"]["safetensors"]["file"]).write_bytes(b"x")
    with pytest.raises(HaloRefError, match="does not match the SHA-256"):
        load_vectors(out, format="safetensors")
    again = tmp_path / "again"
    assert main(["vectors", "--out", str(again), "--format", "safetensors"]) == 0
    name = manifest["vectors"][1]["files"]["float32"]["safetensors"]["file"]
    assert (again / name).read_bytes() == (out / name).read_bytes()  # byte for byte


def test_vectors_already_written_are_never_overwritten(tmp_path, capsys):
    write_vectors(tmp_path, configs=ONE_CONFIG, models=())
    (tmp_path / MANIFEST).write_text("{}")  # stands for vectors made by another version
    with pytest.raises(HaloRefError, match=r"already holds golden vectors \(.*manifest.json\)"):
        write_vectors(tmp_path, configs=ONE_CONFIG, models=())
    assert main(["vectors", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} already holds golden vectors" in capsys.readouterr().err
    assert (tmp_path / MANIFEST).read_text() == "{}"
