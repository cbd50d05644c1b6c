"""tinygrad layers: the same functions, names and layouts as numpy_ref/layers.py, over Tensors."""
import functools
import math

import numpy as np
from tinygrad import Tensor, UOp, dtypes
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.function import function
from tinygrad.renderer import Estimates
from tinygrad.uop.ops import AxisType, KernelInfo, Ops, ProgramInfo

from .beam import cpu_like

# ----------------------------------------------------------------------------
# Dense and convolution
# ----------------------------------------------------------------------------

def linear(x, w, b=None):
    """x (..., in) @ w.T (in, out) + b -> (..., out)"""
    # x materialized: a LayerNorm/modulate fused into the matmul is recomputed for every output column, and
    # kernels that are a plain matmul are the ones BEAM finds fast versions of
    x = x.contiguous()
    *lead, K = x.shape
    if _can_matmul_on_cpu(x.device, math.prod(lead), K, w.shape[0]):
        x = x.reshape(1, -1, K)
        return (_linear_cpu(x, w) if b is None else _linear_cpu_bias(x, w, b)).reshape(*lead, w.shape[0])
    y = x @ w.T
    return y if b is None else y + b


# ----------------------------------------------------------------------------
# Matmuls with fixed kernel options on a CPU (tinygrad schedule choices only: the same sums, in the same order)
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _on_cpu(device):
    return isinstance(device, str) and cpu_like(device)


def _on_opencl(device):
    return _on_cpu(device) and device.split(":")[0].upper() == "CL"


def _upcast(n, most=8):
    return next(u for u in (16, 8, 4, 2, 5, 3, 1) if u <= most and n % u == 0)


def _upcasts(sizes, *amounts):
    """UPCAST opts from (range index, amount) pairs over ranges of these sizes; ranges of length 1 are folded away
    before opts apply, so they do not count, and an amount of 1 is no opt"""
    return tuple(Opt(OptOps.UPCAST, sum(n > 1 for n in sizes[:ax]), u) for ax, u in amounts if u > 1)


def _matmul_kernel(transpose_a, transpose_b, has_bias):
    """C (Bt, M, N) = A (Bt, M, K) @ B (Bt, K, N) [+ bias (N,)] as a tinygrad custom kernel; A is read as (Bt, K, M)
    when transpose_a, B as (Bt, N, K) when transpose_b. Each work-item computes an 8x8 tile of C (as far as M and N
    divide). On a CPU (2 cores, PoCL, tokenfree-xs step) tinygrad's own matmuls ran at 35-57 GFLOPS after BEAM
    (width 2); these run at 85-95, the weight gradients (reductions over B*L rows) at 50-60. Used on tinygrad's CPU
    backend; OpenCL on a CPU gets _opencl_matmul_kernel"""
    def kernel(C, A, B, *bias):
        Bt, M, N = C.shape
        K = B.shape[2] if transpose_b else B.shape[1]
        n, i, j, k = UOp.range(Bt, 0), UOp.range(M, 1), UOp.range(N, 2), UOp.range(K, 3, AxisType.REDUCE)
        a = A[n, k, i] if transpose_a else A[n, i, k]
        b = B[n, j, k] if transpose_b else B[n, k, j]
        acc = (a * b).reduce(k, arg=Ops.ADD)
        if has_bias:
            acc = acc + bias[0][j]
        opts = _upcasts((Bt, M, N), (2, _upcast(N)), (1, _upcast(M)))
        if transpose_b and K % 4 == 0:
            opts += (Opt(OptOps.UNROLL, 0, 4),)                  # B read along k: 4 at a time
        name = f"matmul_{'nt'[transpose_a]}{'nt'[transpose_b]}_" + "_".join(map(str, (Bt, M, N, K)[Bt == 1:]))
        return C[n, i, j].store(acc).end(n, i, j).sink(arg=KernelInfo(name=name, opts_to_apply=opts))
    return kernel


