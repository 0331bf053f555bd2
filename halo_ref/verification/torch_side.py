"""halo_ref's PyTorch side, in one optional module: it imports torch (the rest of halo_ref
never does), so it loads only where PyTorch is installed (`pip install torch==2.13.0`; CPU is
enough, plus `pip install --no-deps timm` for timm's layer).

- timm: `load_timm_halo_attn` loads timm's `HaloAttn` without importing the timm package
  (whose `__init__` pulls in torchvision, often not installable: `timm/layers/halo_attn.py` only
  needs `helpers.py`, `weight_init.py` and `trace_utils.py` beside it, so a stand-in package
  whose search path is timm's `layers/` folder loads it), and `timm_halo_attn_from(layer)` builds
  one with a `HaloAttention`'s configuration and weights;
- the reference attention: `torch_halo_attention`, halo attention written from scratch in
  PyTorch, with both borders; `bug=` plants one of four known mistakes (`PLANTED_BUGS`), to
  show, and to test, that the golden vectors catch each one;
- adapters for `halo_ref.verification.verify`: `timm_adapter()` and `torch_adapter(bug)`;
- the halo attentions others wrote, as adapters that declare their semantics
  (`halo_ref.verification.semantics.Semantics`): lucidrains' `halonet-pytorch`, kecam
  (keras-cv-attention-models on its PyTorch backend), and halo attention as a FlexAttention
  `mask_mod` + `score_mod` (`flex_halo_attention`, the recipe of docs/flex_attention.md);
  `outside_adapter(name)` builds one by its `halo-ref verify --against` name;
- the model twin: `torch_twin(model)` builds the `torch.nn` network with the structure, child
  names and weights of a halo_ref model (timm's `HaloAttn` for each `HaloAttention`), so state
  dicts move between the two key for key; `build_twin(name, ...)` builds it from a model name,
  ready for the weights `halo-ref export` writes (`halo_ref.verification.export`), to train on
  in PyTorch (a GPU, a cluster) like any `torch.nn.Module`.

Used by the tests, the benchmarks, `halo-ref verify --against ...`, `halo-ref conformance` and
`halo-ref export`. The outside packages are optional too: each adapter imports its package when built and raises a
one-line `HaloRefError` naming the `pip install` when it is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import flex_attention as fa

from .._checks import HaloRefError
from ..attention.layer import HaloAttention, downsampling
from ..models.halonet import HaloBottleneck, halonet
from ..nn import layers
from .semantics import (
    EVERYTHING,
    FLEX,
    FLEX_EAGER_BACKWARD,
    KECAM,
    LUCIDRAINS,
    TIMM,
    package_version,
)
from .verify import Adapter

# -- timm's HaloAttn ------------------------------------------------------------------------------
_PACKAGE = "_halo_ref_isolated_timm_layers"


def load_timm_halo_attn():
    """Return timm's `halo_attn` module, loaded without importing the timm package.

    Raises ImportError with the install command when torch or timm is missing.
    """
    name = _PACKAGE + ".halo_attn"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed: pip install --no-deps timm")
    layers = Path(list(spec.submodule_search_locations)[0]) / "layers"
    if not (layers / "halo_attn.py").exists():
        raise ImportError(f"this timm has no layers/halo_attn.py (looked in {layers})")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(layers)]
    sys.modules[_PACKAGE] = package
    return importlib.import_module(name)


def timm_halo_attn_from(layer):
    """Build a timm `HaloAttn` with the configuration and weights of a halo_ref `HaloAttention`.

    Only border="zeros" exists in timm. The module is float64 or float32 like the layer.
    """
    if layer.border != "zeros":
        raise ValueError("timm's HaloAttn has no border='mask'; use border='zeros' to compare")
    module = load_timm_halo_attn().HaloAttn(
        layer.dim,
        layer.dim_out,
        stride=layer.stride,
        num_heads=layer.num_heads,
        dim_head=layer.dim_head_qk,
        block_size=layer.block_size,
        halo_size=layer.halo_size,
        qkv_bias=layer.qkv_bias,
        avg_down=layer.avg_down,
        scale_pos_embed=layer.scale_pos_embed,
    )
    module = module.to(torch.float64 if layer.dtype.itemsize == 8 else torch.float32)
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.params.items()})
    return module


# -- adapters for the verifier ------------------------------------------------------------------
def _torch_grads(x, weights, dout, forward):
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
    reason = TIMM.reason(config)
    return reason and f"timm {reason}"


def timm_adapter() -> Adapter:
    """timm's `HaloAttn` (loaded in isolation, `load_timm_halo_attn`): border="zeros" only."""
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

        return _torch_grads(x, weights, dout, forward)

    return Adapter("timm HaloAttn", run, _timm_supports, semantics=TIMM)


