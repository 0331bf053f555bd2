"""Golden vectors: ground truth for other implementations of halo attention (paper, section 3.1;
section 3.2 for the stride-2 variants).

A *vector* is one configuration of a halo attention layer together with everything needed to
check another implementation against halo_ref: the input x, the weights (under timm's parameter
names), the output, an upstream gradient dout, and the gradients of sum(dout * out) with respect
to x and every weight. `write_vectors` stores each vector as a plain `.npz` file (readable with
`numpy.load(path, allow_pickle=False)`, no halo_ref needed) and a `manifest.json` describing
them; docs/verification.md documents the format.

The grid of configurations (`CONFIG_GRID`) is small on purpose, a few kilobytes per file, but it
covers every option on which implementations are known to disagree: halo 0 and halo wider than
the block, both borders, strides 1 and 2 (strided queries, avg_down, an odd block that forces
pooling), scale_pos_embed, biases, one and several heads, d_qk != d_v, and non-square maps.
`MODEL_GRID` adds a whole small HaloNet (`halo_ref.models`): logits, loss and every gradient.

Reproducibility: the same seed gives the same files byte for byte. np.savez would stamp each zip
entry with the current time, so the archive is written here with `zipfile`, a fixed entry date
and `np.lib.format.write_array`; the manifest is JSON with sorted keys and no timestamps.
Values come from NumPy in float64, so the files are identical wherever NumPy's random streams
and the BLAS give the same bits (always on one machine; across machines the last bit of an
output may differ, which the recommended tolerances absorb).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .._atomic import atomic_write
from .._checks import (
    SEED,
    HaloRefError,
    arg,
    check_out_folder,
    check_positive_int,
    make_folder,
)
from ..attention.layer import HaloAttention, downsampling
from ..models import halonet
from ..nn.functional import cross_entropy_backward, cross_entropy_forward

FORMAT_VERSION = 1
DTYPES = ("float64", "float32")
# Recommended tolerance on error = max|actual - expected| / max|expected|, per array, by kind of
# vector and dtype. A correct float64 implementation differs from the vectors by rounding only
# (timm, halo_ref's PyTorch example and its numba backend: at most 1.4e-15 on the layer grid,
# 4.2e-14 on the model); a correct float32 layer by float32 rounding accumulated over sums of a
# few hundred terms (at most 1.3e-6); a float32 whole model more, as BatchNorm's division by a
# small-batch deviation amplifies it (up to 1.9e-5). Each bound keeps a margin of 50x or more,
# while every bug we know of errs by 1e-2 or more. Measurements: docs/verification.md.
TOLERANCES = {
    "halo_attention": {"float64": 1e-10, "float32": 1e-4},
    "halonet": {"float64": 1e-10, "float32": 1e-3},
}
# A fixed date for every zip entry (the earliest a zip file can hold), so archives never differ.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
MANIFEST = "manifest.json"
RESULT_KEYS = ("out", "logits", "loss", "dx")  # and "grad/<weight name>" for every weight
INPUT_KEYS = ("x", "labels", "dout")  # every other key of a vector is a weight (or buffer)
GRAD_PREFIX = "grad/"
# The readable NumPy core computes the truth: it is the one checked against the dense oracle and
# the per-pixel loops, and pinning it keeps the files' bits independent of the default backend.
BACKEND = "numpy"


@dataclass(frozen=True)
class VectorConfig:
    """One halo attention configuration: timm `HaloAttn`'s arguments, border and input shape."""

    name: str
    purpose: str
    dim: int
    dim_out: int
    num_heads: int
    dim_head: int
    block_size: int
    halo_size: int
    stride: int = 1
    avg_down: bool = False
    qkv_bias: bool = False
    scale_pos_embed: bool = False
    border: str = "zeros"
    batch: int = 2
    height: int = 8
    width: int = 8
    # pad-then-crop (halo_ref's HaloNets): x is zero-padded at the bottom and right up to a
    # multiple of lcm(block_size, stride), and the output cropped to ceil(H / stride) rows and
    # ceil(W / stride) columns. Its own semantics: timm's HaloAttn rejects such maps.
    pad_to_blocks: bool = False

    def layer_kwargs(self) -> dict:
        """Keyword arguments of `HaloAttention` (and, without border, of timm's `HaloAttn`)."""
        return dict(
            num_heads=self.num_heads,
            dim_head=self.dim_head,
            block_size=self.block_size,
            halo_size=self.halo_size,
            stride=self.stride,
            avg_down=self.avg_down,
            qkv_bias=self.qkv_bias,
            scale_pos_embed=self.scale_pos_embed,
            border=self.border,
        )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.dim, self.height, self.width)

    def padded_size(self) -> tuple[int, int]:
        """(H, W) after pad-then-crop's zero padding (the input size without it)."""
        if not self.pad_to_blocks:
            return self.height, self.width
        m = math.lcm(self.block_size, self.stride)
        return -(-self.height // m) * m, -(-self.width // m) * m

    def derived(self) -> dict:
        """Quantities an implementation derives from the arguments (stated to avoid guesswork)."""
        pool, query_stride = downsampling(self.stride, self.block_size, self.avg_down)
        extra = {}
        if self.pad_to_blocks:
            extra["padded_input_shape"] = [self.batch, self.dim, *self.padded_size()]
        return dict(
            **extra,
            dim_head_v=self.dim_out // self.num_heads,
            scale=float(self.dim_head) ** -0.5,
            win_size=self.block_size + 2 * self.halo_size,
            query_stride=query_stride,
            query_block_size=self.block_size // query_stride,
            avg_pool_after=pool,
            output_shape=[
                self.batch,
                self.dim_out,
                -(-self.height // self.stride),
                -(-self.width // self.stride),
            ],
        )

    def to_json(self) -> dict:
        """The configuration as stored in manifest.json (arguments, input shape, derived)."""
        d = asdict(self)
        d.pop("name"), d.pop("purpose")
        if not self.pad_to_blocks:  # absent means False: earlier manifests stay byte-identical
            d.pop("pad_to_blocks")
        d["input_shape"] = list(self.input_shape)
        d["derived"] = self.derived()
        return d


def _grid() -> tuple[VectorConfig, ...]:
    """Every base configuration with border="zeros" (timm's semantics) and border="mask"."""
    base = [
        ("basic", "two heads, 2x2 blocks of 4x4, one-pixel halo", {}),
        ("halo0", "no halo: each window is its own block", dict(halo_size=0, dim_head=2)),
        (
            "wide_halo",
            "one head, halo wider than the block (windows reach two blocks away), 4x6 map",
            dict(num_heads=1, block_size=2, halo_size=3, height=4, width=6),
        ),
        (
            "nonsquare",
            "three heads, 3x3 blocks on a 6x9 map",
            dict(dim=6, dim_out=6, num_heads=3, dim_head=2, block_size=3, height=6, width=9),
        ),
        (
            "single_block",
            "one head, one block: every halo pixel is outside the image",
            dict(num_heads=1, halo_size=2, height=4, width=4, batch=1),
        ),
        (
            "block1",
            "1x1 blocks: plain 3x3 neighbourhood attention",
            dict(dim_out=4, dim_head=2, block_size=1, height=3, width=4),
        ),
        (
            "stride2",
            "stride 2 by strided queries: 2x2 query blocks, 4x4 key blocks, 8x12 map",
            dict(stride=2, width=12),
        ),
        (
            "stride2_avg_down",
            "stride 2 by full-resolution attention then a 2x2 average pool (avg_down)",
            dict(stride=2, avg_down=True, halo_size=2),
        ),
        (
            "stride2_odd_block",
            "stride 2 with an odd block (3 % 2 != 0), which forces the average pool",
            dict(stride=2, block_size=3, height=6, width=12, dim_head=2),
        ),
        (
            "scale_pos_embed",
            "the scale multiplies the position logits too",
            dict(scale_pos_embed=True, halo_size=2),
        ),
        (
            "qkv_bias",
            "biases on the q and kv projections, 2x2 blocks on a 4x6 map",
            dict(qkv_bias=True, block_size=2, height=4, width=6),
        ),
        (
            "dims",
            "dim 5 -> dim_out 6, three heads, d_qk = 3 != d_v = 2",
            dict(dim=5, dim_out=6, num_heads=3, dim_head=3, block_size=2, height=4, width=4),
        ),
        (
            "one_head",
            "one head with d_qk = d_v = 4, 2x2 blocks, halo 2, 6x4 map",
            dict(dim=4, dim_out=4, num_heads=1, block_size=2, halo_size=2, height=6, width=4),
        ),
        (
            "everything",
            "stride 2, biases and scale_pos_embed together, dim 6 -> 8, d_qk = 3, 8x12 map",
            dict(
                dim=6,
                dim_head=3,
                halo_size=2,
                stride=2,
                qkv_bias=True,
                scale_pos_embed=True,
                width=12,
            ),
        ),
    ]
    defaults = dict(dim=8, dim_out=8, num_heads=2, dim_head=4, block_size=4, halo_size=1)
    configs = []
    for border in ("zeros", "mask"):
        for name, purpose, overrides in base:
            kw = {**defaults, **overrides, "border": border}
            configs.append(VectorConfig(name=f"{name}-{border}", purpose=purpose, **kw))
    return tuple(configs)


CONFIG_GRID = _grid()


def _pad_grid() -> tuple[VectorConfig, ...]:
    """Maps whose size is not a multiple of the block, under the pad-then-crop rule."""
    base = [
        ("pad_crop", "7x10 map, 4x4 blocks: zero-padded to 8x12, output cropped to 7x10", {}),
        (
            "pad_crop_stride2",
            "7x10 map, stride 2 by strided queries: padded to 8x12, output cropped to 4x5",
            dict(stride=2),
        ),
        (
            "pad_crop_odd_block",
            "5x7 map, odd 3x3 blocks, stride 2 (pooled): padded to 6x12 (lcm 6), cropped to 3x4",
            dict(stride=2, block_size=3, height=5, width=7, dim_head=2),
        ),
    ]
    defaults = dict(
        dim=8, dim_out=8, num_heads=2, dim_head=4, block_size=4, halo_size=1, height=7, width=10
    )
    return tuple(
        VectorConfig(
            name=f"{name}-{border}",
            purpose=purpose,
            **{**defaults, **overrides, "border": border, "pad_to_blocks": True},
        )
        for border in ("zeros", "mask")
        for name, purpose, overrides in base
    )


PAD_GRID = _pad_grid()


@dataclass(frozen=True)
class ModelVectorConfig:
    """A whole HaloNet from `halo_ref.models` on a small batch, with its mean cross-entropy.

    BatchNorm runs in training mode (batch statistics, eps 1e-5), as during a training step.
    """

    name: str
    purpose: str
    model: str = "micro"
    num_classes: int = 10
    in_chans: int = 1
    batch: int = 4
    height: int = 8
    width: int = 8

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_chans, self.height, self.width)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("name"), d.pop("purpose")
        d["input_shape"] = list(self.input_shape)
        d["batchnorm"] = "training mode: batch statistics (biased variance), eps 1e-5"
        d["loss"] = "mean over the batch of cross-entropy(logits, labels), no label smoothing"
        d["builder"] = (
            f"halo_ref.models.halonet({self.model!r}, num_classes={self.num_classes}, "
            f"in_chans={self.in_chans})"
        )
        return d


# "micro" (about 20k parameters) is small and has every layer kind of the larger models (stem
# convolution, bottlenecks, strided halo attention, BatchNorm, head); "tiny" is the CIFAR-10
# model that `halo-ref train` uses (about 340k parameters, a few MB per file).
MODEL_GRID = (
    ModelVectorConfig(
        "halonet_micro",
        "the whole 'micro' HaloNet on 8x8 one-channel images: logits, loss and every gradient",
    ),
    ModelVectorConfig(
        "halonet_tiny",
        "the whole 'tiny' HaloNet (the CIFAR-10 model) on 32x32 RGB images: logits, loss and "
        "every gradient",
        model="tiny",
        in_chans=3,
        batch=2,
        height=32,
        width=32,
    ),
)


# ---------------------------------------------------------------------------------------------
# Computing one vector
# ---------------------------------------------------------------------------------------------
def _generator(seed: int, name: str) -> np.random.Generator:
    """A stream per (seed, configuration name): adding a configuration changes no other file."""
    seed = check_positive_int(seed, "seed", minimum=0)
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def reference_result(config: VectorConfig, x, weights, dout) -> dict[str, np.ndarray]:
    """halo_ref's float64 answer: {"out", "dx", "grad/<name>" for every weight}.

    x: (B, dim, H, W); weights: timm names -> arrays; dout: like the output. Inputs of any float
    dtype are promoted to float64 first, so a float32 vector's truth is exact for its inputs.
    """
    layer = HaloAttention(
        config.dim, config.dim_out, **config.layer_kwargs(), dtype=np.float64, backend=BACKEND
    )
    layer.load_state_dict({k: np.asarray(v, np.float64) for k, v in weights.items()})
    out, dx = pad_then_crop(
        layer.forward, layer.backward, np.asarray(x, np.float64), np.asarray(dout, np.float64),
        config.padded_size(),
    )  # fmt: skip
    result = {"out": out, "dx": dx}
    for key in sorted(layer.grads):
        result[GRAD_PREFIX + key] = layer.grads[key]
    return result


def pad_then_crop(forward, backward, x, dout, padded_size):
    """Run a layer under the pad-then-crop rule: x (B, C, H, W) zero-padded at the bottom and
    right to `padded_size`, the output cropped to dout's (H', W'); the backward pads dout with
    zeros (cropped outputs had no effect) and crops dx back to x's size. Returns (out, dx)."""
    H, W = x.shape[2:]
    Hp, Wp = padded_size
    xp = np.pad(x, ((0, 0), (0, 0), (0, Hp - H), (0, Wp - W)))  # B, C, Hp, Wp
    out = forward(xp)
    Ho, Wo = dout.shape[2:]
    dout_p = np.zeros(out.shape, dtype=dout.dtype)
    dout_p[:, :, :Ho, :Wo] = dout
    dx = backward(dout_p)
    return out[:, :, :Ho, :Wo], dx[:, :, :H, :W]


def make_vector(config: VectorConfig, *, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of one configuration, for every dtype: {dtype name: {key: array}}.

    float64: x ~ N(0, 1), weights drawn by `HaloAttention`'s (timm's) initialisation, dout ~
    N(0, 1), and the float64 results. float32: the same inputs rounded to float32, and the results
    computed in float64 *from those rounded inputs*, then rounded: the best float32 answer.
    """
    rng = _generator(seed, config.name)
    layer = HaloAttention(
        config.dim,
        config.dim_out,
        **config.layer_kwargs(),
        dtype=np.float64,
        rng=rng,
        backend=BACKEND,
    )
    weights = {k: v.copy() for k, v in sorted(layer.params.items())}
    x = rng.standard_normal(config.input_shape)
    dout = rng.standard_normal(tuple(config.derived()["output_shape"]))
    vectors = {}
    for dtype in DTYPES:
        x_d = x.astype(dtype)
        w_d = {k: v.astype(dtype) for k, v in weights.items()}
        dout_d = dout.astype(dtype)
        result = reference_result(config, x_d, w_d, dout_d)
        arrays = {"x": x_d, **w_d, "dout": dout_d}
        arrays.update({k: v.astype(dtype) for k, v in result.items()})
        vectors[dtype] = arrays
    return vectors


def _build_model(config: ModelVectorConfig, rng=None):
    return halonet(
        config.model,
        num_classes=config.num_classes,
        in_chans=config.in_chans,
        dtype=np.float64,
        rng=rng,
        backend=BACKEND,
    )


def reference_model_result(config: ModelVectorConfig, x, labels, weights) -> dict:
    """halo_ref's float64 answer for a whole model: {"logits", "loss", "dx", "grad/<name>"}.

    x: (B, in_chans, H, W); labels: int (B,); weights: the model's state dict (parameters and
    BatchNorm buffers). Float inputs are promoted to float64 first.
    """
    model = _build_model(config, rng=0)  # every layer on BACKEND: the readable formulas
    model.load_state_dict({k: np.asarray(v, np.float64) for k, v in weights.items()})
    logits = model.forward(np.asarray(x, np.float64))
    loss, cache = cross_entropy_forward(logits, np.asarray(labels))
    dx = model.backward(cross_entropy_backward(cache))
    result = {"logits": logits, "loss": np.asarray(loss, np.float64), "dx": dx}
    for key in sorted(model.grads):
        result[GRAD_PREFIX + key] = model.grads[key]
    return result


def make_model_vector(config: ModelVectorConfig, *, seed: int = 0) -> dict:
    """The arrays of a whole-model vector for every dtype: {dtype name: {key: array}}.

    The initial weights are the model's own, except that every BatchNorm scale is drawn from
    U(0.5, 1.5) and every shift from N(0, 0.1^2): the model zero-initialises the last scale of
    each residual block, which would make every gradient inside the block exactly zero and the
    vector blind to errors there.
    """
    rng = _generator(seed, config.name)
    model = _build_model(config, rng=rng)
    for key, value in model.params.items():
        if key.endswith("bn.weight"):
            value[...] = rng.uniform(0.5, 1.5, value.shape)
        elif key.endswith("bn.bias"):
            value[...] = rng.normal(0.0, 0.1, value.shape)
    weights = dict(sorted(model.state_dict().items()))
    x = rng.standard_normal(config.input_shape)
    labels = rng.integers(0, config.num_classes, config.batch).astype(np.int64)
    vectors = {}
    for dtype in DTYPES:
        x_d = x.astype(dtype)
        w_d = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in weights.items()}
        result = reference_model_result(config, x_d, labels, w_d)
        arrays = {"x": x_d, "labels": labels, **w_d}
        arrays.update({k: v.astype(dtype) for k, v in result.items()})
        vectors[dtype] = arrays
    return vectors


# ---------------------------------------------------------------------------------------------
# Deterministic files
# ---------------------------------------------------------------------------------------------
def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A `.npz` archive of `arrays` (in the given order) whose bytes depend only on the arrays.

    Entries are stored uncompressed (no dependence on the zlib version), dated `ZIP_DATE`, with
    fixed permissions and creator system, each the `.npy` (format 1.0) of a C-ordered array.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            npy = io.BytesIO()
            # C order (not ascontiguousarray, which would turn a 0-d loss into shape (1,))
            arr = np.asarray(arr).copy(order="C")
            np.lib.format.write_array(npy, arr, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # "Unix" wherever we run, so the header bytes never vary
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    return buffer.getvalue()


def _describe(arrays: dict[str, np.ndarray]) -> dict:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as deterministic JSON: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode()


def _kind(config) -> str:
    return "halonet" if isinstance(config, ModelVectorConfig) else "halo_attention"


def _make(config, seed):
    if isinstance(config, ModelVectorConfig):
        return make_model_vector(config, seed=seed)
    return make_vector(config, seed=seed)


def _is_result(key: str) -> bool:
    return key in RESULT_KEYS or key.startswith(GRAD_PREFIX)


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The arrays as one `.safetensors` file (same keys as the `.npz`; readers exist for Rust,
    C++, JavaScript and more). The format orders the tensors itself (by alignment, then name);
    the metadata goes in as one JSON string under one key, since the writer stores a map of
    several keys in an order that changes from run to run."""
    try:
        from safetensors.numpy import save
    except ImportError:
        raise HaloRefError(
            "--format safetensors needs the safetensors package: pip install safetensors"
        ) from None
    meta = {"halo_ref": json.dumps(metadata, sort_keys=True)}
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)