def _opencl_matmul_source(name, Bt, M, N, K, transpose_a, has_bias, rows, width):
    """OpenCL C for C (Bt, M, N) = A @ B [+ bias]: each work-item a `rows` x `width` tile of C, one float`width`
    accumulator per row; per k one vector of B's row k, times each row's A element broadcast (a fused multiply-add)"""
    vec = f"float{width}" if width > 1 else "float"
    load_b = f"vload{width}(0, B + b0 + k*{N})" if width > 1 else f"B[b0 + k*{N}]"
    a_at = (lambda r: f"A[a0 + k*{M} + {r}]") if transpose_a else (lambda r: f"A[a0 + {r * K} + k]")
    bias_arg = ", __global const float* bias" if has_bias else ""
    lines = [f"__kernel void {name}(__global float* C, __global const float* A, __global const float* B{bias_arg}) {{",
             f"  int j = get_global_id(0) * {width}, i = get_global_id(1) * {rows}, n = get_global_id(2);",
             f"  int a0 = n*{M * K} + {'i' if transpose_a else f'i*{K}'}, b0 = n*{K * N} + j, c0 = n*{M * N} + i*{N} + j;",
             *(f"  {vec} acc{r} = 0.0f;" for r in range(rows)),
             f"  for (int k = 0; k < {K}; k++) {{",
             f"    {vec} b = {load_b};",
             *(f"    acc{r} = fma(({vec}){a_at(r)}, b, acc{r});" for r in range(rows)),
             "  }"]
    if has_bias:
        lines.append(f"  {vec} bias_j = {f'vload{width}(0, bias + j)' if width > 1 else 'bias[j]'};")
    for r in range(rows):
        value = f"acc{r} + bias_j" if has_bias else f"acc{r}"
        lines.append(f"  vstore{width}({value}, 0, C + c0 + {r * N});" if width > 1 else f"  C[c0 + {r * N}] = {value};")
    return "\n".join(lines + ["}"])