# -- the reference attention in PyTorch, with planted bugs ---------------------------------------
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
    B, _, H, W = x.shape
    heads, b, h = config["num_heads"], config["block_size"], config["halo_size"]
    d_qk, d_v = config["dim_head"], config["dim_out"] // config["num_heads"]
    win, R = b + 2 * h, 2 * (b + 2 * h) - 1
    pool, s = downsampling(config["stride"], b, config["avg_down"])  # s: query subsampling
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

    def run(config, x, weights, dout):
        return _torch_grads(
            x, weights, dout, lambda xt, wt: torch_halo_attention(xt, wt, config, bug=bug)
        )

    name = "PyTorch example" + (f" with planted bug {bug!r}" if bug else "")
    return Adapter(name, run, semantics=EVERYTHING)


# -- halo attentions others wrote -----------------------------------------------------------------
def _need(module: str, pip_name: str):
    """Import an outside package, or a one-line error naming its `pip install`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HaloRefError(
            f"this adapter needs {pip_name}: pip install {pip_name} (with torch==2.13.0 already "
            "installed; use --no-deps if pip wants another torch)"
        ) from None


def _kv_timm_to_split(kv, heads, d_qk, d_v):
    """timm's per-head interleaved kv rows [k_0|v_0|k_1|v_1|...] -> [k_0|k_1|...|v_0|v_1|...].

    kv: (heads*(d_qk+d_v), dim, ...) tensor; differentiable.
    """
    rest = kv.shape[1:]
    per_head = kv.reshape(heads, d_qk + d_v, *rest)  # heads, d_qk+d_v, dim, ...
    k, v = per_head[:, :d_qk], per_head[:, d_qk:]
    return k.reshape(heads * d_qk, *rest), v.reshape(heads * d_v, *rest)


def lucidrains_module(config, layer_cls=None):
    """lucidrains' `HaloAttention` for a vector's configuration, its output projection removed.

    `to_out` is a `torch.nn.Linear(heads*dim_head, dim)` with a bias that timm's `HaloAttn` (and
    so the vectors) does not have; it is replaced by the identity, so the layer ends at the
    merged heads, where the vectors' `out` is. Its weight names are then `to_q.weight`,
    `to_kv.weight`, `rel_pos_emb.rel_height`, `rel_pos_emb.rel_width`.
    layer_cls: a copy of the class to run instead (tests plant bugs in one).
    """
    if layer_cls is None:
        layer_cls = _need("halonet_pytorch", "halonet-pytorch").HaloAttention
    module = layer_cls(
        dim=config["dim"],
        block_size=config["block_size"],
        halo_size=config["halo_size"],
        dim_head=config["dim_head"],
        heads=config["num_heads"],
    )
    module.to_out = nn.Identity()
    return module


def lucidrains_weights(weights, config):
    """timm-named tensors -> lucidrains' names (differentiable: reshapes and a de-interleave).

    to_q is timm's q as a Linear (dim_head*heads, dim); to_kv holds all keys then all values,
    [k_0|k_1|...|v_0|v_1|...], where timm interleaves per head; the tables are the same.
    """
    heads, d = config["num_heads"], config["dim_head"]
    k, v = _kv_timm_to_split(weights["kv.weight"][:, :, 0, 0], heads, d, d)
    return {
        "to_q.weight": weights["q.weight"][:, :, 0, 0],
        "to_kv.weight": torch.cat([k, v], dim=0),
        "rel_pos_emb.rel_height": weights["pos_embed.height_rel"],
        "rel_pos_emb.rel_width": weights["pos_embed.width_rel"],
    }


def lucidrains_adapter(layer_cls=None, name=None) -> Adapter:
    """lucidrains' `halonet-pytorch` HaloAttention (border "mask", scale_pos_embed=True).

    layer_cls: run this class instead of the installed one (e.g. a copy with a planted bug).
    """
    if layer_cls is None:
        _need("halonet_pytorch", "halonet-pytorch")

    def run(config, x, weights, dout):
        module = lucidrains_module(config, layer_cls)

        def forward(xt, wt):
            return torch.func.functional_call(module, lucidrains_weights(wt, config), (xt,))

        return _torch_grads(x, weights, dout, forward)

    label = name or f"lucidrains halonet-pytorch {package_version('halonet-pytorch')}"
    return Adapter(label, run, LUCIDRAINS.reason, semantics=LUCIDRAINS)


def _kecam():
    """kecam's halonet module on its PyTorch backend (KECAM_BACKEND is read at import)."""
    backend = os.environ.setdefault("KECAM_BACKEND", "torch")
    if backend != "torch":
        raise HaloRefError(
            f"KECAM_BACKEND={backend!r}: the kecam adapter runs kecam on PyTorch; unset it or "
            "set KECAM_BACKEND=torch"
        )
    _need("h5py", "h5py")
    with contextlib.redirect_stdout(io.StringIO()):  # kecam prints its backend on import
        module = _need("keras_cv_attention_models.halonet.halonet", "kecam")
    from keras_cv_attention_models import backend as kecam_backend

    if not kecam_backend.is_torch_backend:
        raise HaloRefError("kecam was imported on another backend; set KECAM_BACKEND=torch first")
    return module


