"""tinygrad layers: the same functions, names and layouts as numpy_ref/layers.py, over Tensors."""
import math

import numpy as np
from tinygrad import Tensor, dtypes
from tinygrad.function import function

# ----------------------------------------------------------------------------
# Dense and convolution
# ----------------------------------------------------------------------------

def linear(x, w, b=None):
    """x (..., in) @ w.T (in, out) + b -> (..., out)"""
    # x materialized: a LayerNorm/modulate fused into the matmul is recomputed for every output column, and
    # kernels that are a plain matmul are the ones BEAM finds fast versions of
    y = x.contiguous() @ w.T
    return y if b is None else y + b


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


def conv_transpose2d(x, w, b=None, stride=1, padding=0):
    """x (B, Cin, H, W), w (Cin, Cout, kh, kw) -> (B, Cout, (H-1)*stride - 2*padding + kh, ...)"""
    return x.conv_transpose2d(w, b, stride=stride, padding=padding)


# ----------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------

def layer_norm(x, w=None, b=None, eps=1e-6):
    """Normalise over the last axis: x (..., D) -> (..., D); w, b (D,) or None (no affine)."""
    y = x.layernorm(-1, eps)
    if w is not None:
        y = y * w
    return y if b is None else y + b


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

def erf(x):
    return x.erf()


def gelu(x, approximate="erf"):
    """GELU; approximate="erf" is the exact form (U-ViT), "tanh" the GPT-2/DiT approximation."""
    if approximate not in ("erf", "tanh"):
        raise ValueError(f"gelu: approximate must be 'erf' or 'tanh', got {approximate!r}")
    # materialized in both passes: otherwise every weight-gradient reduction downstream recomputes erf/tanh per term
    x = x.contiguous_backward()
    if approximate == "tanh":
        return x.gelu(approximate="tanh").contiguous()
    # erf as in numpy_ref (Abramowitz & Stegun 7.1.26, tinygrad's Tensor.erf), with its exp computed once: the
    # backward multiplies by the saved exact slope Phi(x) + x phi(x) instead of differentiating the formula again
    # (exp costs ~1.4 ns an element on a CPU, where it is the whole cost of GELU)
    y = x * (1 / math.sqrt(2))
    e = (-y.square()).exp().contiguous()                         # exp(-x^2 / 2)
    t = 1.0 / (1.0 + 0.3275911 * y.abs())
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf_y = y.sign() * (1.0 - poly * e)                           # erf(x / sqrt(2))
    value = (0.5 * x * (1.0 + erf_y)).detach()
    slope = (0.5 * (1.0 + erf_y) + x * e * (1 / math.sqrt(2 * math.pi))).detach().contiguous()
    return (value + (x - x.detach()) * slope).contiguous()      # x - x.detach(): zero in value, identity in gradient


def sigmoid(x):
    return x.sigmoid()


def silu(x):
    return x.silu()


def softmax(x, axis=-1):
    # exp once, in the forward; the backward is p * (g - sum(g * p)) from the saved p, with no exp at all
    e = (x - x.max(axis, keepdim=True).detach()).exp().contiguous()
    p = (e / e.sum(axis, keepdim=True)).detach().contiguous()
    u = x - x.detach()                                           # zero in value, identity in gradient
    return p + p * (u - (p * u).sum(axis, keepdim=True))         # value p, Jacobian diag(p) - p p^T


# ----------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------

def attention(q, k, v, bias=None):
    """Scaled dot-product attention. q (B, h, Lq, d), k/v (B, h or 1, Lk, d), bias broadcast to (B, h, Lq, Lk)."""
    logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))   # (B, h, Lq, Lk)
    if bias is not None:
        logits = logits + bias
    # logits, probabilities and both their gradients are materialized once: otherwise the softmax (exp) is
    # recomputed inside the P @ V matmul and inside the gradient reductions of q, k and v
    probs = softmax(logits.contiguous_backward().contiguous(), -1).contiguous().contiguous_backward()
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