def _opencl_matmul_kernel(transpose_a, has_bias):
    """The matmul as an OpenCL program (PoCL, OpenCL on a CPU): tinygrad renders loads of at most 4 floats, so PoCL
    compiled its matmuls to 128-bit FMAs (~100 GFLOPS on 2 cores); float16 vectors give 512-bit ones (~280-330)"""
    def kernel(C, A, B, *bias):
        Bt, M, N = C.shape
        K = B.shape[1]
        rows, width = max(r for r in range(1, 17) if M % r == 0), next(w for w in (16, 8, 4, 2, 1) if N % w == 0)
        name = f"matmul_{'nt'[transpose_a]}n_" + "_".join(map(str, (Bt, M, N, K)[Bt == 1:]))
        source = _opencl_matmul_source(name, Bt, M, N, K, transpose_a, has_bias, rows, width)
        buffers = tuple(x.buf_uop for x in (C, A, B, *bias))
        moved = 4 * (Bt * (M * K + K * N + M * N) + N * len(bias))
        sink = UOp.sink(arg=KernelInfo(name=name, estimates=Estimates(ops=2 * Bt * M * N * K, lds=moved, mem=moved)))
        info = ProgramInfo(name=name, global_size=(N // width, M // rows, Bt), local_size=(1, 1, 1),
                           globals=tuple(range(len(buffers))), outs=(0,), ins=tuple(range(1, len(buffers))))
        return UOp(Ops.PROGRAM, src=(sink, UOp(Ops.LINEAR, src=buffers), UOp(Ops.SOURCE, arg=source)), arg=info)
    return kernel


def _matmul(a, b, bias=None, transpose_a=False, transpose_b=False):
    """a (Bt, M, K) or, with transpose_a, (Bt, K, M); b (Bt, K, N) or, with transpose_b, (Bt, N, K); bias (N,) or
    None -> (Bt, M, N). Inputs are laid out contiguous first (custom kernels index their buffers directly)"""
    shape = (a.shape[0], a.shape[2] if transpose_a else a.shape[1], b.shape[1] if transpose_b else b.shape[2])
    if _on_opencl(a.device):
        if transpose_b:                        # b laid out (Bt, K, N) first: a small copy, so B's rows load as vectors
            b = b.transpose(1, 2).contiguous()
        kernel = _opencl_matmul_kernel(transpose_a, bias is not None)
    else:
        kernel = _matmul_kernel(transpose_a, transpose_b, bias is not None)
    return Tensor.empty(*shape, device=a.device).custom_kernel(a, b, *([] if bias is None else [bias]), fxn=kernel)[0]


def _reduce_range(n, axis):
    """A reduce range, or index 0 for a length-1 one (tinygrad folds that to a constant under its reduce, an error)"""
    return UOp.range(n, axis, AxisType.REDUCE) if n > 1 else 0


def _sum_over(x, *ranges):
    ranges = [r for r in ranges if isinstance(r, UOp)]
    return x.reduce(*ranges, arg=Ops.ADD) if ranges else x


def _column_sums_kernel(C, A, *B):
    """C (Bt, N)[b, j] = the sum over m of A (Bt, M, N)[b, m, j], times B[b, m, j] when B is given: 8 columns a
    work-item (tinygrad's column sums ran at 1-3 GFLOPS here: bias, norm and adaLN gradients)"""
    Bt, M, N = A.shape
    b, j, m = UOp.range(Bt, 0), UOp.range(N, 1), _reduce_range(M, 2)
    x = A[b, m, j] * B[0][b, m, j] if B else A[b, m, j]
    name = f"column_{'dots' if B else 'sums'}_" + "_".join(map(str, (Bt, M, N)[Bt == 1:]))
    return C[b, j].store(_sum_over(x, m)).end(b, j).sink(arg=KernelInfo(name=name, opts_to_apply=_upcasts(
        (Bt, N), (1, _upcast(N)))))


def _column_sums(a, b=None):
    """a (..., M, N) [* b] summed over M -> (..., N); a and b are laid out contiguous first"""
    *lead, M, N = a.shape
    args = [z.reshape(-1, M, N) for z in ((a,) if b is None else (a, b))]
    out = Tensor.empty(args[0].shape[0], N, device=a.device).custom_kernel(*args, fxn=_column_sums_kernel)[0]
    return out.reshape(*lead, N)


def _can_matmul_on_cpu(device, *dims):
    return _on_cpu(device) and min(dims) > 1                     # (a length-1 reduce range is folded away)


def _linear_cpu_grad(g, call, has_bias):
    """dx = g @ w, dw = g^T @ x, db = g summed over rows: matmuls that read their B operand along its rows"""
    x, w = Tensor(call.src[1]), Tensor(call.src[2])
    g = Tensor(g).contiguous()                                                   # (1, M, N)
    grads = (_matmul(g, w.unsqueeze(0)).uop, _matmul(g, x, transpose_a=True)[0].uop)   # (1, M, K), (N, K)
    if has_bias:
        db = _column_sums(g.reshape(g.shape[1:]))
        grads += (db.uop,)
    return grads + (None,) * (len(call.src) - 1 - len(grads))                   # none for the output buffer


@function(grad_fxn=functools.partial(_linear_cpu_grad, has_bias=True), allow_implicit=True)
def _linear_cpu_bias(x, w, b):
    """x (1, M, K), w (N, K), b (N,) -> x @ w.T + b (1, M, N); w.T is laid out (K, N) first (a small copy)"""
    return _matmul(x, w.T.contiguous().unsqueeze(0), b)


@function(grad_fxn=functools.partial(_linear_cpu_grad, has_bias=False), allow_implicit=True)
def _linear_cpu(x, w):
    """x (1, M, K), w (N, K) -> x @ w.T (1, M, N)"""
    return _matmul(x, w.T.contiguous().unsqueeze(0))


def _bmm_cpu_grad(g, call, transpose_b):
    """a @ b: da = g @ b^T, db = a^T @ g; a @ b^T: da = g @ b, db = g^T @ a"""
    a, b = Tensor(call.src[1]), Tensor(call.src[2])
    g = Tensor(g).contiguous()
    if transpose_b:
        grads = (_matmul(g, b).uop, _matmul(g, a, transpose_a=True).uop)
    else:
        grads = (_matmul(g, b, transpose_b=True).uop, _matmul(a, g, transpose_a=True).uop)
    return grads + (None,) * (len(call.src) - 1 - len(grads))


@function(grad_fxn=functools.partial(_bmm_cpu_grad, transpose_b=False), allow_implicit=True)
def _bmm_cpu(a, b):
    """a (Bt, M, K), b (Bt, K, N) -> a @ b (Bt, M, N)"""
    return _matmul(a, b)


@function(grad_fxn=functools.partial(_bmm_cpu_grad, transpose_b=True), allow_implicit=True)
def _bmm_nt_cpu(a, b):
    """a (Bt, M, K), b (Bt, N, K) -> a @ b^T (Bt, M, N)"""
    return _matmul(a, b, transpose_b=True)


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """x (B, Cin, H, W), w (Cout, Cin/groups, kh, kw) -> (B, Cout, Ho, Wo)"""
    Cout, Cg, kh, kw = w.shape
    if x.shape[1] != Cg * groups:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels, weight expects {Cg * groups}")
    if Cg == 1 and Cout == groups > 1 and stride == 1 and kh == kw == 2 * padding + 1:
        return _depthwise_same_conv2d(x, w, b)
    return x.conv2d(w, b, groups=groups, stride=stride, padding=padding)


def _depthwise_same_conv2d_grad(g, call):
    """dx, dw(, db) of a stride-1 'same' depthwise conv, given g (B, C, H, W): dx is the conv of g with the flipped
    kernel, dw tinygrad's own weight gradient. tinygrad's own dx is a reduction kernel that ran at 5 GFLOPS on a
    CPU (tokenfree-xs pos_conv, heuristics: 10.3 ms of a ~14 ms backward; ~1.3 ms this way). numpy_ref is unchanged:
    this is a tinygrad schedule choice only"""
    x, w, *b = (Tensor(u) for u in call.src[1:])
    g, C, pad = Tensor(g).contiguous(), w.shape[0], w.shape[2] // 2   # dx, dw, db all read g: lay it out once
    dx = g.conv2d(w.flip((2, 3)), groups=C, padding=pad)                      # (B, C, H, W)
    w_ = w.detach()
    (dw,) = x.conv2d(w_, groups=C, padding=pad).gradient(w_, gradient=g)       # (C, 1, k, k)
    return (dx.uop, dw.uop) + ((g.sum((0, 2, 3)).uop,) if b else ())


@function(grad_fxn=_depthwise_same_conv2d_grad)
def _depthwise_same_conv2d(x, w, b=None):
    """x (B, C, H, W), w (C, 1, k, k), odd k, padding k // 2 -> (B, C, H, W); the same numbers as x.conv2d"""
    return x.conv2d(w, b, groups=w.shape[0], padding=w.shape[2] // 2)


def token_depthwise_conv(x, w, b, hw):
    """x (B, L, C): the tokens of an (H, W) map, row by row; w (C, 1, k, k), odd k; b (C,) -> (B, L, C): the
    'same' depthwise conv2d of that map, computed in token (channels-last) layout, so no transposes around it"""
    B, L, C = x.shape
    (H, W), k = hw, w.shape[-1]
    # (with k, H or W at 1 tinygrad merges the kernels' ranges, and their fixed opts would name the wrong axes)
    if _on_cpu(x.device) and min(k, H, W) > 1:
        return _token_depthwise_conv_cpu(tuple(hw))(x.contiguous(), w, b)
    r = k // 2
    xp = x.reshape(B, H, W, C).pad(((0, 0), (r, r), (r, r), (0, 0)))        # (B, H+2r, W+2r, C)
    y = sum(xp[:, i:i + H, j:j + W] * w[:, 0, i, j] for i in range(k) for j in range(k))
    return (y + b).reshape(B, L, C)


# ----------------------------------------------------------------------------
# The token-layout depthwise conv on a CPU: custom kernels vectorized along the channels (tinygrad's own fused the
# conv into every GELU that read it and vectorized along the map, not the channels)
# ----------------------------------------------------------------------------

def _pad_map(x, hw, r):
    """x (B, L, C) -> its (H, W) map zero-padded by r, laid out (B, H+2r, W+2r, C)"""
    B, L, C = x.shape
    return x.reshape(B, *hw, C).pad(((0, 0), (r, r), (r, r), (0, 0))).contiguous()


def _taps(w):
    """w (C, 1, k, k) -> (k, k, C): the weights of each tap contiguous over the channels"""
    C, k = w.shape[0], w.shape[-1]
    return w.reshape(C, k, k).permute(1, 2, 0).contiguous()


def _depthwise_kernel(has_bias):
    """Y (B, H, W, C) = sum over taps (i, j) of XP (B, H+2r, W+2r, C)[b, y+i, x+j, c] * WT (k, k, C)[i, j, c] [+ bias]"""
    def kernel(Y, XP, WT, *bias):
        B, H, W, C = Y.shape
        k = WT.shape[0]
        b, y, x, c = (UOp.range(n, a) for a, n in enumerate((B, H, W, C)))
        acc = None
        for i in range(k):
            for j in range(k):
                t = XP[b, y + i, x + j, c] * WT[i, j, c]
                acc = t if acc is None else acc + t
        if has_bias:
            acc = acc + bias[0][c]
        # 16 channels by a row of 8 positions a work-item: 2x faster than 8 channels alone (the taps overlap along x)
        opts = _upcasts((B, H, W, C), (3, _upcast(C, 16)), (2, _upcast(W)))
        return Y[b, y, x, c].store(acc).end(b, y, x, c).sink(arg=KernelInfo(
            name=f"depthwise_{k}x{k}_{B}_{H}_{W}_{C}", opts_to_apply=opts))
    return kernel


def _depthwise(xp, wt, bias, hw):
    """xp (B, H+2r, W+2r, C), wt (k, k, C), bias (C,) or None -> (B, H*W, C)"""
    B, C = xp.shape[0], xp.shape[3]
    y = Tensor.empty(B, *hw, C, device=xp.device).custom_kernel(xp, wt, *([] if bias is None else [bias]),
                                                                 fxn=_depthwise_kernel(bias is not None))[0]
    return y.reshape(B, -1, C)


def _depthwise_dw_kernel(P, G, XP):
    """P (B, k, k, C)[b, i, j, c] = sum over (y, x) of G (B, H, W, C)[b, y, x, c] * XP[b, y+i, x+j, c]: the weight
    gradient per batch element (one element's map stays in cache); summed over b after"""
    B, k, _, C = P.shape
    H, W = G.shape[1], G.shape[2]
    b, i, j, c = (UOp.range(n, a) for a, n in enumerate((B, k, k, C)))
    y, x = _reduce_range(H, 4), _reduce_range(W, 5)
    acc = _sum_over(G[b, y, x, c] * XP[b, y + i, x + j, c], y, x)
    opts = _upcasts((B, k, k, C), (3, _upcast(C, 16)), (2, k), (1, k))          # 16 channels x all taps
    return P[b, i, j, c].store(acc).end(b, i, j, c).sink(arg=KernelInfo(name=f"depthwise_dw_{B}_{k}_{H}_{W}_{C}",
                                                                       opts_to_apply=opts))


def _token_depthwise_conv_grad(g, call, hw):
    """dx: the same conv of g with the kernel flipped; dw: per-element reductions, then summed; db: g's column sums"""
    x, w = Tensor(call.src[1]), Tensor(call.src[2])
    B, L, C = x.shape
    k = w.shape[-1]
    g = Tensor(g).contiguous()                                                   # (B, L, C)
    dx = _depthwise(_pad_map(g, hw, k // 2), _taps(w.flip((2, 3))), None, hw)
    part = Tensor.empty(B, k, k, C, device=g.device).custom_kernel(g.reshape(B, *hw, C), _pad_map(x, hw, k // 2),
                                                                   fxn=_depthwise_dw_kernel)[0]
    dw, db = _column_sums(part.reshape(B, k * k * C)), _column_sums(g.reshape(B * L, C))
    return (dx.uop, dw.reshape(k, k, C).permute(2, 0, 1).reshape(C, 1, k, k).uop, db.uop) + (None,) * (len(call.src) - 4)


@functools.lru_cache(maxsize=None)
def _token_depthwise_conv_cpu(hw):
    """token_depthwise_conv for one map size (H, W), with its own backward"""
    def conv(x, w, b):
        return _depthwise(_pad_map(x, hw, w.shape[-1] // 2), _taps(w), b, hw)
    return function(conv, grad_fxn=functools.partial(_token_depthwise_conv_grad, hw=hw), allow_implicit=True)


def conv_transpose2d(x, w, b=None, stride=1, padding=0):
    """x (B, Cin, H, W), w (Cin, Cout, kh, kw) -> (B, Cout, (H-1)*stride - 2*padding + kh, ...)"""
    return x.conv_transpose2d(w, b, stride=stride, padding=padding)


# ----------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------

def layer_norm(x, w=None, b=None, eps=1e-6):
    """Normalise over the last axis: x (..., D) -> (..., D); w, b (D,) or None (no affine)."""
    y = x.layernorm(-1, eps)
    rows = math.prod(x.shape[:-1])
    if w is not None and b is not None and _can_matmul_on_cpu(x.device, rows, x.shape[-1]):
        return _affine_cpu(y.reshape(rows, -1).contiguous(), w, b).reshape(x.shape)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def _affine_cpu_grad(g, call):
    """dx = g * w; dw, db: column reductions over the rows (tinygrad's ran at ~3 GFLOPS: 12 ms of U-ViT's step)"""
    x, w = Tensor(call.src[1]), Tensor(call.src[2])
    g = Tensor(g).contiguous()                                                   # (M, N)
    dw, db = _column_sums(g, x), _column_sums(g)
    return ((g * w).uop, dw.uop, db.uop) + (None,) * (len(call.src) - 4)


@function(grad_fxn=_affine_cpu_grad, allow_implicit=True)
def _affine_cpu(x, w, b):
    """x (M, N) * w (N,) + b (N,), with its own backward"""
    return x * w + b


def group_norm(x, groups, w=None, b=None, eps=1e-5):
    """x (B, C, H, W) -> (B, C, H, W), statistics over each group of C/groups channels and all pixels."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"group_norm: {C} channels do not split into {groups} groups")
    y = x.reshape(B, groups, -1).layernorm(-1, eps).reshape(B, C, H, W)
    if w is not None:
        y = y * w.reshape(1, C, 1, 1)
    return y if b is None else y + b.reshape(1, C, 1, 1)


# ----------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------

def _exp(x):
    """exp(x) as plain arithmetic (no gradient; callers save what their backward needs): x (...) -> (...).
    A CPU's OpenCL (PoCL) runs the exp2 builtin as a scalar call per element; written as arithmetic the compiler
    vectorizes it: 1M floats 0.68 ms instead of 2.5 ms, max relative error 1.4e-7 (the builtin: 1.8e-6)"""
    x = x.detach().maximum(-87.3).minimum(88.0)                  # 2^n stays a normal float32 (saturates at exp(88))
    n_int = (x * (1 / math.log(2)) + 128.5).cast(dtypes.int32) - 128    # round(x / ln 2): truncation of a positive
    n = n_int.cast(dtypes.float32)
    r = x - n * 0.693145751953125 - n * 1.428606765330187e-06    # x - n ln 2, ln 2 split in two: |r| <= ln(2) / 2
    p = 1 / 5040
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0):  # Taylor to r^7, Horner
        p = p * r + c
    return p * ((n_int + 127) * (1 << 23)).bitcast(dtypes.float32)   # times 2^n, written into the exponent bits


def erf(x):
    return x.erf()


def gelu(x, approximate="erf"):
    """GELU; approximate="erf" is the exact form (U-ViT), "tanh" the GPT-2/DiT approximation."""
    if approximate not in ("erf", "tanh"):
        raise ValueError(f"gelu: approximate must be 'erf' or 'tanh', got {approximate!r}")
    if approximate == "erf" and _on_cpu(x.device):
        return _gelu_erf_cpu(x.contiguous())
    # materialized in both passes: otherwise every weight-gradient reduction downstream recomputes erf/tanh per term
    x = x.contiguous_backward()
    if approximate == "tanh":
        return x.gelu(approximate="tanh").contiguous()
    value, slope = _gelu_erf_value_and_slope(x, materialize=True)
    return (value + (x - x.detach()) * slope).contiguous()      # x - x.detach(): zero in value, identity in gradient


def _gelu_erf_value_and_slope(x, materialize=False):
    """GELU(x) and its slope Phi(x) + x phi(x), with no gradient. erf as in numpy_ref (Abramowitz & Stegun 7.1.26,
    tinygrad's Tensor.erf), its exp computed once: the backward multiplies by the exact slope instead of
    differentiating the formula again (on a CPU exp was most of GELU's cost; see _exp)"""
    y = x * (1 / math.sqrt(2))
    e = _exp(-y.square())                                        # exp(-x^2 / 2)
    e = e.contiguous() if materialize else e
    t = 1.0 / (1.0 + 0.3275911 * y.abs())
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf_y = y.sign() * (1.0 - poly * e)                           # erf(x / sqrt(2))
    value = (0.5 * x * (1.0 + erf_y)).detach()
    slope = (0.5 * (1.0 + erf_y) + x * e * (1 / math.sqrt(2 * math.pi))).detach()
    return value, (slope.contiguous() if materialize else slope)


def _gelu_erf_cpu_grad(g, call):
    """g * slope, the slope recomputed from x in the same kernel (one pass, nothing saved but x)"""
    return ((Tensor(g) * _gelu_erf_value_and_slope(Tensor(call.src[1]))[1]).uop,)


@function(grad_fxn=_gelu_erf_cpu_grad, allow_implicit=True)
def _gelu_erf_cpu(x):
    """GELU (erf form) with its own backward: one kernel forward, one backward (the general path made five)"""
    return _gelu_erf_value_and_slope(x)[0]


def sigmoid(x):
    return x.sigmoid()


def silu(x):
    return x.silu()


def softmax(x, axis=-1):
    # exp once, in the forward; the backward is p * (g - sum(g * p)) from the saved p, with no exp at all
    if axis in (-1, x.ndim - 1) and _can_matmul_on_cpu(x.device, x.shape[-1], math.prod(x.shape[:-1])):
        return _softmax_cpu(x.contiguous())
    e = _exp(x - x.max(axis, keepdim=True)).contiguous()
    p = (e / e.sum(axis, keepdim=True)).detach().contiguous()
    u = x - x.detach()                                           # zero in value, identity in gradient
    return p + p * (u - (p * u).sum(axis, keepdim=True))         # value p, Jacobian diag(p) - p p^T


def _row_sums_kernel(D, A, *B):
    """D (R,) = the sums of the rows of A (R, n), of A * B when B is given: 8 rows a work-item, 4 columns at a time
    (tinygrad spread each row over a work-group: the softmax backward's took ~1 ms a block, at 2 GFLOPS)"""
    (R, n) = A.shape
    r, c = UOp.range(R, 0), _reduce_range(n, 1)
    opts = _upcasts((R,), (0, _upcast(R))) + ((Opt(OptOps.UNROLL, 0, 4),) if n % 4 == 0 else ())
    x = A[r, c] * B[0][r, c] if B else A[r, c]
    return D[r].store(_sum_over(x, c)).end(r).sink(arg=KernelInfo(
        name=f"row_{'dots' if B else 'sums'}_{R}_{n}", opts_to_apply=opts))


def _row_sums(a, b=None):
    """a (..., n) [* b] summed over its last axis -> (...,); a and b are laid out contiguous first"""
    n = a.shape[-1]
    args = [z.reshape(-1, n) for z in ((a,) if b is None else (a, b))]
    return Tensor.empty(args[0].shape[0], device=a.device).custom_kernel(*args, fxn=_row_sums_kernel)[0].reshape(a.shape[:-1])


def _softmax_cpu_grad(g, call):
    """dx = p * (g - rowdot(g, p)), p the saved output"""
    p, g = Tensor(call.gettuple(0)), Tensor(g).contiguous()
    return ((p * (g - _row_sums(g, p).unsqueeze(-1))).uop,)


@function(grad_fxn=_softmax_cpu_grad, allow_implicit=True)
def _softmax_cpu(x):
    """softmax over the last axis with its own backward"""
    e = _exp(x - x.max(-1, keepdim=True)).contiguous()
    return e / e.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------

def attention(q, k, v, bias=None):
    """Scaled dot-product attention. q (B, h, Lq, d), k/v (B, h or 1, Lk, d), bias broadcast to (B, h, Lq, Lk)."""
    B, h, Lq, d = q.shape
    Lk = k.shape[2]
    on_cpu = k.shape[:2] == v.shape[:2] == (B, h) and _can_matmul_on_cpu(q.device, Lq, Lk, d, v.shape[3])
    # On a CPU keys and values get zero rows up to a multiple of 16 when Lk is not a multiple of 8 (U-ViT's 65 tokens):
    # the matmuls and softmax kernels vectorize along Lk only at a power-of-two tile (at 65: 25 GFLOPS, not ~90). The
    # padded keys' logits are -1e30, their probabilities exp(-87.3) ~ 1e-38 (lost in the row sum), their values zero
    pad = -Lk % 16 if on_cpu and Lk % 8 else 0
    if on_cpu:
        k, v = (z.pad(((0, 0), (0, 0), (0, pad), (0, 0))) for z in (k, v))
        q, k, v = (z.contiguous().reshape(B * h, z.shape[2], z.shape[3]) for z in (q, k, v))
        logits = _bmm_nt_cpu(q, k).reshape(B, h, Lq, Lk + pad) * (1.0 / math.sqrt(d))
    else:
        logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))             # (B, h, Lq, Lk)
    if bias is not None:
        logits = logits + (bias.expand(B, h, Lq, Lk).pad(((0, 0),) * 3 + ((0, pad),)) if pad else bias)
    if pad:
        logits = logits + Tensor.full((Lk,), 0.0, device=logits.device).pad(((0, pad),), value=-1e30)
    # logits, probabilities and both their gradients are materialized once: otherwise the softmax (exp) is
    # recomputed inside the P @ V matmul and inside the gradient reductions of q, k and v
    probs = softmax(logits.contiguous_backward().contiguous(), -1).contiguous().contiguous_backward()
    if on_cpu:
        return _bmm_cpu(probs.reshape(B * h, Lq, Lk + pad), v).reshape(B, h, Lq, v.shape[2])
    return probs @ v                                                      # (B, h, Lq, d)


def split_heads(x, heads):
    """(B, L, h*d) -> (B, h, L, d)"""
    B, L, D = x.shape
    return x.reshape(B, L, heads, D // heads).permute(0, 2, 1, 3)


def merge_heads(x):
    """(B, h, L, d) -> (B, L, h*d)"""
    B, h, L, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, L, h * d)


def multi_head_attention(x, p, prefix, heads):
    """Self-attention with a fused qkv projection: x (B, L, D) -> (B, L, D)."""
    qkv = linear(x, p[f"{prefix}.qkv.weight"], p.get(f"{prefix}.qkv.bias"))   # (B, L, 3D)
    # separate gradient buffers for q, k, v: one fused gradient kernel of all three is far slower on CPU
    q, k, v = (z.contiguous_backward() for z in qkv.chunk(3, dim=-1))         # 3 x (B, L, D)
    o = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
    return linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])


# ----------------------------------------------------------------------------
# Conditioning and reshapes
# ----------------------------------------------------------------------------

def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding [cos, sin] of timesteps t (B,) -> (B, dim) float32 (zero-padded if dim is odd)."""
    t = t if isinstance(t, Tensor) else Tensor(np.asarray(t, dtype=np.float32).reshape(-1))
    half = dim // 2
    freqs = Tensor(np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half).astype(np.float32),
                   device=t.device)
    args = t.reshape(-1, 1).cast(dtypes.float32) * freqs.reshape(1, half)
    emb = args.cos().cat(args.sin(), dim=-1)
    return emb.pad(((0, 0), (0, 1))) if dim % 2 else emb


def modulate(x, shift, scale):
    """adaLN: x (B, L, D), shift/scale (B, D) -> x * (1 + scale) + shift"""
    if _can_matmul_on_cpu(x.device, *x.shape[1:]):
        return _modulate_cpu(x.contiguous(), shift, scale)
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _modulate_cpu_grad(g, call):
    """dx = g * (1 + scale); dshift, dscale: per-sample column reductions over L"""
    x, scale = Tensor(call.src[1]), Tensor(call.src[3])
    g = Tensor(g).contiguous()                                                   # (B, L, D)
    return ((g * (1.0 + scale.unsqueeze(1))).uop, _column_sums(g).uop, _column_sums(g, x).uop) + \
        (None,) * (len(call.src) - 4)


@function(grad_fxn=_modulate_cpu_grad, allow_implicit=True)
def _modulate_cpu(x, shift, scale):
    """modulate with its own backward"""
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def depth_to_space(x, r):
    """Pixel shuffle (PyTorch order): (B, C*r*r, H, W) -> (B, C, H*r, W*r)."""
    B, Crr, H, W = x.shape
    C = Crr // (r * r)
    return x.reshape(B, C, r, r, H, W).permute(0, 1, 4, 2, 5, 3).reshape(B, C, H * r, W * r)


def space_to_depth(x, r):
    """Inverse of depth_to_space: (B, C, H*r, W*r) -> (B, C*r*r, H, W)."""
    B, C, Hr, Wr = x.shape
    x = x.reshape(B, C, Hr // r, r, Wr // r, r).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C * r * r, Hr // r, Wr // r)


def embedding(ids, table):
    """ids (B,) int -> (B, D) rows of table (N, D)"""
    ids = ids if isinstance(ids, Tensor) else Tensor(np.asarray(ids, dtype=np.int32), device=table.device)
    return table[ids]
