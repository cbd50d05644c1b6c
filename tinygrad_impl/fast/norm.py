"""GroupNorm on a CPU, with its own backward.

Every reduction is a row reduction over contiguous memory (fast/reduce.py): the statistics over each group's
channels and pixels, and in the backward the per-channel sums of g and of g * (x - mean) over the pixels, from which
the per-group sums and the weight and bias gradients follow as small sums over channels and over the batch.
tinygrad's own gradient reduced over batch and pixels per channel, at about 1 GFLOPS. The normalization and the
input gradient are custom kernels vectorized along the pixels (tinygrad's own tiled them by 3 for 96 channels).
"""
import functools

from tinygrad import Tensor, UOp
from tinygrad.uop.ops import KernelInfo

from .reduce import column_sums, laid_out, row_centered, row_sums, upcast, upcasts


def _apply_kernel(groups):
    """Y (B, C, P) = (X - mean) * rstd * W[c] + Bias[c], mean and rstd those of each (image, group): stats (2, B*groups)"""
    def kernel(Y, X, S, Wt, Bs):
        B, C, P = Y.shape
        b, c, p = UOp.range(B, 0), UOp.range(C, 1), UOp.range(P, 2)
        r = b * groups + c // (C // groups)
        y = (X[b, c, p] - S[0, r]) * S[1, r] * Wt[c] + Bs[c]
        return Y[b, c, p].store(y).end(b, c, p).sink(arg=KernelInfo(
            name=f"group_norm_{B}_{C}_{P}", opts_to_apply=upcasts((B, C, P), (2, upcast(P, 16)))))
    return kernel


def _dx_kernel(groups):
    """DX (B, C, P) = rstd * (G W[c] - mean_group(g w) - xhat * mean_group(g w xhat)); stats (2, B*groups), SG (2,
    B*groups) the two group means"""
    def kernel(DX, G, X, S, SG, Wt):
        B, C, P = DX.shape
        b, c, p = UOp.range(B, 0), UOp.range(C, 1), UOp.range(P, 2)
        r = b * groups + c // (C // groups)
        xhat = (X[b, c, p] - S[0, r]) * S[1, r]
        dx = S[1, r] * (G[b, c, p] * Wt[c] - SG[0, r] - xhat * SG[1, r])
        return DX[b, c, p].store(dx).end(b, c, p).sink(arg=KernelInfo(
            name=f"group_norm_dx_{B}_{C}_{P}", opts_to_apply=upcasts((B, C, P), (2, upcast(P, 16)))))
    return kernel


def _group_norm_grad(g, call, groups):
    """The gradients of the normalization kernel's buffers (Y, X, stats, W, Bias), the whole layer's: y = xhat * w +
    b, xhat = (x - mean) * rstd over each group of n values: db = sum g, dw = sum g * xhat (per channel, over batch
    and pixels); dx = rstd * (g w - mean_group(g w) - xhat * mean_group(g w xhat)), so none to the statistics"""
    x, stats, w = Tensor(call.src[2]), Tensor(call.src[3]), Tensor(call.src[4])   # (B, C, P), (2, B*groups), (C,)
    B, C, P = x.shape
    n = C // groups * P
    g = laid_out(Tensor(g))
    s1 = row_sums(g)                                                              # sum g            (B, C)
    rstd_c = stats[1].reshape(B, groups, 1).expand(B, groups, C // groups).reshape(B, C)
    s2 = row_centered(x, stats[0], g, share=C // groups) * rstd_c                 # sum g * xhat     (B, C)
    s12 = Tensor.stack(s1, s2)                                                    # (2, B, C)
    sg = ((s12 * w).reshape(2, B, groups, C // groups).sum(-1) * (1 / n)).reshape(2, B * groups)
    dx = Tensor.empty(B, C, P, device=x.device).custom_kernel(g, x, stats, sg, w, fxn=_dx_kernel(groups))[0]
    dwb = column_sums(s12.permute(1, 0, 2).reshape(B, 2 * C))                     # (2C,): db, dw
    return (None, dx.uop, None, dwb[C:].uop, dwb[:C].uop)


def group_norm(x, groups, w, b, eps=1e-5):
    """x (B, C, H, W) -> (B, C, H, W): statistics over each group of C/groups channels and all pixels (row kernels),
    then the normalization kernel, whose own backward gives x, w and b their gradients"""
    B, C, H, W = x.shape
    n = C // groups * H * W
    x = laid_out(x)
    xs = x.reshape(B * groups, n)
    s = row_sums(xs)                                                              # (B*groups,)
    stats = Tensor.stack(s * (1 / n), (row_centered(xs, s, scale=1 / n) * (1 / n) + eps).rsqrt()).detach()
    y = Tensor.empty(B, C, H * W, device=x.device).custom_kernel(x.reshape(B, C, H * W), stats, w, b,
                                                                 fxn=_apply_kernel(groups),
                                                                 grad_fxn=functools.partial(_group_norm_grad, groups=groups))[0]
    return y.reshape(B, C, H, W)
