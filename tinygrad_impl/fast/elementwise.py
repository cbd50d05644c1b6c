"""Elementwise layers on a CPU with their own backwards: GELU (erf), SiLU, softmax, the affine part of layer_norm,
adaLN's modulate. Each saves only what its backward needs and computes that backward in one kernel, with the
reductions as column or row sums (tinygrad's own column reductions spread one column over a work-group, slow on a
CPU).
"""
import math

from tinygrad import Tensor, dtypes
from tinygrad.function import function

from . import on_opencl
from .matmul import opencl_program
from .reduce import backward_grads, column_sums, laid_out, row_sums

# ----------------------------------------------------------------------------
# exp as arithmetic
# ----------------------------------------------------------------------------

def exp(x):
    """exp(x) as plain arithmetic (no gradient; callers save what their backward needs): x (...) -> (...).
    PoCL runs the exp2 builtin as a scalar call per element; written as arithmetic the compiler vectorizes it.
    Within 4e-7 relative of exp over [-87.3, 88] (tests/test_fast.py), below the builtin exp2's error"""
    x = x.detach().maximum(-87.3).minimum(88.0)                  # 2^n stays a normal float32 (saturates at exp(88))
    n_int = (x * (1 / math.log(2)) + 128.5).cast(dtypes.int32) - 128    # round(x / ln 2): truncation of a positive
    n = n_int.cast(dtypes.float32)
    r = x - n * 0.693145751953125 - n * 1.428606765330187e-06    # x - n ln 2, ln 2 split in two: |r| <= ln(2) / 2
    p = 1 / 5040
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0):  # Taylor to r^7, Horner
        p = p * r + c
    return p * ((n_int + 127) * (1 << 23)).bitcast(dtypes.float32)   # times 2^n, written into the exponent bits


# ----------------------------------------------------------------------------
# The same arithmetic in OpenCL C (GELU and SiLU on OpenCL): tinygrad tiles an elementwise kernel over 48, 96 or 384
# channels by 3 (its heuristic tries 3 before 4), scalar loads that do not vectorize; these read float16 vectors
# ----------------------------------------------------------------------------

def _f(c):
    return f"{float(c)!r}f"


_OPENCL_EXP = "\n".join([
    "float16 exp16(float16 x) {   /* exp as arithmetic, the same steps as exp() */",
    "  x = clamp(x, -87.3f, 88.0f);",
    f"  int16 n = convert_int16(x * {_f(1 / math.log(2))} + 128.5f) - 128;",
    "  float16 f = convert_float16(n);",
    "  float16 r = x - f * 0.693145751953125f - f * 1.428606765330187e-06f;",
    f"  float16 p = (float16)({_f(1 / 5040)});",
    *(f"  p = p * r + {_f(c)};" for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0)),
    "  return p * as_float16((n + 127) << 23);",
    "}"])

# (value, slope) of each function of x, given exp16; OpenCL C statements over float16 x
_OPENCL_UNARY = {
    "gelu": ([f"float16 y = x * {_f(1 / math.sqrt(2))};",
              "float16 e = exp16(-(y * y));",
              "float16 t = 1.0f / (1.0f + 0.3275911f * fabs(y));",
              "float16 poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f"
              " + t * 1.061405429f))));",
              "float16 erf_y = sign(y) * (1.0f - poly * e);"],
             "0.5f * x * (1.0f + erf_y)", f"0.5f * (1.0f + erf_y) + x * e * {_f(1 / math.sqrt(2 * math.pi))}"),
    "silu": (["float16 s = 1.0f / (1.0f + exp16(-x));"], "x * s", "s * (1.0f + x * (1.0f - s))"),
}


