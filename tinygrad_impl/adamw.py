"""AdamW with global-norm clipping and an EMA copy, over training state kept as one flat buffer per part.

state["flat"][part] is a (N,) float32 buffer for each part ("params", "ema", "m", "v"), N the parameter count;
state[part] is {name: view of it}, which the model reads: the views read the buffer, so they show every update.
One buffer a part lets the whole update be a few kernels: per parameter it was ~5 (a norm, m, v, the weight, the
EMA), ~570 kernels a step for U-ViT, and on a CPU launching a kernel costs ~50 us of host time (README, Speed).
"""
import os

import numpy as np
from tinygrad import Tensor, UOp
from tinygrad.uop.ops import AxisType, KernelInfo, Ops

from .layers import _on_cpu

BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
WORKERS = min(16, os.cpu_count() or 1)   # work-items of the CPU kernels: each a share of every parameter, in loops
MAX_GRADS = 48                           # gradients a CPU kernel reads


# ----------------------------------------------------------------------------
# The state
# ----------------------------------------------------------------------------

def pack_state(parts, shapes, device=None):
    """{part: {name: array or Tensor}} -> {"flat": {part: (N,) Tensor}, part: {name: view}, ...}, laid out in the
    order of shapes {name: shape} (the model's canonical order: param_shapes)"""
    state = dict(flat={})
    for part, tensors in parts.items():
        flat = np.concatenate([np.asarray(tensors[k].numpy() if isinstance(tensors[k], Tensor) else tensors[k],
                                          dtype=np.float32).reshape(-1) for k in shapes])
        state["flat"][part] = Tensor(flat, device=device).realize()
        state[part] = flat_views(state["flat"][part], shapes)
    return state


def new_state(params, shapes, device=None):
    """The state of a run's first step: params {name: array or Tensor}, the EMA a copy of them, m and v zero"""
    zeros = {k: np.zeros(shape, np.float32) for k, shape in shapes.items()}
    return pack_state(dict(params=params, ema=params, m=zeros, v=zeros), shapes, device)


def flat_views(flat, shapes):
    """flat (N,) -> {name: (shape) view of flat}, in the order of shapes"""
    views, at = {}, 0
    for k, shape in shapes.items():
        n = int(np.prod(shape))
        views[k], at = flat[at:at + n].reshape(shape), at + n
    return views


# ----------------------------------------------------------------------------
# One update
# ----------------------------------------------------------------------------

def adamw_update(state, grads, lr, decay, bc1, bc2, weight_decay=0.0, clip=1.0):
    """One AdamW step of state["flat"] in place (lazy: realize state["flat"] after). grads: one Tensor per parameter,
    in the canonical order; lr, decay (EMA), bc1, bc2 (Adam's bias corrections 1 - beta^t): (1,) Tensors.
    Weight decay is decoupled, on matrices and kernels only (>= 2 dimensions). Returns the gradients' global norm (1,)."""
    p, m, v, ema = (state["flat"][part] for part in ("params", "m", "v", "ema"))
    decays = tuple(len(g.shape) >= 2 and weight_decay != 0 for g in grads)
    if _on_cpu(p.device):
        return _adamw_update_cpu(p, m, v, ema, grads, lr, decay, bc1, bc2, decays, weight_decay, clip)
    # each gradient its own kernel(s) first: fused into the copy, ~100 reductions make one kernel whose name passes
    # 255 characters; copied 16 at a time (Metal binds at most 31 buffers to a kernel)
    flat = [g.contiguous().reshape(-1) for g in grads]
    g = Tensor.cat(*[Tensor.cat(*flat[i:i + 16]).contiguous() for i in range(0, len(flat), 16)])   # (N,)
    grad_norm = g.square().sum().sqrt()
    g = g * (clip / (grad_norm + 1e-6)).minimum(1.0)                             # clip the global norm
    m.assign(BETAS[0] * m + (1 - BETAS[0]) * g)
    v.assign(BETAS[1] * v + (1 - BETAS[1]) * g.square())
    update = (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS)
    if any(decays):
        mask = Tensor(np.concatenate([np.full(int(np.prod(gr.shape)), float(d), np.float32) for gr, d in zip(grads, decays)]),
                      device=p.device)                                            # (N,) 1 where decayed
        update = update + weight_decay * mask * p
    p.assign(p - lr * update)
    ema.assign(decay * ema + (1 - decay) * p)
    return grad_norm


# ----------------------------------------------------------------------------
# On a CPU: two kernels that read every gradient where the backward left it, each parameter a loop
# ----------------------------------------------------------------------------

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


def _adamw_kernel(offset, decays, weight_decay, clip):
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
        (b1, b2) = BETAS
        for g, wd in zip(G, decays):
            r, i, valid = share(g.shape[0])
            grad = _at(g, i, valid) * scale
            p, m, v, e = (_at(B, i, valid, at) for B in (P, M, V, E))
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            update = (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS)
            p = p - lr * (update + weight_decay * p if wd else update)
            e = decay * e + (1 - decay) * p
            stores = UOp.group(*(_at(B, i, valid, at).store(x) for B, x in ((M, m), (V, v), (P, p), (E, e))))
            loops.append(stores if r is None else stores.end(r))
            at += g.shape[0]
        return UOp.group(*loops).end(w).sink(arg=KernelInfo(name=f"adamw_{len(G)}", opts_to_apply=()))
    return kernel


def _adamw_update_cpu(p, m, v, ema, grads, lr, decay, bc1, bc2, decays, weight_decay, clip):
    grads = [g.contiguous().reshape(-1) for g in grads]
    chunks = range(0, len(grads), MAX_GRADS)   # tinygrad's CPU backend passes at most 63 arguments to a kernel
    sums = Tensor.empty(len(chunks), WORKERS, device=p.device)
    for c, at in enumerate(chunks):   # each kernel writes its row of sums (the same buffer, one after the other)
        sums = sums.custom_kernel(*grads[at:at + MAX_GRADS], fxn=_sum_squares_kernel(c))[0]
    offsets = np.cumsum([0] + [g.shape[0] for g in grads])
    state = (p, m, v, ema)
    for at in chunks:
        state = state[0].custom_kernel(*state[1:], sums, lr, decay, bc1, bc2, *grads[at:at + MAX_GRADS], fxn=_adamw_kernel(
            int(offsets[at]), decays[at:at + MAX_GRADS], weight_decay, clip))[:4]
    for t, out in zip((p, m, v, ema), state):   # the kernels wrote their buffers: the tensors are those buffers after
        t.uop = out.uop
    return sums.sum().sqrt()
