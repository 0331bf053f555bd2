"""Layers as modules: each wraps one forward/backward pair of `halo_ref.nn.functional` and its
weights.

A module's `forward` calls the functional forward and keeps the cache; its `backward` calls the
functional backward, stores the parameter gradients in `self._grads` and returns the gradient
for its input. Convolution, BatchNorm and SiLU run on the backend of `halo_ref.backend.current()`
(the NumPy formulas or their Numba kernels); the backward runs on the backend of its forward.
`Sequential` chains modules forward and walks them in reverse on the way back,
which is the whole of backpropagation for a network without branches; a residual block (see
`halo_ref.models.halonet`) adds the two gradients where its two branches met.

Parameter and buffer names and layouts are PyTorch's (`weight`, `bias`, `running_mean`,
`running_var`, `num_batches_tracked`), so state dicts move between the two unchanged.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .._checks import HaloRefError, check_feature_map, check_positive_int, float_dtype
from . import functional as F
from .init import as_generator, make_divisible, trunc_normal, uniform_fan_in
from .module import Module


class _Pair(Module):
    """A layer around one functional pair: `forward` keeps the pair's cache (and the backend
    that ran it) for `backward`."""

    _cache = None
    _backend = None

    def _check_cache(self):
        if self._cache is None:
            raise HaloRefError(f"{type(self).__name__}.backward: call forward before backward")


class Conv2d(_Pair):
    """Convolution with PyTorch's `Conv2d` weights: `weight` (O, C, k, k), `bias` (O,).

    x: (B, C, H, W) -> (B, O, Ho, Wo), Ho = (H + 2*padding - k) // stride + 1.
    Initialised like timm's ResNets: weight ~ N(0, 2 / fan_out) (He, for ReLU-like layers).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        *,
        stride=1,
        padding=0,
        bias=True,
        dtype=np.float32,
        rng=None,
    ):
        super().__init__()
        C = check_positive_int(in_channels, "in_channels")
        O = check_positive_int(out_channels, "out_channels")
        k = check_positive_int(kernel_size, "kernel_size")
        self.stride = check_positive_int(stride, "stride")
        self.padding = check_positive_int(padding, "padding", minimum=0)
        self.in_channels, self.out_channels, self.kernel_size = C, O, k
        self.dtype = float_dtype(dtype)
        rng = as_generator(rng)
        std = (2.0 / (O * k * k)) ** 0.5
        self.add_param("weight", trunc_normal(rng, (O, C, k, k), std, self.dtype, a=-1e9, b=1e9))
        if bias:
            self.add_param("bias", uniform_fan_in(rng, (O,), C * k * k, self.dtype))

    def __repr__(self):
        return (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={'bias' in self._params})"
        )

    def forward(self, x):
        """x: (B, C, H, W) -> (B, O, Ho, Wo)."""
        check_feature_map(
            x, "x", channels=self.in_channels, dtype=self.dtype, owner="Conv2d", finite=False
        )
        k, p = self.kernel_size, self.padding
        if min(x.shape[2:]) + 2 * p < k:
            raise HaloRefError(
                f"Conv2d: input {x.shape[2]}x{x.shape[3]} is smaller than the {k}x{k} kernel "
                f"(padding {p}); use larger images"
            )
        self._backend = backend.current()
        out, self._cache = self._backend.conv2d_forward(
            x, self._params["weight"], self._params.get("bias"), self.stride, p
        )
        return out

    def backward(self, dout):
        """dout: (B, O, Ho, Wo) -> dx (B, C, H, W); fills grads `weight` (and `bias`)."""
        self._check_cache()
        dx, dw, db = self._backend.conv2d_backward(dout, self._cache)
        self._grads = {"weight": dw} if db is None else {"weight": dw, "bias": db}
        return dx