def _opencl_unary_kernel(kind, backward):
    """Y (n,) = f(X), or with `backward` DX (n,) = G * f'(X): a work-item up to 16 vectors of 16"""
    def kernel(Y, *args):
        (n,) = Y.shape
        chunk = next(c for c in (16, 8, 4, 2, 1) if n % (16 * c) == 0)
        name = f"{kind}{'_dx' if backward else ''}_{n}"
        setup, value, slope = _OPENCL_UNARY[kind]
        source = "\n".join([
            _OPENCL_EXP,
            f"__kernel void {name}(__global float* Y, __global const float* {'G, __global const float* ' if backward else ''}X) {{",
            f"  for (int i = get_global_id(0) * {chunk}; i < (get_global_id(0) + 1) * {chunk}; i++) {{",
            "    float16 x = vload16(i, X);",
            *(f"    {line}" for line in setup),
            f"    vstore16({f'vload16(i, G) * ({slope})' if backward else value}, i, Y);",
            "  }", "}"])
        return opencl_program(name, source, (Y, *args), (n // (16 * chunk), 1, 1), ops=30 * n, moved=4 * n * (2 + backward))
    return kernel


def _opencl_unary_grad(g, call, kind):
    """The gradient of the kernel's buffers (Y, X): g * f'(x), recomputed from x"""
    x = Tensor(call.src[2])
    dx = Tensor.empty(*x.shape, device=x.device).custom_kernel(laid_out(Tensor(g)), x,
                                                               fxn=_opencl_unary_kernel(kind, True))[0]
    return (None, dx.uop)


def _opencl_unary(kind, x):
    """GELU or SiLU of x (...) on OpenCL, x's size a multiple of 16: one kernel forward, one backward"""
    y = Tensor.empty(x.numel(), device=x.device).custom_kernel(
        laid_out(x).reshape(-1), fxn=_opencl_unary_kernel(kind, False),
        grad_fxn=lambda g, call: _opencl_unary_grad(g, call, kind))[0]
    return y.reshape(x.shape)


# ----------------------------------------------------------------------------
# GELU (erf form)
# ----------------------------------------------------------------------------

def _gelu_erf_value_and_slope(x):
    """GELU(x) and its slope Phi(x) + x phi(x), with no gradient. erf as in numpy_ref (Abramowitz & Stegun 7.1.26,
    tinygrad's Tensor.erf), its exp computed once"""
    y = x * (1 / math.sqrt(2))
    e = exp(-y.square())                                         # exp(-x^2 / 2)
    t = 1.0 / (1.0 + 0.3275911 * y.abs())
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf_y = y.sign() * (1.0 - poly * e)                           # erf(x / sqrt(2))
    value = (0.5 * x * (1.0 + erf_y)).detach()
    slope = (0.5 * (1.0 + erf_y) + x * e * (1 / math.sqrt(2 * math.pi))).detach()
    return value, slope


def _gelu_erf_grad(g, call):
    """g * slope, the slope recomputed from x in the same kernel (nothing saved but x)"""
    return backward_grads((Tensor(g) * _gelu_erf_value_and_slope(Tensor(call.src[1]))[1],), call)


@function(grad_fxn=_gelu_erf_grad, allow_implicit=True)
def _gelu_erf(x):
    return _gelu_erf_value_and_slope(x)[0]


def gelu_erf(x):
    """GELU, erf form: x (...) -> (...), one kernel forward, one backward"""
    if on_opencl(x.device) and x.numel() % 16 == 0:
        return _opencl_unary("gelu", x)
    return _gelu_erf(laid_out(x)).reshape(x.shape)


# ----------------------------------------------------------------------------
# SiLU
# ----------------------------------------------------------------------------

def _silu_value_and_slope(x):
    """SiLU(x) = x sigmoid(x) and its slope s (1 + x (1 - s)), with no gradient; exp as arithmetic (tinygrad's
    sigmoid calls exp2, a scalar call per element on PoCL)"""
    s = 1.0 / (1.0 + exp(-x))
    return (x * s).detach(), (s * (1.0 + x * (1.0 - s))).detach()


def _silu_grad(g, call):
    """g * slope, the slope recomputed from x in the same kernel (nothing saved but x)"""
    return backward_grads((Tensor(g) * _silu_value_and_slope(Tensor(call.src[1]))[1],), call)


@function(grad_fxn=_silu_grad, allow_implicit=True)
def _silu(x):
    return _silu_value_and_slope(x)[0]


def silu(x):
    """SiLU (swish): x (...) -> (...), one kernel forward, one backward"""
    if on_opencl(x.device) and x.numel() % 16 == 0:
        return _opencl_unary("silu", x)
    return _silu(laid_out(x))


# ----------------------------------------------------------------------------
# softmax over the last axis
# ----------------------------------------------------------------------------

def _softmax_grad(g, call):
    """dx = p * (g - rowdot(g, p)), p the saved output"""
    p, g = Tensor(call.gettuple(0)), laid_out(Tensor(g))
    return backward_grads((p * (g - row_sums(g, p).unsqueeze(-1)),), call)


@function(grad_fxn=_softmax_grad, allow_implicit=True)
def _softmax(x):
    e = exp(x - x.max(-1, keepdim=True)).contiguous()
    return e / e.sum(-1, keepdim=True)


def softmax(x):
    """softmax over the last axis: x (..., n) -> (..., n); exp once, in the forward, the backward from the saved p"""
    return _softmax(laid_out(x))


# ----------------------------------------------------------------------------
# Per-column affine maps: layer_norm's weight and bias, adaLN's modulate
# ----------------------------------------------------------------------------

def _affine_grad(g, call):
    """dx = g * w; dw, db: column reductions over the rows"""
    x, w = Tensor(call.src[1]), Tensor(call.src[2])
    g = laid_out(Tensor(g))                                                      # (M, N)
    return backward_grads((g * w, column_sums(g, x), column_sums(g)), call)


@function(grad_fxn=_affine_grad, allow_implicit=True)
def _affine(x, w, b):
    return x * w + b


def affine(x, w, b):
    """x (..., N) * w (N,) + b (N,) -> (..., N), with its own backward"""
    return _affine(laid_out(x.reshape(-1, x.shape[-1])), w, b).reshape(x.shape)


def _modulate_grad(g, call):
    """dx = g * (1 + scale); dshift, dscale: per-sample column reductions over L"""
    x, scale = Tensor(call.src[1]), Tensor(call.src[3])
    g = laid_out(Tensor(g))                                                      # (B, L, D)
    return backward_grads((g * (1.0 + scale.unsqueeze(1)), column_sums(g), column_sums(g, x)), call)


@function(grad_fxn=_modulate_grad, allow_implicit=True)
def _modulate(x, shift, scale):
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def modulate(x, shift, scale):
    """adaLN: x (B, L, D), shift/scale (B, D) -> x * (1 + scale) + shift, with its own backward"""
    return _modulate(laid_out(x), shift, scale)