def kecam_module(config, dtype):
    """kecam's `halo_attention` for a vector's configuration as a PyTorch module, no output
    Dense (`out_weight=False`, as kecam's own HaloNets build it). Input and output are NCHW at
    the module's edges; inside, kecam computes in NHWC (channels last)."""
    halonet = _kecam()
    from keras_cv_attention_models.backend import layers as kecam_layers
    from keras_cv_attention_models.backend import models as kecam_models

    if config["dim_head"] <= 1:
        # kecam reads key_dim <= 1 as a ratio of the channels: one channel per head is
        # inexpressible
        raise HaloRefError("kecam cannot express dim_head=1 (key_dim <= 1 is a ratio)")
    inputs = kecam_layers.Input([config["dim"], config["height"], config["width"]])
    out = halonet.halo_attention(
        inputs,
        num_heads=config["num_heads"],
        key_dim=config["dim_head"],
        block_size=config["block_size"],
        halo_size=config["halo_size"],
        strides=config["stride"],
        out_shape=config["dim_out"],
        out_weight=False,
        name="attn_",
    )
    return kecam_models.Model(inputs, out).to(dtype)


def kecam_weights(weights):
    """timm names -> kecam's: the same 1x1 kernels and interleaving, the tables transposed
    (kecam stores them (d_qk, 2*win - 1))."""
    return {
        "attn_query_conv.weight": weights["q.weight"],
        "attn_key_value_conv.weight": weights["kv.weight"],
        "attn_pos_emb.pos_emb_h": weights["pos_embed.height_rel"].T,
        "attn_pos_emb.pos_emb_w": weights["pos_embed.width_rel"].T,
    }


def kecam_param_counts(names) -> dict[str, int]:
    """kecam's parameter counts of the paper's HaloNets ("h0" -> kecam's `HaloNetH0`, 1000
    classes, no weights loaded)."""
    module = _kecam()
    counts = {}
    for name in names:
        with contextlib.redirect_stdout(io.StringIO()):  # kecam prints each input shape
            model = getattr(module, f"HaloNet{name.upper()}")(pretrained=None)
        counts[name] = int(sum(p.numel() for p in model.parameters()))
    return counts


def kecam_adapter() -> Adapter:
    """kecam's `halo_attention` (border "zeros", scale_pos_embed=False, pooling for odd blocks)."""
    _kecam()

    def run(config, x, weights, dout):
        dtype = torch.float64 if x.dtype == np.float64 else torch.float32
        module = kecam_module(config, dtype)

        def forward(xt, wt):
            return torch.func.functional_call(module, kecam_weights(wt), (xt,))

        return _torch_grads(x, weights, dout, forward)

    name = f"kecam {package_version('kecam')} (torch backend)"
    return Adapter(name, run, KECAM.reason, semantics=KECAM)