class BatchNorm2d(_Pair):
    """PyTorch's `BatchNorm2d`: parameters `weight`, `bias`; buffers `running_mean`,
    `running_var`, `num_batches_tracked`. x: (B, C, H, W) -> (B, C, H, W).

    Training mode normalises with batch statistics and updates the running ones (momentum 0.1,
    unbiased running variance); evaluation mode uses the running statistics.
    """

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        C = check_positive_int(num_features, "num_features")
        self.num_features, self.eps, self.momentum = C, float(eps), float(momentum)
        self.dtype = float_dtype(dtype)
        self.add_param("weight", np.ones(C, self.dtype))
        self.add_param("bias", np.zeros(C, self.dtype))
        self.add_buffer("running_mean", np.zeros(C, self.dtype))
        self.add_buffer("running_var", np.ones(C, self.dtype))
        self.add_buffer("num_batches_tracked", np.zeros((), np.int64))

    def __repr__(self):
        return f"BatchNorm2d({self.num_features}, eps={self.eps}, momentum={self.momentum})"

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, H, W); in training, updates the running statistics."""
        check_feature_map(
            x, "x", channels=self.num_features, dtype=self.dtype, owner="BatchNorm2d", finite=False
        )
        p, b = self._params, self._buffers
        self._backend = backend.current()
        out, self._cache = self._backend.batchnorm2d_forward(
            x,
            p["weight"],
            p["bias"],
            b["running_mean"],
            b["running_var"],
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )
        if self.training:
            b["num_batches_tracked"] += 1
        return out

    def backward(self, dout):
        """dout: (B, C, H, W) -> dx; fills grads `weight`, `bias`."""
        self._check_cache()
        dx, dw, db = self._backend.batchnorm2d_backward(dout, self._cache)
        self._grads = {"weight": dw, "bias": db}
        return dx


class ReLU(_Pair):
    """max(x, 0), any shape."""

    def forward(self, x):
        out, self._cache = F.relu_forward(x)
        return out

    def backward(self, dout):
        self._check_cache()
        return F.relu_backward(dout, self._cache)


class SiLU(_Pair):
    """x * sigmoid(x), any shape (the activation of the paper's HaloNets)."""

    def forward(self, x):
        self._backend = backend.current()
        out, self._cache = self._backend.silu_forward(x)
        return out

    def backward(self, dout):
        self._check_cache()
        return self._backend.silu_backward(dout, self._cache)


class Identity(_Pair):
    """Returns its input; stands in where a configuration has no layer."""

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


ACTIVATIONS = {"relu": ReLU, "silu": SiLU, "identity": Identity}


class GroupedConv2d(Conv2d):
    """`Conv2d` with `groups` (PyTorch's layout: `weight` (O, C/groups, k, k)): output channel
    group i sees only input group i. x: (B, C, H, W) -> (B, O, Ho, Wo).

    Runs `halo_ref.nn.functional.grouped_conv2d_forward` (NumPy, one convolution per group)."""

    def __init__(self, in_channels, out_channels, kernel_size, *, groups, dtype=np.float32,
                 rng=None, **kwargs):  # fmt: skip
        groups = check_positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise HaloRefError(
                f"GroupedConv2d: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        super().__init__(
            in_channels // groups, out_channels, kernel_size, dtype=dtype, rng=rng, **kwargs
        )
        self.in_channels, self.groups = in_channels, groups

    def __repr__(self):
        return (
            super().__repr__().replace("Conv2d(", "GroupedConv2d(")[:-1]
            + f", groups={self.groups})"
        )

    def forward(self, x):
        """x: (B, C, H, W) -> (B, O, Ho, Wo)."""
        check_feature_map(
            x, "x", channels=self.in_channels, dtype=self.dtype, owner="GroupedConv2d", finite=False
        )
        p = self._params
        out, self._cache = F.grouped_conv2d_forward(
            x, p["weight"], p.get("bias"), self.stride, self.padding, self.groups
        )
        return out

    def backward(self, dout):
        """dout: (B, O, Ho, Wo) -> dx (B, C, H, W); fills grads `weight` (and `bias`)."""
        self._check_cache()
        dx, dw, db = F.grouped_conv2d_backward(dout, self._cache)
        self._grads = {"weight": dw} if db is None else {"weight": dw, "bias": db}
        return dx


class BatchNormAct2d(BatchNorm2d):
    """BatchNorm2d then an activation, under the BatchNorm's own names (timm's
    `BatchNormAct2d`, whose state-dict keys are `weight`, `bias`, `running_mean`, ...).
    x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_features, *, act="relu", dtype=np.float32, **kwargs):
        super().__init__(num_features, dtype=dtype, **kwargs)
        if act not in ACTIVATIONS:
            raise HaloRefError(f"act={act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[act]()  # no weights: an attribute, not a child

    def forward(self, x):
        return self.act.forward(super().forward(x))

    def backward(self, dout):
        return super().backward(self.act.backward(dout))


class SqueezeExcite(_Pair):
    """timm's `SEModule` (ReLU inside, sigmoid gate): `fc1.weight` (R, C, 1, 1), `fc1.bias`,
    `fc2.weight` (C, R, 1, 1), `fc2.bias`, with R = rd_channels. x: (B, C, H, W) -> same shape.
    Runs `halo_ref.nn.functional.squeeze_excite_forward`."""

    def __init__(self, channels, rd_channels, *, dtype=np.float32, rng=None):
        super().__init__()
        C = check_positive_int(channels, "channels")
        R = check_positive_int(rd_channels, "rd_channels")
        self.channels, self.dtype = C, float_dtype(dtype)
        rng, dt = as_generator(rng), self.dtype
        # He initialisation by fan-out, like every convolution here (timm's byobnet init)
        self.add_param(
            "fc1.weight", trunc_normal(rng, (R, C, 1, 1), (2 / R) ** 0.5, dt, a=-1e9, b=1e9)
        )
        self.add_param("fc1.bias", uniform_fan_in(rng, (R,), C, dt))
        self.add_param(
            "fc2.weight", trunc_normal(rng, (C, R, 1, 1), (2 / C) ** 0.5, dt, a=-1e9, b=1e9)
        )
        self.add_param("fc2.bias", uniform_fan_in(rng, (C,), R, dt))

    def __repr__(self):
        return f"SqueezeExcite({self.channels}, {self._params['fc1.bias'].size})"

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, H, W)."""
        check_feature_map(
            x, "x", channels=self.channels, dtype=self.dtype, owner="SqueezeExcite", finite=False
        )
        p = self._params
        out, self._cache = F.squeeze_excite_forward(
            x, p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"]
        )
        return out

    def backward(self, dout):
        """dout: (B, C, H, W) -> dx; fills grads `fc1.weight`, `fc1.bias`, `fc2.*`."""
        self._check_cache()
        dx, dw1, db1, dw2, db2 = F.squeeze_excite_backward(dout, self._cache)
        self._grads = {"fc1.weight": dw1, "fc1.bias": db1, "fc2.weight": dw2, "fc2.bias": db2}
        return dx


class EfficientChannelAttention(_Pair):
    """timm's `EcaModule`: `conv.weight` (1, 1, k), k = `eca_kernel_size(channels)`, no bias.
    x: (B, C, H, W) -> same shape. Runs `halo_ref.nn.functional.eca_forward`."""

    def __init__(self, channels, *, dtype=np.float32, rng=None):
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.dtype = float_dtype(dtype)
        k = F.eca_kernel_size(self.channels)
        self.add_param("conv.weight", uniform_fan_in(as_generator(rng), (1, 1, k), k, self.dtype))

    def __repr__(self):
        return (
            f"EfficientChannelAttention({self.channels}, k={self._params['conv.weight'].shape[-1]})"
        )

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, H, W)."""
        check_feature_map(
            x, "x", channels=self.channels, dtype=self.dtype, owner="EfficientChannelAttention",
            finite=False,
        )  # fmt: skip
        out, self._cache = F.eca_forward(x, self._params["conv.weight"])
        return out

    def backward(self, dout):
        """dout: (B, C, H, W) -> dx; fills grad `conv.weight`."""
        self._check_cache()
        dx, dw = F.eca_backward(dout, self._cache)
        self._grads = {"conv.weight": dw}
        return dx


class MaxPool2d(_Pair):
    """k x k max pooling with stride and -inf padding: (B, C, H, W) -> (B, C, Ho, Wo)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.stride = check_positive_int(stride or kernel_size, "stride")
        self.padding = check_positive_int(padding, "padding", minimum=0)
        if self.padding > self.kernel_size // 2:
            raise HaloRefError(
                f"MaxPool2d: padding={padding} is more than half of kernel_size="
                f"{self.kernel_size}, so some windows would hold only padding; use padding <= "
                f"{self.kernel_size // 2}"
            )

    def __repr__(self):
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"

    def forward(self, x):
        if min(x.shape[2:]) + 2 * self.padding < self.kernel_size:
            raise HaloRefError(f"MaxPool2d: input {x.shape[2:]} is smaller than the window")
        out, self._cache = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout):
        self._check_cache()
        return F.maxpool2d_backward(dout, self._cache)


