"""AdamW with global-norm clipping and an EMA copy, over training state kept as one flat buffer per part.

state["flat"][part] is a (N,) float32 buffer for each part ("params", "ema", "m", "v"), N the parameter count;
state[part] is {name: view of it}, which the model reads: the views read the buffer, so they show every update.
One buffer a part makes the whole update a few kernels instead of a few per parameter (docs/speed.md). On a CPU
the update is fast.adamw_update, two kernels that read each gradient where the backward left it.
"""
import numpy as np
from tinygrad import Tensor

from . import fast

BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


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
    if fast.applies(p.device):
        return fast.adamw_update(p, m, v, ema, grads, lr, decay, bc1, bc2, decays, weight_decay, clip, BETAS, ADAM_EPS)
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
