"""Depthwise convolutions on a CPU, with their own backwards.

depthwise_same_conv2d: tinygrad's own input gradient of a depthwise conv is a reduction kernel that runs slowly on a
CPU; as the conv of g with the flipped kernel it is one fast conv. token_depthwise_conv: the 3x3 depthwise conv of
the token-free MLP in token (channels-last) layout as custom kernels vectorized along the channels (tinygrad's own
fused the conv into every GELU that read it and vectorized along the map).
"""
import functools

from tinygrad import Tensor, UOp
from tinygrad.function import function
from tinygrad.uop.ops import KernelInfo

from .reduce import backward_grads, column_sums, reduce_range, sum_over, upcast, upcasts

# ----------------------------------------------------------------------------
# NCHW depthwise conv, stride 1, 'same' padding
# ----------------------------------------------------------------------------

def _depthwise_same_conv2d_grad(g, call):
    """dx, dw(, db) of a stride-1 'same' depthwise conv, given g (B, C, H, W): dx is the conv of g with the flipped
    kernel, dw tinygrad's own weight gradient"""
    x, w, *b = (Tensor(u) for u in call.src[1:])
    g, C, pad = Tensor(g).contiguous(), w.shape[0], w.shape[2] // 2   # dx, dw, db all read g: lay it out once
    dx = g.conv2d(w.flip((2, 3)), groups=C, padding=pad)                      # (B, C, H, W)
    w_ = w.detach()
    (dw,) = x.conv2d(w_, groups=C, padding=pad).gradient(w_, gradient=g)       # (C, 1, k, k)
    return backward_grads((dx, dw) + ((g.sum((0, 2, 3)),) if b else ()), call)


@function(grad_fxn=_depthwise_same_conv2d_grad)
def depthwise_same_conv2d(x, w, b=None):
    """x (B, C, H, W), w (C, 1, k, k), odd k, padding k // 2 -> (B, C, H, W); the same numbers as x.conv2d"""
    return x.conv2d(w, b, groups=w.shape[0], padding=w.shape[2] // 2)


# ----------------------------------------------------------------------------
# The same conv in token layout: custom kernels, 16 channels by a row of 8 positions a work-item
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
        # 16 channels by a row of 8 positions: neighbouring positions share taps along x
        opts = upcasts((B, H, W, C), (3, upcast(C, 16)), (2, upcast(W)))
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
    y, x = reduce_range(H, 4), reduce_range(W, 5)
    acc = sum_over(G[b, y, x, c] * XP[b, y + i, x + j, c], y, x)
    opts = upcasts((B, k, k, C), (3, upcast(C, 16)), (2, k), (1, k))          # 16 channels x all taps
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
    dw, db = column_sums(part.reshape(B, k * k * C)), column_sums(g.reshape(B * L, C))
    return backward_grads((dx, dw.reshape(k, k, C).permute(2, 0, 1).reshape(C, 1, k, k), db), call)


@functools.lru_cache(maxsize=None)
def _token_depthwise_conv_for(hw):
    """token_depthwise_conv for one map size (H, W), with its own backward"""
    def conv(x, w, b):
        return _depthwise(_pad_map(x, hw, w.shape[-1] // 2), _taps(w), b, hw)
    return function(conv, grad_fxn=functools.partial(_token_depthwise_conv_grad, hw=hw), allow_implicit=True)


def token_depthwise_conv(x, w, b, hw):
    """x (B, L, C), the tokens of an (H, W) map; w (C, 1, k, k), odd k > 1; b (C,) -> (B, L, C). H and W > 1: with
    a length-1 range tinygrad merges the kernels' ranges and their fixed opts would name the wrong axes"""
    return _token_depthwise_conv_for(tuple(hw))(x.contiguous(), w, b)
