"""NumPy layers: small pure functions over arrays and a dict of parameters.

Every function keeps the dtype of its input (float32 for sampling, float64 for
gradient checks). Layouts follow PyTorch: linear weight (out, in), conv weight
(out, in/groups, kh, kw), images NCHW.
"""
import math

import numpy as np

MACS = [0]   # multiply-accumulates done by linear, conv2d and attention since the last reset (models.count_macs)

# ----------------------------------------------------------------------------
# Dense and convolution
# ----------------------------------------------------------------------------

def linear(x, w, b=None):
    """x (..., in) @ w.T (in, out) + b -> (..., out)"""
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])   # one BLAS call, not one per row block
    MACS[0] += y.size * w.shape[1]
    return y if b is None else y + b


def _im2col(x, kh, kw, stride, padding):
    """x (B, C, H, W) -> patches (B, C, kh, kw, Ho, Wo) as a strided view of the padded input."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    B, C, H, W = x.shape
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (B, C, kh, kw, Ho, Wo), (s[0], s[1], s[2], s[3], s[2] * stride, s[3] * stride), writeable=False)


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """x (B, Cin, H, W), w (Cout, Cin/groups, kh, kw) -> (B, Cout, Ho, Wo), cross-correlation as in PyTorch."""
    Cout, Cg, kh, kw = w.shape
    B, Cin = x.shape[:2]
    if Cin != Cg * groups:
        raise ValueError(f"conv2d: input has {Cin} channels, weight expects {Cg * groups}")
    if Cg == 1 and groups > 1:
        return _depthwise_conv2d(x, w, b, stride, padding)
    cols = _im2col(x, kh, kw, stride, padding)                          # (B, Cin, kh, kw, Ho, Wo)
    Ho, Wo = cols.shape[-2:]
    if groups == 1:
        y = np.tensordot(w, cols, axes=([1, 2, 3], [1, 2, 3]))          # (Cout, B, Ho, Wo)
        y = y.transpose(1, 0, 2, 3)
    else:
        # grouped: one (batched) product per kernel offset, so no copy of the kh*kw times larger im2col array
        wg = w.reshape(groups, Cout // groups, Cg, kh, kw)
        y = np.zeros((B, groups, Cout // groups, Ho, Wo), np.result_type(x, w))
        for i in range(kh):
            for j in range(kw):
                xs = cols[:, :, i, j].reshape(B, groups, Cg, Ho, Wo)
                wij = wg[None, :, :, :, i, j, None, None]                        # (1, g, Cout/g, Cg, 1, 1)
                y += (wij[:, :, :, 0] * xs) if Cg == 1 else np.einsum("bgchw,xgoc->bgohw", xs, wij[..., 0, 0])
        y = y.reshape(B, Cout, Ho, Wo)
    y = np.ascontiguousarray(y)
    MACS[0] += y.size * Cg * kh * kw
    return y if b is None else y + b[None, :, None, None]


def _depthwise_conv2d(x, w, b, stride, padding):
    """conv2d with one input channel per group: kh*kw multiply-adds over a channels-last copy (long contiguous rows)."""
    B, Cin, H, W = x.shape
    Cout, _, kh, kw = w.shape
    xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (padding, padding), (padding, padding), (0, 0)))   # (B, Hp, Wp, Cin)
    Ho, Wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    m = Cout // Cin
    wl = w.reshape(Cin, m, kh, kw).transpose(1, 0, 2, 3)                     # (m, Cin, kh, kw): channel g * m + o reads g
    y = np.zeros((B, Ho, Wo, m, Cin), np.result_type(x, w))                  # channels innermost: long vector loops
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride, None, :] * wl[:, :, i, j]
    y = np.ascontiguousarray(y.transpose(0, 4, 3, 1, 2).reshape(B, Cout, Ho, Wo))   # (B, Cin, m, Ho, Wo) -> (B, Cout, Ho, Wo)
    MACS[0] += y.size * kh * kw
    return y if b is None else y + b[None, :, None, None]


def token_depthwise_conv(x, w, b, hw):
    """x (B, L, C): the tokens of an (H, W) map, row by row; w (C, 1, k, k), odd k; b (C,) -> (B, L, C): the
    'same' depthwise conv2d of that map, computed in token (channels-last) layout, so no transposes around it"""
    B, L, C = x.shape
    (H, W), k = hw, w.shape[-1]
    r = k // 2
    xp = np.pad(x.reshape(B, H, W, C), ((0, 0), (r, r), (r, r), (0, 0)))      # (B, H+2r, W+2r, C)
    y = np.zeros((B, H, W, C), np.result_type(x, w)) + b                     # (B, H, W, C)
    for i in range(k):
        for j in range(k):
            y += xp[:, i:i + H, j:j + W] * w[:, 0, i, j]                     # tap (i, j) of every channel
    MACS[0] += y.size * k * k
    return y.reshape(B, L, C)


def conv_transpose2d(x, w, b=None, stride=1, padding=0):
    """x (B, Cin, H, W), w (Cin, Cout, kh, kw) (PyTorch layout) -> (B, Cout, (H-1)*stride - 2*padding + kh, ...)"""
    B, Cin, H, W = x.shape
    _, Cout, kh, kw = w.shape
    # zero-insert the input, then a plain convolution with the flipped, transposed kernel
    up = np.zeros((B, Cin, (H - 1) * stride + 1, (W - 1) * stride + 1), x.dtype)
    up[:, :, ::stride, ::stride] = x
    wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (Cout, Cin, kh, kw)
    return conv2d(up, wf, b, stride=1, padding=kh - 1 - padding)


# ----------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------

def layer_norm(x, w=None, b=None, eps=1e-6):
    """Normalise over the last axis: x (..., D) -> (..., D); w, b (D,) or None (no affine)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def group_norm(x, groups, w=None, b=None, eps=1e-5):
    """x (B, C, H, W) -> (B, C, H, W), statistics over each group of C/groups channels and all pixels."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"group_norm: {C} channels do not split into {groups} groups")
    g = x.reshape(B, groups, -1)
    mu = g.mean(-1, keepdims=True)
    var = ((g - mu) ** 2).mean(-1, keepdims=True)
    y = ((g - mu) / np.sqrt(var + eps)).reshape(B, C, H, W)
    if w is not None:
        y = y * w[None, :, None, None]
    return y if b is None else y + b[None, :, None, None]


# ----------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------

def erf(x):
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the same formula tinygrad uses; NumPy has no erf."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def gelu(x, approximate="erf"):
    """GELU; approximate="erf" is the exact form (U-ViT), "tanh" the GPT-2/DiT approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if approximate == "erf":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    raise ValueError(f"gelu: approximate must be 'erf' or 'tanh', got {approximate!r}")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# ----------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------

