"""Scaled dot-product attention on a CPU: both products as fast batched matmuls, the softmax with its own backward.

Keys and values get zero rows up to a multiple of 16 when Lk is not a multiple of 8 (U-ViT's 65 tokens): the matmul
and softmax kernels vectorize along Lk only at a power-of-two tile. The padded keys' logits are -1e30, so their
probabilities underflow to ~1e-38 (lost in the row sum) and their values are zero.
"""
import math

from tinygrad import Tensor
from tinygrad.function import function

from .elementwise import softmax
from .matmul import bmm, bmm_nt
from .reduce import backward_grads, column_sums, laid_out


def _add_shared_grad(g, call):
    """dx = g; dbias = g summed over the batch (a column-sum kernel: tinygrad's own reduction over the batch was slow)"""
    g, bias = laid_out(Tensor(g)), Tensor(call.src[2])
    return backward_grads((g, column_sums(g.reshape(g.shape[0], -1)).reshape(bias.shape)), call)


@function(grad_fxn=_add_shared_grad, allow_implicit=True)
def _add_shared(x, bias):
    """x (B, ...) + bias (1, ...), the bias shared by the batch (DiffiT's relative-position bias, one per head, laid
    out once: gathered from its table inside the sum it was recomputed for every logit)"""
    return x + bias


def attention(q, k, v, bias=None):
    """q (B, h, Lq, d), k/v (B, h, Lk, d), bias broadcast to (B, h, Lq, Lk) -> (B, h, Lq, d)"""
    B, h, Lq, d = q.shape
    Lk = k.shape[2]
    pad = -Lk % 16 if Lk % 8 else 0
    k, v = (z.pad(((0, 0), (0, 0), (0, pad), (0, 0))) for z in (k, v))
    q, k, v = (z.contiguous().reshape(B * h, z.shape[2], z.shape[3]) for z in (q, k, v))
    logits = bmm_nt(q, k).reshape(B, h, Lq, Lk + pad) * (1.0 / math.sqrt(d))  # (B, h, Lq, Lk + pad)
    if bias is not None and bias.shape[0] == 1 and B > 1 and not pad:
        logits = _add_shared(logits, laid_out(bias))
    elif bias is not None:
        logits = logits + (bias.expand(B, h, Lq, Lk).pad(((0, 0),) * 3 + ((0, pad),)) if pad else bias)
    if pad:
        logits = logits + Tensor.full((Lk,), 0.0, device=logits.device).pad(((0, pad),), value=-1e30)
    # logits and probabilities, and their gradients, materialized once: the softmax is not recomputed inside the
    # P @ V matmul or the gradient reductions of q, k and v
    probs = softmax(logits.contiguous_backward().contiguous()).contiguous().contiguous_backward()
    return bmm(probs.reshape(B * h, Lq, Lk + pad), v).reshape(B, h, Lq, v.shape[2])
