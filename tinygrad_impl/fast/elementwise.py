"""Elementwise layers on a CPU with their own backwards: GELU (erf), softmax, the affine part of layer_norm, adaLN's
modulate. Each saves only what its backward needs and computes that backward in one kernel, with the reductions as
column or row sums (tinygrad's own column reductions spread one column over a work-group, slow on a CPU).
"""
import math

from tinygrad import Tensor, dtypes
from tinygrad.function import function

from .reduce import backward_grads, column_sums, row_sums

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
    return _gelu_erf(x.contiguous())


# ----------------------------------------------------------------------------
# softmax over the last axis
# ----------------------------------------------------------------------------

def _softmax_grad(g, call):
    """dx = p * (g - rowdot(g, p)), p the saved output"""
    p, g = Tensor(call.gettuple(0)), Tensor(g).contiguous()
    return backward_grads((p * (g - row_sums(g, p).unsqueeze(-1)),), call)


@function(grad_fxn=_softmax_grad, allow_implicit=True)
def _softmax(x):
    e = exp(x - x.max(-1, keepdim=True)).contiguous()
    return e / e.sum(-1, keepdim=True)


def softmax(x):
    """softmax over the last axis: x (..., n) -> (..., n); exp once, in the forward, the backward from the saved p"""
    return _softmax(x.contiguous())


# ----------------------------------------------------------------------------
# Per-column affine maps: layer_norm's weight and bias, adaLN's modulate
# ----------------------------------------------------------------------------

def _affine_grad(g, call):
    """dx = g * w; dw, db: column reductions over the rows"""
    x, w = Tensor(call.src[1]), Tensor(call.src[2])
    g = Tensor(g).contiguous()                                                   # (M, N)
    return backward_grads((g * w, column_sums(g, x), column_sums(g)), call)


@function(grad_fxn=_affine_grad, allow_implicit=True)
def _affine(x, w, b):
    return x * w + b


def affine(x, w, b):
    """x (..., N) * w (N,) + b (N,) -> (..., N), with its own backward"""
    return _affine(x.reshape(-1, x.shape[-1]).contiguous(), w, b).reshape(x.shape)


def _modulate_grad(g, call):
    """dx = g * (1 + scale); dshift, dscale: per-sample column reductions over L"""
    x, scale = Tensor(call.src[1]), Tensor(call.src[3])
    g = Tensor(g).contiguous()                                                   # (B, L, D)
    return backward_grads((g * (1.0 + scale.unsqueeze(1)), column_sums(g), column_sums(g, x)), call)


@function(grad_fxn=_modulate_grad, allow_implicit=True)
def _modulate(x, shift, scale):
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def modulate(x, shift, scale):
    """adaLN: x (B, L, D), shift/scale (B, D) -> x * (1 + scale) + shift, with its own backward"""
    return _modulate(x.contiguous(), shift, scale)
