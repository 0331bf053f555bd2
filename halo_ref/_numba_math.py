"""Shared by the Numba kernels: an exp and a sigmoid that LLVM can vectorise, and a memcpy.

Numba compiles `np.exp` on a scalar to a call of the C library's `exp`/`expf` (no SIMD), and in
halo attention's softmax and in SiLU that call costs more than everything around it.
`exp_nonpos` computes exp(x) for x <= 0 (a softmax exponent after subtracting the maximum, or
-|x| in the sigmoid) in a form that vectorises: float32 with a short polynomial (`_exp_parts`,
within 4 ulp of the exact value) and the power of two built from its bits (`f32_from_bits`, a
bit cast); float64 with the exact `np.exp` (float64 paths must match the NumPy reference to
1e-12).

`copy_run` copies a run of elements with one memcpy. Numba cannot tell LLVM that two arrays do
not overlap, so a plain copy loop between two arrays is compiled to a scalar loop behind a
run-time overlap check; for the short runs of halo attention's gathers (a pixel's 16 channels,
a window row) the memcpy was measured 2-4x faster.

No fast-math flags, here or in any kernel: the same bits whatever the state of the kernel
cache. Numba compiles a called function twice, once on its own and once more inside every caller
that links it in (where LLVM optimises it again, in context), and a process runs whichever copy
was loaded first: a process that compiles runs the function's own copy, a process that loads
its callers from the disk cache runs a caller's copy. Fast-math flags ("reassoc", "contract")
let LLVM round each copy differently (measured: BatchNorm's dx and every gradient below it
differed by an ulp between a compiling and a loading process); without them every copy computes
exactly the written arithmetic. Loops still vectorise when each lane has its own sum (the
kernels sum across rows, not along one).

Editing this module: Numba's disk cache checks only the source file of each cached kernel, so
kernels elsewhere that inline these helpers keep their old compiled code. Delete the cache (the
folder `halo_ref._runtime.cache_dir()` names, `~/.cache/halo_ref/numba` by default) after a
change here.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]; ln 2 is split
# into a part exact in float32 and a small correction (Cody and Waite) so r keeps full precision.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.0)  # below this 2^n is subnormal; such weights are set to exactly 0
# Taylor coefficients 1/k!, k = 2..7: the truncation error on |r| <= 0.35 is below 1e-8
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits` (a bit cast, which vectorises)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def fma_f32(typingctx, a, b, c):
    """a * b + c for float32, rounded once (LLVM's fma intrinsic: the FMA instruction, which
    vectorises). Written explicitly it is the same operation in every copy of the code that
    LLVM makes, so it keeps the bits independent of how a kernel was compiled or loaded, which
    fast-math's contraction of a * b + c (a choice LLVM makes per copy) did not."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32] * 3))
        return builder.call(fma, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True, inline="always")
def _exp_parts(x):
    """(p, b) with exp(x) = p * 2^n for float32 x in [-87, 0], b the bits of the float 2^n.

    p = exp(r) by the Taylor polynomial, r = x - n ln 2, in fused multiply-adds; branch-free,
    so loops calling it vectorise.
    """
    k = np.floor(fma_f32(x, _LOG2E, np.float32(0.5)))
    r = fma_f32(-k, _LN2_LO, fma_f32(-k, _LN2_HI, x))
    p = fma_f32(r, _C7, _C6)
    p = fma_f32(r, p, _C5)
    p = fma_f32(r, p, _C4)
    p = fma_f32(r, p, _C3)
    p = fma_f32(r, p, _C2)
    p = fma_f32(r, p, np.float32(1.0))
    return fma_f32(r, p, np.float32(1.0)), (np.int32(k) + np.int32(127)) << np.int32(23)


@njit(cache=True, inline="always")
def _exp_nonpos_f32(x):
    """exp(x) for float32 x <= 0; exactly 0 for x <= -87 and for -inf (masked logits); NaN for
    NaN. Arithmetic instead of conditional expressions: inlined, those leave variables that
    Numba's IR checks report as out of scope."""
    p, bits = _exp_parts(max(x, _EXP_MIN))
    return p * f32_from_bits(np.int32(bits)) * np.float32(x > _EXP_MIN)


def exp_nonpos(x):
    """exp(x) for x <= 0 in jitted code: vectorisable in float32, exact in float64."""
    return np.exp(x)  # plain Python (NUMBA_DISABLE_JIT); compiled by the overload below


@overload(exp_nonpos, inline="always")
def _exp_nonpos_impl(x):
    if x == types.float32:
        return lambda x: _exp_nonpos_f32(x)
    return lambda x: np.exp(x)


@njit(cache=True, inline="always")
def _sigmoid_f32(x, sig):
    """sig = sigmoid(x) of a float32 run, from e = exp(-|x|) in [0, 1] (never overflows):
    1 / (1 + e) for x >= 0, e / (1 + e) below; one vectorised pass."""
    one = np.float32(1.0)
    for i in range(x.shape[0]):
        xi = x[i]
        e = _exp_nonpos_f32(-np.abs(xi))
        sig[i] = (one if xi >= 0 else e) / (one + e)


@njit(cache=True, inline="always")
def _sigmoid_f64(x, sig):
    """sig = sigmoid(x) of a float64 run with the exact np.exp, in the same stable form."""
    for i in range(x.shape[0]):
        e = np.exp(-np.abs(x[i]))
        sig[i] = (1.0 if x[i] >= 0 else e) / (1.0 + e)


def sigmoid_run(x, sig):
    """sig = sigmoid(x) elementwise over a 1-D run. Compiled per dtype by the overload below,
    inlined: called as a function with array slices as arguments, the loops were measured 4x
    slower."""
    raise NotImplementedError("only callable from jitted code")


@overload(sigmoid_run, inline="always")
def _sigmoid_run_impl(x, sig):
    if x.dtype == types.float32:
        return lambda x, sig: _sigmoid_f32(x, sig)
    return lambda x, sig: _sigmoid_f64(x, sig)


_INLINE_COPY_RUNS = (8, 16, 32, 64)  # run lengths (elements) copied without a call


@intrinsic
def copy_run(typingctx, dst, dst_start, src, src_start, n):
    """dst.flat[dst_start : dst_start + n] = src.flat[src_start : src_start + n] with one
    memcpy, for C-contiguous arrays of one dtype whose runs do not overlap (the caller's
    promise; nothing is checked at run time, as in any jitted indexing without bounds checks)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)):
        return None
    if dst.dtype != src.dtype or dst.layout != "C" or src.layout != "C":
        return None

    def codegen(context, builder, signature, args):
        dst_arr = context.make_array(signature.args[0])(context, builder, args[0])
        src_arr = context.make_array(signature.args[2])(context, builder, args[2])
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        to = builder.gep(dst_arr.data, [args[1]])
        frm = builder.gep(src_arr.data, [args[3]])
        n = args[4]
        # A memcpy of a constant size is expanded inline into a few vector moves; a run-time
        # size calls the C library (about 10 ns, as long as the copy of a pixel's 16 channels).
        # So the common short runs get a branch each, the rest the call.
        done = builder.append_basic_block("copy_run.done")
        for count in _INLINE_COPY_RUNS:
            is_count = builder.icmp_signed("==", n, n.type(count))
            with builder.if_then(is_count, likely=False):
                cgutils.raw_memcpy(builder, to, frm, n.type(count), itemsize)
                builder.branch(done)
        cgutils.raw_memcpy(builder, to, frm, n, itemsize)
        builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(dst, types.intp, src, types.intp, types.intp), codegen
