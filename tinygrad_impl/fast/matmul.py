"""Matmuls on a CPU: linear and batched matmuls with their own backwards.

tinygrad's CPU backend gets UOp kernels with fixed tiles (8x8 outputs a work-item); OpenCL on a CPU gets OpenCL C
programs, because tinygrad renders loads of at most 4 floats and PoCL then compiles 128-bit FMAs only, while float16
vectors give 512-bit ones. Same sums in the same order as tinygrad's own matmul (the bias added last).
"""
import functools

from tinygrad import Tensor, UOp
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.function import function
from tinygrad.renderer import Estimates
from tinygrad.uop.ops import AxisType, KernelInfo, Ops, ProgramInfo

from . import on_opencl
from .reduce import backward_grads, column_sums, laid_out, upcast, upcasts

# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------

def _matmul_kernel(transpose_a, transpose_b, has_bias):
    """C (Bt, M, N) = A (Bt, M, K) @ B (Bt, K, N) [+ bias (N,)] as a tinygrad custom kernel; A is read as (Bt, K, M)
    when transpose_a, B as (Bt, N, K) when transpose_b. Each work-item computes an 8x8 tile of C (as far as M and N
    divide)"""
    def kernel(C, A, B, *bias):
        Bt, M, N = C.shape
        K = B.shape[2] if transpose_b else B.shape[1]
        n, i, j, k = UOp.range(Bt, 0), UOp.range(M, 1), UOp.range(N, 2), UOp.range(K, 3, AxisType.REDUCE)
        a = A[n, k, i] if transpose_a else A[n, i, k]
        b = B[n, j, k] if transpose_b else B[n, k, j]
        acc = (a * b).reduce(k, arg=Ops.ADD)
        if has_bias:
            acc = acc + bias[0][j]
        opts = upcasts((Bt, M, N), (2, upcast(N)), (1, upcast(M)))
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
    """The matmul as an OpenCL program (opencl_program)"""
    def kernel(C, A, B, *bias):
        Bt, M, N = C.shape
        K = B.shape[1]
        rows, width = max(r for r in range(1, 17) if M % r == 0), next(w for w in (16, 8, 4, 2, 1) if N % w == 0)
        name = f"matmul_{'nt'[transpose_a]}n_" + "_".join(map(str, (Bt, M, N, K)[Bt == 1:]))
        source = _opencl_matmul_source(name, Bt, M, N, K, transpose_a, has_bias, rows, width)
        return opencl_program(name, source, (C, A, B, *bias), (N // width, M // rows, Bt), ops=2 * Bt * M * N * K,
                              moved=4 * (Bt * (M * K + K * N + M * N) + N * len(bias)))
    return kernel


def opencl_program(name, source, buffers, global_size, ops, moved):
    """An OpenCL C program as a custom kernel's result, launched by tinygrad like one of its own: a PROGRAM UOp with
    the source, the buffers in signature order (the first one written, the others read) and the launch sizes, one
    work-item a work-group"""
    buffers = tuple(x.buf_uop for x in buffers)
    sink = UOp.sink(arg=KernelInfo(name=name, estimates=Estimates(ops=ops, lds=moved, mem=moved)))
    info = ProgramInfo(name=name, global_size=tuple(global_size), local_size=(1, 1, 1),
                       globals=tuple(range(len(buffers))), outs=(0,), ins=tuple(range(1, len(buffers))))
    return UOp(Ops.PROGRAM, src=(sink, UOp(Ops.LINEAR, src=buffers), UOp(Ops.SOURCE, arg=source)), arg=info)


def matmul(a, b, bias=None, transpose_a=False, transpose_b=False):
    """a (Bt, M, K) or, with transpose_a, (Bt, K, M); b (Bt, K, N) or, with transpose_b, (Bt, N, K); bias (N,) or
    None -> (Bt, M, N). Inputs are laid out contiguous first (custom kernels index their buffers directly)"""
    shape = (a.shape[0], a.shape[2] if transpose_a else a.shape[1], b.shape[1] if transpose_b else b.shape[2])
    if on_opencl(a.device):
        if transpose_b:                        # b laid out (Bt, K, N) first: a small copy, so B's rows load as vectors
            b = b.transpose(1, 2).contiguous()
        kernel = _opencl_matmul_kernel(transpose_a, bias is not None)
    else:
        kernel = _matmul_kernel(transpose_a, transpose_b, bias is not None)
    return Tensor.empty(*shape, device=a.device).custom_kernel(a, b, *([] if bias is None else [bias]), fxn=kernel)[0]


# ----------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------

def _linear_grad(g, call, has_bias):
    """dx = g @ w, dw = g^T @ x, db = g summed over rows: matmuls that read their B operand along its rows"""
    x, w = Tensor(call.src[1]), Tensor(call.src[2])
    g = laid_out(Tensor(g))                                                      # (1, M, N)
    grads = (matmul(g, w.unsqueeze(0)), matmul(g, x, transpose_a=True)[0])       # (1, M, K), (N, K)
    return backward_grads(grads + ((column_sums(g.reshape(g.shape[1:])),) if has_bias else ()), call)


@function(grad_fxn=functools.partial(_linear_grad, has_bias=True), allow_implicit=True)
def _linear_bias(x, w, b):
    """x (1, M, K), w (N, K), b (N,) -> x @ w.T + b (1, M, N); w.T is laid out (K, N) first (a small copy)"""
    return matmul(x, w.T.contiguous().unsqueeze(0), b)


@function(grad_fxn=functools.partial(_linear_grad, has_bias=False), allow_implicit=True)
def _linear(x, w):
    """x (1, M, K), w (N, K) -> x @ w.T (1, M, N)"""
    return matmul(x, w.T.contiguous().unsqueeze(0))


def linear(x, w, b=None):
    """x (..., K) @ w.T (K, N) + b -> (..., N), x materialized first (a norm or modulate fused into the matmul would
    be recomputed for every output column)"""
    *lead, K = x.shape
    x = laid_out(x).reshape(1, -1, K)
    return (_linear(x, w) if b is None else _linear_bias(x, w, b)).reshape(*lead, w.shape[0])


# ----------------------------------------------------------------------------
# Batched matmuls (attention)
# ----------------------------------------------------------------------------

def _bmm_grad(g, call, transpose_b):
    """a @ b: da = g @ b^T, db = a^T @ g; a @ b^T: da = g @ b, db = g^T @ a"""
    a, b = Tensor(call.src[1]), Tensor(call.src[2])
    g = laid_out(Tensor(g))
    if transpose_b:
        return backward_grads((matmul(g, b), matmul(g, a, transpose_a=True)), call)
    return backward_grads((matmul(g, b, transpose_b=True), matmul(a, g, transpose_a=True)), call)


@function(grad_fxn=functools.partial(_bmm_grad, transpose_b=False), allow_implicit=True)
def bmm(a, b):
    """a (Bt, M, K), b (Bt, K, N) -> a @ b (Bt, M, N)"""
    return matmul(a, b)


@function(grad_fxn=functools.partial(_bmm_grad, transpose_b=True), allow_implicit=True)
def bmm_nt(a, b):
    """a (Bt, M, K), b (Bt, N, K) -> a @ b^T (Bt, M, N)"""
    return matmul(a, b, transpose_b=True)
