"""tinygrad layers: the same functions, names and layouts as numpy_ref/layers.py, over Tensors.

This is the port, in plain tinygrad ops: the path GPUs and Metal run. On a CPU some functions hand their work to
the fast-path package in one line (`fast.applies(device, *sizes)`): kernels scheduled for a CPU, the same numbers.
FAST=0 in the environment turns that off (tinygrad_impl/fast/__init__.py).
"""
import math

import numpy as np
from tinygrad import Tensor, dtypes

from . import fast

# ----------------------------------------------------------------------------
# Dense and convolution
# ----------------------------------------------------------------------------

def linear(x, w, b=None):
    """x (..., in) @ w.T (in, out) + b -> (..., out)"""
    if fast.applies(x.device, math.prod(x.shape[:-1]), *w.shape):
        return fast.linear(x, w, b)
    x = x.contiguous()   # materialized: a norm or modulate fused into the matmul would be recomputed per output column
    y = x @ w.T
    return y if b is None else y + b


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """x (B, Cin, H, W), w (Cout, Cin/groups, kh, kw) -> (B, Cout, Ho, Wo), cross-correlation as in PyTorch."""
    Cout, Cg, kh, kw = w.shape
    if x.shape[1] != Cg * groups:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels, weight expects {Cg * groups}")
    if fast.applies(x.device) and Cg == 1 and Cout == groups > 1 and stride == 1 and kh == kw == 2 * padding + 1:
        return fast.depthwise_same_conv2d(x, w, b)
    Ho, Wo = ((n + 2 * padding - k) // stride + 1 for n, k in zip(x.shape[2:], (kh, kw)))
    if groups == 1 and kh == kw and fast.applies(x.device, Cout, Cg * kh * kw, x.shape[0] * Ho * Wo):
        return fast.conv2d(x, w, b, stride, padding)
    return x.conv2d(w, b, groups=groups, stride=stride, padding=padding)


def token_depthwise_conv(x, w, b, hw):
    """x (B, L, C): the tokens of an (H, W) map, row by row; w (C, 1, k, k), odd k; b (C,) -> (B, L, C): the
    'same' depthwise conv2d of that map, computed in token (channels-last) layout, so no transposes around it"""
    B, L, C = x.shape
    (H, W), k = hw, w.shape[-1]
    if fast.applies(x.device, k, H, W):
        return fast.token_depthwise_conv(x, w, b, hw)
    r = k // 2
    xp = x.reshape(B, H, W, C).pad(((0, 0), (r, r), (r, r), (0, 0)))        # (B, H+2r, W+2r, C)
    y = sum(xp[:, i:i + H, j:j + W] * w[:, 0, i, j] for i in range(k) for j in range(k))
    return (y + b).reshape(B, L, C)


def conv_transpose2d(x, w, b=None, stride=1, padding=0):
    """x (B, Cin, H, W), w (Cin, Cout, kh, kw) (PyTorch layout) -> (B, Cout, (H-1)*stride - 2*padding + kh, ...)"""
    return x.conv_transpose2d(w, b, stride=stride, padding=padding)


# ----------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------

def layer_norm(x, w=None, b=None, eps=1e-6):
    """Normalise over the last axis: x (..., D) -> (..., D); w, b (D,) or None (no affine)."""
    y = x.layernorm(-1, eps)
    if w is not None and b is not None and fast.applies(x.device, math.prod(x.shape[:-1]), x.shape[-1]):
        return fast.affine(y, w, b)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def group_norm(x, groups, w=None, b=None, eps=1e-5):
    """x (B, C, H, W) -> (B, C, H, W), statistics over each group of C/groups channels and all pixels."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"group_norm: {C} channels do not split into {groups} groups")
    if w is not None and b is not None and fast.applies(x.device, B * groups, C // groups * H * W, H * W, C):
        return fast.group_norm(x, groups, w, b, eps)
    y = x.reshape(B, groups, -1).layernorm(-1, eps).reshape(B, C, H, W)
    if w is not None:
        y = y * w.reshape(1, C, 1, 1)
    return y if b is None else y + b.reshape(1, C, 1, 1)


# ----------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------

def erf(x):
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): tinygrad's Tensor.erf is the same formula as numpy_ref's."""
    return x.erf()


def gelu(x, approximate="erf"):
    """GELU; approximate="erf" is the exact form (U-ViT), "tanh" the GPT-2/DiT approximation."""
    if approximate == "tanh":
        return x.gelu(approximate="tanh")
    if approximate == "erf":
        if fast.applies(x.device):
            return fast.gelu_erf(x)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    raise ValueError(f"gelu: approximate must be 'erf' or 'tanh', got {approximate!r}")


def sigmoid(x):
    return x.sigmoid()


def silu(x):
    if fast.applies(x.device):
        return fast.silu(x)
    return x.silu()


def softmax(x, axis=-1):
    if axis in (-1, x.ndim - 1) and fast.applies(x.device, x.shape[-1], math.prod(x.shape[:-1])):
        return fast.softmax(x)
    return x.softmax(axis)


# ----------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------

def attention(q, k, v, bias=None):
    """Scaled dot-product attention. q (B, h, Lq, d), k/v (B, h or 1, Lk, d), bias broadcast to (B, h, Lq, Lk)."""
    if k.shape[:2] == v.shape[:2] == q.shape[:2] and fast.applies(q.device, q.shape[2], k.shape[2], q.shape[3], v.shape[3]):
        return fast.attention(q, k, v, bias)
    logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))   # (B, h, Lq, Lk)
    if bias is not None:
        logits = logits + bias
    return softmax(logits, -1) @ v                                       # (B, h, Lq, d)