FORMATS = ("npz", "safetensors")


def write_vectors(
    out_dir, *, seed: int = 0, configs=CONFIG_GRID, models=MODEL_GRID, formats=("npz",)
) -> dict:
    """Write one file per configuration, dtype and format, then `manifest.json`, into `out_dir`.

    Files are named `<config name>.<dtype>.npz` (and `.safetensors` with formats including
    "safetensors": the same arrays under the same names). The manifest is written last, so a
    manifest always describes complete files. Returns the manifest (a dict).
    """
    SEED.check(seed, "seed")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise HaloRefError(f"--format {unknown or formats}: choose npz, safetensors or both")
    out = Path(check_out_folder(out_dir, "out_dir", flag="out"))
    names = [
        f"{c.name}.{dt}.{fmt}" for c in (*configs, *models) for dt in DTYPES for fmt in formats
    ] + [MANIFEST]
    taken = [n for n in names if (out / n).exists()]
    if taken:
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        raise HaloRefError(
            f"{arg('out_dir', str(out), flag='out')} already holds golden vectors "
            f"({', '.join(taken[:3])}{more}); they are never overwritten: choose a new folder, "
            "or delete them first"
        )
    make_folder(out, "out_dir", flag="out")
    entries = []
    for config in (*configs, *models):
        files = {}
        for dtype, arrays in _make(config, seed).items():
            entry = {"arrays": _describe(arrays)}
            for fmt in formats:
                if fmt == "npz":
                    data = npz_bytes(arrays)
                else:
                    meta = {"format": "halo_ref golden vectors", "name": config.name}
                    data = safetensors_bytes(arrays, {**meta, "dtype": dtype})
                filename = f"{config.name}.{dtype}.{fmt}"
                atomic_write(out / filename, lambda f, data=data: f.write(data))
                written = {"file": filename, "sha256": hashlib.sha256(data).hexdigest()}
                written["bytes"] = len(data)
                if fmt == "npz":  # the manifest's original place
                    entry.update(written)
                else:  # other formats under their own name
                    entry[fmt] = written
            files[dtype] = entry
        entries.append(
            {
                "name": config.name,
                "kind": _kind(config),
                "purpose": config.purpose,
                "config": config.to_json(),
                "inputs": [k for k in arrays if not _is_result(k)],
                "results": [k for k in arrays if _is_result(k)],
                "files": files,
            }
        )
    manifest = {
        "format": "halo_ref golden vectors",
        "format_version": FORMAT_VERSION,
        "halo_ref_version": __version__,
        "seed": int(seed),
        "error_metric": "max(abs(actual - expected)) / max(abs(expected)), per array",
        "tolerances": dict(TOLERANCES),
        "loss": {
            "halo_attention": "sum(dout * out); dx and grad/<name> are its gradients",
            "halonet": "mean cross-entropy of logits and labels; dx and grad/<name> are its "
            "gradients",
        },
        "vectors": entries,
    }
    manifest_data = manifest_bytes(manifest)
    atomic_write(out / MANIFEST, lambda f: f.write(manifest_data))
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading vectors back (halo_ref's own reader; any NumPy can read the files directly)
# ---------------------------------------------------------------------------------------------
@dataclass
class Vector:
    """One loaded vector: its name, dtype, configuration (as in the manifest) and arrays."""

    name: str
    dtype: str
    config: dict
    arrays: dict[str, np.ndarray]
    purpose: str = ""
    kind: str = "halo_attention"  # or "halonet" (a whole model)

    @property
    def x(self):
        return self.arrays["x"]

    @property
    def dout(self):
        return self.arrays["dout"]

    @property
    def labels(self):
        return self.arrays["labels"]

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """The weights (timm's names for a layer; the state dict, buffers too, for a model)."""
        return {k: v for k, v in self.arrays.items() if k not in INPUT_KEYS and not _is_result(k)}

    @property
    def expected(self) -> dict[str, np.ndarray]:
        """The results: "out" (or "logits" and "loss"), "dx" and "grad/<weight name>"."""
        return {k: v for k, v in self.arrays.items() if _is_result(k)}


def generate_vectors(
    *, seed: int = 0, dtypes=DTYPES, configs=CONFIG_GRID, models=MODEL_GRID
) -> list[Vector]:
    """The vectors in memory, exactly as `write_vectors` would write them (no files)."""
    vectors = []
    for config in (*configs, *models):
        made = _make(config, seed)
        for dtype in dtypes:
            vectors.append(
                Vector(
                    config.name, dtype, config.to_json(), made[dtype], config.purpose, _kind(config)
                )
            )
    return vectors


def load_manifest(directory) -> dict:
    """Read `manifest.json` from a vectors folder, with a one-line error if it is not one."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise HaloRefError(
            f"{path} not found; write the vectors first with `halo-ref vectors --out {directory}`"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HaloRefError(f"{path} is not a readable JSON manifest ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise HaloRefError(
            f"{path} has format_version {manifest.get('format_version')!r}, this halo_ref reads "
            f"{FORMAT_VERSION}; regenerate with `halo-ref vectors --out {directory}`"
        )
    return manifest


def _read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


def load_vectors(
    directory, *, dtypes=DTYPES, check_hashes: bool = True, format: str = "npz"
) -> list[Vector]:
    """Load every vector of a folder written by `write_vectors`, checking each SHA-256.

    dtypes: which copies to load ("float64", "float32"); format: "npz" or "safetensors".
    Raises `HaloRefError` when a file is missing, altered (hash mismatch) or unreadable.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    vectors = []
    for entry in manifest["vectors"]:
        for dtype in dtypes:
            info = entry["files"].get(dtype)
            if info is not None and format != "npz":
                info = info.get(format)
            if info is None or "file" not in info:
                continue
            path = directory / info["file"]
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise HaloRefError(
                    f"cannot read {path} ({exc.strerror}); regenerate the vectors"
                ) from None
            if check_hashes and hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise HaloRefError(
                    f"{path} does not match the SHA-256 in {MANIFEST}: the file was altered or "
                    "truncated; regenerate the vectors"
                )
            try:
                if format == "safetensors":
                    arrays = _read_safetensors(data)
                else:
                    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                        arrays = {k: npz[k] for k in npz.files}
            except Exception as exc:  # any reader error: zip, npy header, safetensors header
                raise HaloRefError(f"{path} is not a readable .{format} file ({exc})") from None
            vectors.append(
                Vector(
                    entry["name"],
                    dtype,
                    entry["config"],
                    arrays,
                    entry.get("purpose", ""),
                    entry.get("kind", "halo_attention"),
                )
            )
    return vectors
