"""AdamW with global-norm clipping and an EMA copy on a CPU: two kernels that read every gradient where the backward
left it. The first sums squares (each work-item a share of every gradient), the second updates the flat params,
moments and EMA in place, each parameter a loop. The plain update in tinygrad_impl/adamw.py makes a flat copy of the
gradients and a few elementwise kernels: the same arithmetic.
"""
import os

import numpy as np
from tinygrad import Tensor, UOp
from tinygrad.uop.ops import AxisType, KernelInfo, Ops

WORKERS = min(16, os.cpu_count() or 1)   # work-items of the kernels: each a share of every parameter, in loops
MAX_GRADS = 48                           # gradients a kernel reads (tinygrad's CPU backend passes at most 63 arguments)


class _Shares:
    """Work-item w's part of a range of n, as a loop of ceil(n / WORKERS): (range or None, index, valid or None).
    A loop of one is no range at all (tinygrad folds length-1 ranges away, and a reduce over one is an error)."""
    def __init__(self, w, axis_type):
        self.w, self.axis_type, self.axis = w, axis_type, 1

    def __call__(self, n):
        per = -(-n // WORKERS)
        r = UOp.range(per, self.axis, self.axis_type) if per > 1 else None
        self.axis += 1
        i = self.w * per + (0 if r is None else r)
        return r, i, (i < n if n % WORKERS else None)


def _at(buf, i, valid, offset=0):
    return buf[i + offset if valid is None else (i + offset).valid(valid)]


def _sum_squares_kernel(chunk):
    """S (chunks, WORKERS)[chunk, w] = work-item w's sum of squares over its share of every gradient G_k (n_k,)"""
    def kernel(S, *G):
        w = UOp.range(WORKERS, 0)
        share, total = _Shares(w, AxisType.REDUCE), 0.0
        for g in G:
            r, i, valid = share(g.shape[0])
            x = _at(g, i, valid)
            x = x * x if valid is None else valid.where(x * x, 0.0)
            total = total + (x if r is None else x.reduce(r, arg=Ops.ADD))
        return S[chunk, w].store(total).end(w).sink(arg=KernelInfo(name=f"grad_sum_squares_{len(G)}", opts_to_apply=()))
    return kernel


def _adamw_kernel(offset, decays, weight_decay, clip, betas, eps):
    """The update as one kernel: P, M, V, E (N,) in place from the gradients G_k (n_k,), which lie from `offset` on
    in the canonical order; S (chunks, WORKERS) the partial sums of squares (the clip); LR, DECAY (the EMA's), BC1,
    BC2 (1,)"""
    def kernel(P, M, V, E, S, LR, DECAY, BC1, BC2, *G):
        w = UOp.range(WORKERS, 0)
        share, loops, at = _Shares(w, AxisType.LOOP), [], offset
        parts = [S[c, j] for c in range(S.shape[0]) for j in range(WORKERS)]
        norm = sum(parts[1:], parts[0]).sqrt()
        scale = (clip / (norm + 1e-6)).minimum(1.0)                              # clip the global norm
        lr, decay, bc1, bc2 = LR[0], DECAY[0], BC1[0], BC2[0]
        (b1, b2) = betas
        for g, wd in zip(G, decays):
            r, i, valid = share(g.shape[0])
            grad = _at(g, i, valid) * scale
            p, m, v, e = (_at(B, i, valid, at) for B in (P, M, V, E))
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            update = (m / bc1) / ((v / bc2).sqrt() + eps)
            p = p - lr * (update + weight_decay * p if wd else update)
            e = decay * e + (1 - decay) * p
            stores = UOp.group(*(_at(B, i, valid, at).store(x) for B, x in ((M, m), (V, v), (P, p), (E, e))))
            loops.append(stores if r is None else stores.end(r))
            at += g.shape[0]
        return UOp.group(*loops).end(w).sink(arg=KernelInfo(name=f"adamw_{len(G)}", opts_to_apply=()))
    return kernel


def adamw_update(p, m, v, ema, grads, lr, decay, bc1, bc2, decays, weight_decay, clip, betas, eps):
    """One AdamW step of the flat buffers p, m, v, ema (N,) from grads (one Tensor per parameter, in the buffers'
    order), clipped to global norm `clip`; decays: per gradient, whether weight decay applies. Returns the norm (1,)"""
    grads = [g.contiguous().reshape(-1) for g in grads]
    chunks = range(0, len(grads), MAX_GRADS)
    sums = Tensor.empty(len(chunks), WORKERS, device=p.device)
    for c, at in enumerate(chunks):   # each kernel writes its row of sums (the same buffer, one after the other)
        sums = sums.custom_kernel(*grads[at:at + MAX_GRADS], fxn=_sum_squares_kernel(c))[0]
    offsets = np.cumsum([0] + [g.shape[0] for g in grads])
    state = (p, m, v, ema)
    for at in chunks:
        state = state[0].custom_kernel(*state[1:], sums, lr, decay, bc1, bc2, *grads[at:at + MAX_GRADS], fxn=_adamw_kernel(
            int(offsets[at]), decays[at:at + MAX_GRADS], weight_decay, clip, betas, eps))[:4]
    for t, out in zip((p, m, v, ema), state):   # the kernels wrote their buffers: the tensors are those buffers after
        t.uop = out.uop
    return sums.sum().sqrt()
