"""Depthwise convolutions on a CPU, with their own backwards.

depthwise_same_conv2d: on OpenCL, forward, input and weight gradient as OpenCL C programs, a work-item one channel's
map; on tinygrad's CPU backend tinygrad's forward, and the input gradient (tinygrad's own is a reduction kernel that
runs slowly on a CPU) as the conv of g with the flipped kernel, one fast conv. token_depthwise_conv: the 3x3 depthwise conv of
the token-free MLP in token (channels-last) layout as custom kernels vectorized along the channels (tinygrad's own
fused the conv into every GELU that read it and vectorized along the map).
"""
import functools

from tinygrad import Tensor, UOp
from tinygrad.function import function
from tinygrad.uop.ops import KernelInfo

from . import on_opencl
from .convolution import _hsum, _part, _row_tile, _rows_load, _spread, _vec
from .matmul import opencl_program
from .reduce import backward_grads, column_sums, laid_out, reduce_range, row_sums, sum_over, upcast, upcasts

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
def _depthwise_same_conv2d(x, w, b=None):
    return x.conv2d(w, b, groups=w.shape[0], padding=w.shape[2] // 2)


def _depthwise_source(name, C, H, W, K, has_bias, flipped, unread=False):
    """Y (B, C, H, W) = the depthwise conv of XP (B, C, H+K-1, W+K-1) (padded) with Wt (C, 1, K, K) (its taps
    flipped with `flipped`) [+ bias]: a work-item one channel's map, in tiles of ny rows of `width` pixels"""
    (width, ny), HP, WP, KK = _row_tile(H, W), H + K - 1, W + K - 1, K * K
    vec = _vec(width * ny)
    tap = (lambda i, j: KK - 1 - i * K - j) if flipped else (lambda i, j: i * K + j)
    lines = [f"__kernel void {name}(__global float* Y, __global const float* XP, __global const float* Wt"
             f"{', __global const float* bias' if has_bias else ''}{', __global const float* unread' if unread else ''}) {{",
             f"  int m = get_global_id(0), c = m % {C};",
             f"  __global const float* xb = XP + m*{HP * WP};",
             f"  __global float* yb = Y + m*{H * W};",
             *(f"  {vec} w{i}_{j} = ({vec})Wt[c*{KK} + {tap(i, j)}];" for i in range(K) for j in range(K)),
             f"  for (int y = 0; y < {H}; y += {ny}) for (int x0 = 0; x0 < {W}; x0 += {width}) {{",
             f"    {vec} acc = 0.0f;",
             *(f"    acc = fma(w{i}_{j}, {_rows_load(f'xb + (y + {i})*{WP} + x0 + {j}', WP, width, ny, 1)}, acc);"
               for i in range(K) for j in range(K))]
    if has_bias:
        lines.append(f"    acc += ({vec})bias[c];")
    for q in range(ny):
        part = _part("acc", q, width, ny)
        lines.append(f"    vstore{width}({part}, 0, yb + (y + {q})*{W} + x0);" if width > 1 else
                     f"    yb[(y + {q})*{W} + x0] = {part};")
    return "\n".join(lines + ["  }", "}"])


def _depthwise_dw_source(name, C, H, W, K):
    """P (B, C, K, K) = per image and channel, the sums over y, x of G (B, C, H, W) * XP (B, C, H+K-1, W+K-1)
    [y + i, x + j]: a work-item one channel's map, K*K vectors of partial sums"""
    (width, ny), HP, WP, KK = _row_tile(H, W), H + K - 1, W + K - 1, K * K
    vec = _vec(width * ny)
    lines = [f"__kernel void {name}(__global float* P, __global const float* G, __global const float* XP) {{",
             "  int m = get_global_id(0);",
             f"  __global const float* xb = XP + m*{HP * WP};",
             f"  __global const float* gb = G + m*{H * W};",
             *(f"  {vec} a{i}_{j} = 0.0f;" for i in range(K) for j in range(K)),
             f"  for (int y = 0; y < {H}; y += {ny}) for (int x0 = 0; x0 < {W}; x0 += {width}) {{",
             f"    {vec} g = {_rows_load('gb + y*' + str(W) + ' + x0', W, width, ny, 1)};",
             *(f"    a{i}_{j} = fma(g, {_rows_load(f'xb + (y + {i})*{WP} + x0 + {j}', WP, width, ny, 1)}, a{i}_{j});"
               for i in range(K) for j in range(K)),
             "  }",
             *(f"  P[m*{KK} + {i * K + j}] = {_hsum(f'a{i}_{j}', width * ny)};" for i in range(K) for j in range(K))]
    return "\n".join(lines + ["}"])


def _nchw_depthwise_kernel(has_bias, flipped, unread=False):
    def kernel(Y, XP, Wt, *rest):
        B, C, H, W = Y.shape
        K = Wt.shape[-1]
        name = f"depthwise{K}x{K}{'_dx' if flipped else ''}_{B}_{C}_{H}_{W}"
        return opencl_program(name, _depthwise_source(name, C, H, W, K, has_bias, flipped, unread), (Y, XP, Wt, *rest),
                              (B * C, 1, 1), ops=2 * B * C * H * W * K * K, moved=4 * B * C * (XP.shape[2] * XP.shape[3] + H * W))
    return kernel


def _nchw_depthwise_dw_kernel(P, G, XP):
    B, C, H, W = G.shape
    K = P.shape[-1]
    name = f"depthwise{K}x{K}_dw_{B}_{C}_{H}_{W}"
    return opencl_program(name, _depthwise_dw_source(name, C, H, W, K), (P, G, XP), (B * C, 1, 1),
                          ops=2 * B * C * H * W * K * K, moved=4 * B * C * (XP.shape[2] * XP.shape[3] + H * W))


def _depthwise_cl(xp, w, b, hw, flipped=False):
    """The depthwise conv of the padded xp (B, C, H+k-1, W+k-1) with w (C, 1, k, k) [+ b] -> (B, C, H, W)"""
    y = Tensor.empty(*xp.shape[:2], *hw, device=xp.device)
    return y.custom_kernel(xp, w, *([] if b is None else [b]), fxn=_nchw_depthwise_kernel(b is not None, flipped))[0]


def _depthwise_cl_grad(g, call, has_bias):
    """The gradients of the kernel's buffers (Y, XP, Wt[, bias], X): dx, the same kernel on g padded, taps flipped;
    dw, per image and channel, then summed over the images; db, g summed over batch and pixels (all to X, none to
    the padded copy)"""
    xp, w = Tensor(call.src[2]), Tensor(call.src[3])
    g = laid_out(Tensor(g))
    B, C, H, W = g.shape
    k, r = w.shape[-1], w.shape[-1] // 2
    dx = _depthwise_cl(_spread(g, r, r, (H + k - 1, W + k - 1)), w, None, (H, W), flipped=True)
    part = Tensor.empty(B, C, k, k, device=g.device).custom_kernel(g, xp, fxn=_nchw_depthwise_dw_kernel)[0]
    dw = column_sums(part.reshape(B, C * k * k)).reshape(C, 1, k, k)
    db = (column_sums(row_sums(g.reshape(B * C, H * W)).reshape(B, C)).uop,) if has_bias else ()
    return (None, None, dw.uop) + db + (dx.uop,)


def depthwise_same_conv2d(x, w, b=None):
    """x (B, C, H, W), w (C, 1, k, k), odd k, padding k // 2 -> (B, C, H, W). On OpenCL kernels of their own, a
    work-item one channel's map (tinygrad's forward and weight gradient ran at a few GFLOPS there); on tinygrad's CPU
    backend tinygrad's forward with the input gradient as one conv"""
    if on_opencl(x.device):   # the kernel's own backward gives x, w and b their gradients
        (H, W), k = x.shape[2:], w.shape[-1]
        x = laid_out(x)
        xp = _spread(x, k // 2, k // 2, (H + k - 1, W + k - 1))
        return Tensor.empty(*x.shape, device=x.device).custom_kernel(
            xp, w.contiguous(), *([] if b is None else [b]), x, fxn=_nchw_depthwise_kernel(b is not None, False, True),
            grad_fxn=functools.partial(_depthwise_cl_grad, has_bias=b is not None))[0]
    return _depthwise_same_conv2d(x, w, b)


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