def split_heads(x, heads):
    """(B, L, h*d) -> (B, h, L, d)"""
    B, L, D = x.shape
    return x.reshape(B, L, heads, D // heads).permute(0, 2, 1, 3)


def merge_heads(x):
    """(B, h, L, d) -> (B, L, h*d)"""
    B, h, L, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, L, h * d)


def multi_head_attention(x, p, prefix, heads):
    """Self-attention with a fused qkv projection: x (B, L, D) -> (B, L, D).
    Parameters: {prefix}.qkv.weight (3D, D) [+ .bias], {prefix}.proj.weight (D, D) + .bias."""
    qkv = linear(x, p[f"{prefix}.qkv.weight"], p.get(f"{prefix}.qkv.bias"))   # (B, L, 3D)
    q, k, v = split(qkv, 3)                                                    # 3 x (B, L, D)
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
    if fast.applies(x.device, *x.shape[1:]):
        return fast.modulate(x, shift, scale)
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def split(x, n):
    """x (..., n*D) -> n pieces (..., D) along the last axis, each with its own gradient buffer (one fused gradient
    kernel of all pieces computes every piece's reduction at every output)"""
    return [z.contiguous_backward() for z in x.chunk(n, dim=-1)]


def concat(xs, axis):
    """xs concatenated along axis, materialized (a kernel reading a concat reads each input through a padding mask)"""
    return xs[0].cat(*xs[1:], dim=axis).contiguous()


def depth_to_space(x, r):
    """Pixel shuffle (PyTorch order): (B, C*r*r, H, W) -> (B, C, H*r, W*r)."""
    B, Crr, H, W = x.shape
    C = Crr // (r * r)
    x = x.reshape(B, C, r, r, H, W).permute(0, 1, 4, 2, 5, 3)            # (B, C, H, r, W, r)
    return x.reshape(B, C, H * r, W * r)


def space_to_depth(x, r):
    """Inverse of depth_to_space: (B, C, H*r, W*r) -> (B, C*r*r, H, W)."""
    B, C, Hr, Wr = x.shape
    x = x.reshape(B, C, Hr // r, r, Wr // r, r).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C * r * r, Hr // r, Wr // r)


def embedding(ids, table):
    """ids (B,) int -> (B, D) rows of table (N, D)"""
    ids = ids if isinstance(ids, Tensor) else Tensor(np.asarray(ids, dtype=np.int32), device=table.device)
    return table[ids]