class GlobalAvgPool(_Pair):
    """Mean over H and W: (B, C, H, W) -> (B, C)."""

    def forward(self, x):
        out, self._cache = F.global_avgpool_forward(x)
        return out

    def backward(self, dout):
        self._check_cache()
        return F.global_avgpool_backward(dout, self._cache)


class Linear(_Pair):
    """PyTorch's `Linear`: `weight` (O, I), `bias` (O,); x (B, I) -> (B, O).

    Initialised like timm's classifier heads: weight ~ N(0, 0.01^2), bias = 0.
    """

    def __init__(self, in_features, out_features, *, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.dtype = float_dtype(dtype)
        rng = as_generator(rng)
        shape = (self.out_features, self.in_features)
        self.add_param("weight", trunc_normal(rng, shape, 0.01, self.dtype))
        if bias:
            self.add_param("bias", np.zeros(self.out_features, self.dtype))

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'bias' in self._params})"

    def forward(self, x):
        """x: (B, I) -> (B, O)."""
        check_feature_map(
            x,
            "x",
            channels=self.in_features,
            dtype=self.dtype,
            owner="Linear",
            ndim=2,
            finite=False,
        )
        out, self._cache = F.linear_forward(x, self._params["weight"], self._params.get("bias"))
        return out

    def backward(self, dout):
        """dout: (B, O) -> dx (B, I); fills grads `weight` (and `bias`)."""
        self._check_cache()
        dx, dw, db = F.linear_backward(dout, self._cache)
        self._grads = {"weight": dw} if db is None else {"weight": dw, "bias": db}
        return dx