def flex_halo_attention(x, weights, config):
    """Halo attention as FlexAttention's mask_mod + score_mod (docs/flex_attention.md).

    x: (B, dim, H, W); weights: timm names -> tensors; config: a golden vector's config.
    Returns (B, dim_out, H/stride, W/stride).

    FlexAttention computes softmax(score_mod(scale * q.k) over the keys mask_mod allows) @ v
    over whole sequences: the queries are the pixels of the (possibly subsampled) query map,
    the keys and values the pixels of the key/value map padded with h zeros on every side.
    """
    B, _, H, W = x.shape
    heads, d_qk = config["num_heads"], config["dim_head"]
    d_v = config["dim_out"] // heads
    b, h = config["block_size"], config["halo_size"]
    win = b + 2 * h
    scale = d_qk**-0.5
    # stride 2: subsample the queries when the block splits in two, else attend then pool
    pool = config["stride"] == 2 and (config["avg_down"] or b % 2 == 1)
    s = 2 if config["stride"] == 2 and not pool else 1
    bq = b // s  # query block side

    q = F.conv2d(x, weights["q.weight"], weights.get("q.bias"), stride=s)
    Hq, Wq = q.shape[2:]
    q = q.reshape(B, heads, d_qk, Hq * Wq).transpose(-1, -2)  # B, heads, Lq, d_qk
    kv = F.pad(F.conv2d(x, weights["kv.weight"], weights.get("kv.bias")), [h, h, h, h])
    Hp, Wp = H + 2 * h, W + 2 * h
    kv = kv.reshape(B, heads, d_qk + d_v, Hp * Wp).transpose(-1, -2)  # B, heads, Lk, d_qk+d_v
    k, v = kv[..., :d_qk], kv[..., d_qk:]  # timm interleaves per head: [k_0|v_0|k_1|v_1|...]

    # each query against every table row; the score_mod picks one entry per (query, key)
    rel_h = q @ weights["pos_embed.height_rel"].T  # B, heads, Lq, 2*win - 1
    rel_w = q @ weights["pos_embed.width_rel"].T
    pos_scale = scale if config["scale_pos_embed"] else 1.0

    def window_coords(q_idx, kv_idx):
        """Query's place in its block (qy, qx); key's place in that block's window (ky, kx)."""
        qr, qc = q_idx // Wq, q_idx % Wq
        kr, kc = kv_idx // Wp, kv_idx % Wp  # padded coordinates
        # the window of block (qr // bq, qc // bq) starts at padded row (qr // bq) * b
        return qr % bq, qc % bq, kr - (qr // bq) * b, kc - (qc // bq) * b

    def mask_mod(batch, head, q_idx, kv_idx):
        _, _, ky, kx = window_coords(q_idx, kv_idx)
        keep = (ky >= 0) & (ky < win) & (kx >= 0) & (kx < win)
        if config["border"] == "mask":  # padded keys take no part in the softmax
            kr, kc = kv_idx // Wp, kv_idx % Wp
            keep = keep & (kr >= h) & (kr < H + h) & (kc >= h) & (kc < W + h)
        return keep

    def score_mod(score, batch, head, q_idx, kv_idx):
        qy, qx, ky, kx = window_coords(q_idx, kv_idx)
        # outside the window the row index can leave the table; mask_mod drops those keys
        row_h = (ky - qy + win - 1).clamp(0, 2 * win - 2)
        row_w = (kx - qx + win - 1).clamp(0, 2 * win - 2)
        pos = rel_h[batch, head, q_idx, row_h] + rel_w[batch, head, q_idx, row_w]
        return score + pos_scale * pos

    mask = fa.create_block_mask(mask_mod, None, None, Hq * Wq, Hp * Wp, device=x.device)
    out = fa.flex_attention(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale)
    out = out.transpose(-1, -2).reshape(B, heads * d_v, Hq, Wq)  # head-major channels
    return F.avg_pool2d(out, 2) if pool else out


@contextlib.contextmanager
def flex_cpu_backward():
    """Let autograd run FlexAttention's eager backward on CPU, which the public API refuses
    (torch 2.13: "FlexAttention does not support backward on CPU"). Unsupported by PyTorch;
    used only to check that backward's gradients, the learnable position logits' included.

    Shapes stay static: with torch's automatic dynamic shapes, the traced backward of a later
    call with new shapes failed here ("PendingUnbackedSymbolNotFound" while making fake
    tensors) after several earlier shapes had run; each shape traced anew passes.
    """
    import torch._dynamo

    guard = fa._validate_device

    def cpu_allowed(query, key, value):
        if query.device.type != "cpu":
            guard(query, key, value)

    fa._validate_device = cpu_allowed
    try:
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            yield
    finally:
        fa._validate_device = guard


def flex_adapter(backward: bool = False) -> Adapter:
    """Halo attention as FlexAttention's mask_mod + score_mod (`flex_halo_attention`), eager.

    backward=False: the public API, which on CPU runs forward only (gradients not compared).
    backward=True: also the gradients, by lifting FlexAttention's CPU guard so that autograd
    runs its eager (dense) backward; PyTorch does not support this path.
    """

    def run(config, x, weights, dout):
        with warnings.catch_warnings():
            # "called without torch.compile()": the unfused reference is what is checked
            warnings.filterwarnings("ignore", message="flex_attention called without")
            if backward:
                with flex_cpu_backward():
                    return _torch_grads(
                        x, weights, dout, lambda xt, wt: flex_halo_attention(xt, wt, config)
                    )
            dtype = torch.float64 if x.dtype == np.float64 else torch.float32
            with torch.no_grad():
                xt = torch.tensor(x, dtype=dtype)
                wt = {k: torch.tensor(v, dtype=dtype) for k, v in weights.items()}
                return flex_halo_attention(xt, wt, config).numpy(), None, None

    if backward:
        name = f"FlexAttention (torch {torch.__version__}, eager backward)"
        return Adapter(name, run, FLEX_EAGER_BACKWARD.reason, semantics=FLEX_EAGER_BACKWARD)
    return Adapter(f"FlexAttention (torch {torch.__version__})", run, FLEX.reason, semantics=FLEX)


def outside_adapter(name: str) -> Adapter:
    """The adapter of one of `halo_ref.verification.adapters.OUTSIDE_NAMES`."""
    return OUTSIDE_ADAPTERS[name]()


# `halo-ref verify --against NAME` (the names are `adapters.OUTSIDE_NAMES`, tested to agree)
OUTSIDE_ADAPTERS = {
    "lucidrains": lucidrains_adapter,
    "kecam": kecam_adapter,
    "flex": flex_adapter,
    "flex:backward": lambda: flex_adapter(backward=True),
}


# -- the model twin ------------------------------------------------------------------------------
class TwinSequential(nn.Module):
    """Named children applied in order (like halo_ref's Sequential, keeping its names)."""

    def __init__(self, named):
        super().__init__()
        for name, module in named:
            self.add_module(name, module)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


class TwinGlobalAvgPool(nn.Module):
    """Mean over H and W: (B, C, H, W) -> (B, C)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class TwinBottleneck(nn.Module):
    """halo_ref's HaloBottleneck in torch, including the zero padding to whole blocks."""

    def __init__(self, block: HaloBottleneck):
        super().__init__()
        self.stride, self.block_size = block.stride, block.block_size
        self.conv1 = convert(block.conv1)
        self.attn = convert(block.attn)
        self.post_attn = convert(block.post_attn)
        self.conv3 = convert(block.conv3)
        self.shortcut = convert(block.shortcut) if block.shortcut is not None else None
        self.act = convert(block.act)

    def forward(self, x):
        y = self.conv1(x)
        H, W = y.shape[2:]
        m = int(np.lcm(self.block_size, self.stride))
        y = F.pad(y, (0, -W % m, 0, -H % m))  # right, then bottom: zeros, as halo_ref
        y = self.attn(y)[:, :, : -(-H // self.stride), : -(-W // self.stride)]
        y = self.conv3(self.post_attn(y))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


def convert(m):
    """The torch module mirroring the halo_ref module `m` (weights not yet copied)."""
    if isinstance(m, HaloAttention):
        return timm_halo_attn_from(m)  # also copies the attention's weights
    if isinstance(m, HaloBottleneck):
        return TwinBottleneck(m)
    if isinstance(m, layers.Sequential):
        return TwinSequential([(name, convert(c)) for name, c in m.children().items()])
    if isinstance(m, layers.Conv2d):
        return nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            bias="bias" in m.params,
        )
    if isinstance(m, layers.BatchNorm2d):
        return nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
    if isinstance(m, layers.Linear):
        return nn.Linear(m.in_features, m.out_features, bias="bias" in m.params)
    if isinstance(m, layers.MaxPool2d):
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    simple = {
        layers.ReLU: nn.ReLU,
        layers.SiLU: nn.SiLU,
        layers.Identity: nn.Identity,
        layers.GlobalAvgPool: TwinGlobalAvgPool,
    }
    if type(m) in simple:
        return simple[type(m)]()
    raise TypeError(f"no torch twin for {type(m).__name__}")


def to_torch_state(state):
    """halo_ref state dict -> torch tensors (copies)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}


def torch_twin(model):
    """The torch twin of `model` with its weights and buffers, in the model's dtype and mode."""
    twin = convert(model)
    twin = twin.to(torch.float64 if model.dtype == np.float64 else torch.float32)
    twin.load_state_dict(to_torch_state(model.state_dict()), strict=True)
    twin.train(model.training)
    return twin


def build_twin(name: str, *, num_classes: int = 10, in_chans: int = 3, dtype=torch.float32):
    """The torch twin of halo_ref's model `name` (`halo_ref.models.CONFIGS`), in evaluation
    mode like a freshly loaded model (call ``twin.train()`` to train it), its weights initialised by
    halo_ref (seed 0): load trained ones with `load_state_dict`."""
    float64 = dtype == torch.float64
    model = halonet(name, num_classes=num_classes, in_chans=in_chans,
                    dtype=np.float64 if float64 else np.float32, rng=0)  # fmt: skip
    return torch_twin(model.eval())


def save_state(state, file) -> None:
    """torch.save a halo_ref state dict (name -> array) as torch tensors into an open file."""
    torch.save(to_torch_state(state), file)