def attention(q, k, v, bias=None):
    """Scaled dot-product attention. q (B, h, Lq, d), k/v (B, h or 1, Lk, d), bias broadcast to (B, h, Lq, Lk)."""
    logits = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))   # (B, h, Lq, Lk)
    MACS[0] += 2 * logits.size * q.shape[-1]                              # q k^T and p v
    if bias is not None:
        logits = logits + bias
    return softmax(logits, -1) @ v                                       # (B, h, Lq, d)


def split_heads(x, heads):
    """(B, L, h*d) -> (B, h, L, d)"""
    B, L, D = x.shape
    return x.reshape(B, L, heads, D // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, h, L, d) -> (B, L, h*d)"""
    B, h, L, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, h * d)


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
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
    args = t[:, None] * freqs[None]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros((len(t), 1))], axis=-1)
    return emb.astype(np.float32)


def modulate(x, shift, scale):
    """adaLN: x (B, L, D), shift/scale (B, D) -> x * (1 + scale) + shift"""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def split(x, n):
    """x (..., n*D) -> n pieces (..., D) along the last axis"""
    return np.split(x, n, axis=-1)


def concat(xs, axis):
    """xs concatenated along axis"""
    return np.concatenate(xs, axis)


def depth_to_space(x, r):
    """Pixel shuffle (PyTorch order): (B, C*r*r, H, W) -> (B, C, H*r, W*r)."""
    B, Crr, H, W = x.shape
    C = Crr // (r * r)
    x = x.reshape(B, C, r, r, H, W).transpose(0, 1, 4, 2, 5, 3)          # (B, C, H, r, W, r)
    return x.reshape(B, C, H * r, W * r)


def space_to_depth(x, r):
    """Inverse of depth_to_space: (B, C, H*r, W*r) -> (B, C*r*r, H, W)."""
    B, C, Hr, Wr = x.shape
    x = x.reshape(B, C, Hr // r, r, Wr // r, r).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C * r * r, Hr // r, Wr // r)


def embedding(ids, table):
    """ids (B,) int -> (B, D) rows of table (N, D)"""
    return table[np.asarray(ids, dtype=np.int64)]