class Sequential(Module):
    """Children applied in order; backward walks them in reverse.

    Sequential(a, b, c) names the children "0", "1", "2" as `torch.nn.Sequential` does;
    Sequential(("conv", a), ("bn", b)) names them explicitly.
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            name, m = m if isinstance(m, tuple) else (str(i), m)
            self.add_child(name, m)

    def __iter__(self):
        return iter(self._children.values())

    def __len__(self):
        return len(self._children)

    def __getitem__(self, name):
        return self._children[str(name)]

    def __getattr__(self, name):
        # called only when normal lookup fails: lets `block.conv3.bn` reach a named child
        children = self.__dict__.get("_children", {})
        if name in children:
            return children[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or child {name!r}")

    def __repr__(self):
        inner = "".join(
            f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._children.items()
        )
        return f"{type(self).__name__}({inner}\n)"

    def forward(self, x):
        for m in self._children.values():
            x = m.forward(x)
        return x

    def backward(self, dout):
        for m in reversed(self._children.values()):
            dout = m.backward(dout)
        return dout


class ConvBnAct(Sequential):
    """Convolution (no bias) -> BatchNorm2d -> activation; children `conv`, `bn`, `act`.

    The unit every ResNet-like network is built from: the convolution needs no bias because
    BatchNorm's own bias follows it. groups > 1: a `GroupedConv2d`. The state-dict keys
    (`conv.weight`, `bn.*`) are those of timm's `ConvNormAct` too.
    """

    def __init__(
        self,
        in_ch,
        out_ch,
        kernel_size=1,
        *,
        stride=1,
        groups=1,
        act="relu",
        dtype=np.float32,
        rng=None,
    ):
        if act not in ACTIVATIONS:
            raise HaloRefError(f"act={act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        kwargs = dict(stride=stride, padding=kernel_size // 2, bias=False, dtype=dtype, rng=rng)
        if groups == 1:
            conv = Conv2d(in_ch, out_ch, kernel_size, **kwargs)
        else:
            conv = GroupedConv2d(in_ch, out_ch, kernel_size, groups=groups, **kwargs)
        super().__init__(
            ("conv", conv), ("bn", BatchNorm2d(out_ch, dtype=dtype)), ("act", ACTIVATIONS[act]())
        )


class BnAct(Sequential):
    """BatchNorm2d -> activation; children `bn`, `act` (after a layer that is not a conv)."""

    def __init__(self, channels, *, act="relu", dtype=np.float32):
        if act not in ACTIVATIONS:
            raise HaloRefError(f"act={act!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
        super().__init__(("bn", BatchNorm2d(channels, dtype=dtype)), ("act", ACTIVATIONS[act]()))


class LambdaLayer(_Pair):
    """timm's `LambdaLayer` with a local position lambda (LambdaNetworks, arXiv 2102.08602):
    children `qkv` (a 1x1 Conv2d without bias), `norm_q`, `norm_v` (BatchNorm2d); parameters
    `conv_lambda.weight` (K, 1, r, r, 1) and `conv_lambda.bias` (K,), timm's Conv3d shapes.

    x: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride). K = dim_head (default 16, or
    make_divisible(dim_out * qk_ratio, 8) // num_heads when dim_head is None), V = dim_out //
    num_heads. The qkv channels are [queries (heads*K) | keys (K) | values (V)]; queries and
    values are batch-normalised, keys go through a softmax over positions
    (`halo_ref.nn.functional.lambda_forward`). stride 2 pools 2x2 afterwards, as timm does.
    """

    def __init__(
        self,
        dim,
        dim_out=None,
        *,
        stride=1,
        num_heads=4,
        dim_head=16,
        r=9,
        qk_ratio=1.0,
        dtype=np.float32,
        rng=None,
    ):
        super().__init__()
        dim = check_positive_int(dim, "dim")
        dim_out = check_positive_int(dim_out, "dim_out") if dim_out is not None else dim
        heads = check_positive_int(num_heads, "num_heads")
        if dim_out % heads:
            raise HaloRefError(
                f"LambdaLayer: dim_out={dim_out} is not divisible by num_heads={heads}; "
                "choose num_heads that divides it"
            )
        r = check_positive_int(r, "r")
        if r % 2 == 0:
            raise HaloRefError(f"LambdaLayer: r={r} must be odd (a centred r x r neighbourhood)")
        if stride not in (1, 2):
            raise HaloRefError(f"LambdaLayer: stride={stride!r}; use 1 or 2")
        K = check_positive_int(dim_head, "dim_head") if dim_head else None
        K = K or make_divisible(dim_out * qk_ratio, divisor=8) // heads
        self.dim, self.dim_out, self.num_heads, self.stride = dim, dim_out, heads, stride
        self.dim_qk, self.dim_v, self.r = K, dim_out // heads, r
        self.dtype = float_dtype(dtype)
        rng, dt = as_generator(rng), self.dtype
        self.qkv = self.add_child(
            "qkv", Conv2d(dim, heads * K + K + self.dim_v, 1, bias=False, dtype=dt, rng=rng)
        )
        # timm's initialisation: fan-in for qkv, K ** -0.5 for the position kernel
        self.qkv.params["weight"][...] = trunc_normal(
            rng, self.qkv.params["weight"].shape, dim**-0.5, dt
        )
        self.norm_q = self.add_child("norm_q", BatchNorm2d(heads * K, dtype=dt))
        self.norm_v = self.add_child("norm_v", BatchNorm2d(self.dim_v, dtype=dt))
        self.add_param("conv_lambda.weight", trunc_normal(rng, (K, 1, r, r, 1), K**-0.5, dt))
        self.add_param("conv_lambda.bias", uniform_fan_in(rng, (K,), r * r, dt))

    def __repr__(self):
        return (
            f"LambdaLayer({self.dim}, {self.dim_out}, num_heads={self.num_heads}, "
            f"dim_qk={self.dim_qk}, dim_v={self.dim_v}, r={self.r}, stride={self.stride})"
        )

    def forward(self, x):
        """x: (B, dim, H, W) -> (B, dim_out, H/stride, W/stride)."""
        x = check_feature_map(x, "x", channels=self.dim, dtype=self.dtype, owner="LambdaLayer")
        if self.stride == 2 and (x.shape[2] % 2 or x.shape[3] % 2):
            raise HaloRefError(
                f"LambdaLayer: stride 2 pools 2x2, so H and W must be even, got {x.shape[2:]}"
            )
        heads, K = self.num_heads, self.dim_qk
        qkv = self.qkv.forward(x)
        q = self.norm_q.forward(np.ascontiguousarray(qkv[:, : heads * K]))
        k = qkv[:, heads * K : heads * K + K]
        v = self.norm_v.forward(np.ascontiguousarray(qkv[:, heads * K + K :]))
        p = self._params
        weight = p["conv_lambda.weight"][..., 0]  # K, 1, r, r: timm's Conv3d kernel (r, r, 1)
        out, cache = F.lambda_forward(q, k, v, weight, p["conv_lambda.bias"])
        pool = None
        if self.stride == 2:
            out, pool = F.avgpool2x2_forward(out)
        self._cache = (cache, pool)
        return out

    def backward(self, dout):
        """dout: (B, dim_out, H/stride, W/stride) -> dx; fills grads (qkv, norm_q, norm_v and
        conv_lambda's)."""
        self._check_cache()
        cache, pool = self._cache
        if pool is not None:
            dout = F.avgpool2x2_backward(dout, pool)
        dq, dk, dv, dweight, dbias = F.lambda_backward(dout, cache)
        dqkv = np.concatenate(
            [self.norm_q.backward(dq), dk, self.norm_v.backward(dv)], axis=1
        )  # B, heads*K + K + V, H, W: the qkv channel order
        self._grads = {"conv_lambda.weight": dweight[..., None], "conv_lambda.bias": dbias}
        return self.qkv.backward(dqkv)
