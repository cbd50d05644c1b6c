"""Text conditioning, the part every architecture shares (DESIGN.md 3.1 item 5); not an architecture itself.

A text-conditioned model (cfg.text_vocab > 0) gets y = token ids (B, L) of its prompts, L <= cfg.text_len, PAD = 0,
and runs the text encoder (numpy_ref/text.py; its parameters text.* live in the model's dict) on them itself:

    txt = encode(p, y, cfg, B)     # Text(h (B, Lt, Dt), bias (B, 1, 1, Lt), pooled (B, Dt)); Lt = text_len, Dt = text_width
    c = c + pooled_embedding(p, txt)                          # (B, cond_dim): in place of the class embedding
    x = x + cross_attention(p, "blocks.0.cross", x, txt, heads)   # queries x (B, L, D), keys/values the text

y is PAD-padded to text_len first, so a prompt gives the same output whatever padding it came with, and the empty
prompt (all PAD, configs.null_condition; also what y=None means) is one fixed null condition. Keys at PAD positions
are masked by an additive bias (0 or text.MASK_BIAS); the empty prompt attends to all of its positions (text.key_mask).
The pooled text is the mean of the encoder's output over the real tokens.
"""
from collections import namedtuple

import numpy as np

from .. import text as T
from ..configs import null_condition, text_config
from ..layers import attention, linear, merge_heads, split, split_heads

# the encoded prompt as the models read it: h (B, Lt, Dt), bias (B, 1, 1, Lt) (0 or MASK_BIAS per key), pooled (B, Dt)
Text = namedtuple("Text", "h bias pooled")

# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def text_shapes(cfg, cond_dim=0):
    """name -> shape: the text encoder's (text.*), and with cond_dim > 0 text_pool, Linear(Dt -> cond_dim) of the
    pooled text that a model adds to its conditioning vector."""
    shapes = T.param_shapes(text_config(cfg))
    if cond_dim:
        shapes.update({"text_pool.weight": (cond_dim, cfg.text_width), "text_pool.bias": (cond_dim,)})
    return shapes


def cross_attention_shapes(prefix, D, cfg, norm=True):
    """name -> shape of one cross-attention from width D to the text: [{prefix}.norm (D,)], q (D, D), kv (2D, Dt)
    (keys and values read the text encoder's output, projected to D), proj (D, D); each with a bias."""
    Dt = cfg.text_width
    shapes = {f"{prefix}.norm.weight": (D,), f"{prefix}.norm.bias": (D,)} if norm else {}
    shapes.update({f"{prefix}.q.weight": (D, D), f"{prefix}.q.bias": (D,),
                   f"{prefix}.kv.weight": (2 * D, Dt), f"{prefix}.kv.bias": (2 * D,),
                   f"{prefix}.proj.weight": (D, D), f"{prefix}.proj.bias": (D,)})
    return shapes


def init_text(params, cfg, seed):
    """params (drawn by the model's own rules) with the text.* entries replaced by the text encoder's initialisation,
    text.init_params(seed): N(0, 0.02) embeddings, Xavier-uniform linears, zero biases, unit norms. No text: as is."""
    if cfg.text_vocab:
        params.update(T.init_params(text_config(cfg), seed))
    return params


# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def pad_ids(y, cfg):
    """token ids (B, L), L <= text_len -> (B, text_len) int64, PAD-padded at the end"""
    y = np.asarray(y, np.int64)
    return np.pad(y, ((0, 0), (0, cfg.text_len - y.shape[1])), constant_values=T.PAD_ID)


def encode(p, y, cfg, batch):
    """y (B, L) token ids, or None for the null condition (the empty prompt) of a batch of `batch` -> Text(h (B, Lt,
    Dt) in the parameters' dtype, bias (B, 1, 1, Lt), pooled (B, Dt)), Lt = cfg.text_len"""
    ids = null_condition(cfg, batch) if y is None else pad_ids(y, cfg)             # (B, Lt)
    h, mask = T.text_encoder(p, ids, text_config(cfg))                              # (B, Lt, Dt), (B, Lt) bool
    bias = np.where(mask, 0.0, T.MASK_BIAS).astype(h.dtype)[:, None, None, :]      # (B, 1, 1, Lt)
    m = mask.astype(h.dtype)[..., None]                                             # (B, Lt, 1)
    return Text(h, bias, (h * m).sum(1) / m.sum(1))


def pooled_embedding(p, txt):
    """Linear(Dt -> cond_dim) of the pooled text: txt.pooled (B, Dt) -> (B, cond_dim)"""
    return linear(txt.pooled, p["text_pool.weight"], p["text_pool.bias"])


def cross_attention(p, prefix, x, txt, heads):
    """Multi-head cross-attention, queries from x (B, L, D), keys and values from the text txt.h (B, Lt, Dt), PAD
    keys masked by txt.bias -> (B, L, D). Parameters: cross_attention_shapes (the norm is the caller's)."""
    q = linear(x, p[f"{prefix}.q.weight"], p[f"{prefix}.q.bias"])                  # (B, L, D)
    k, v = split(linear(txt.h, p[f"{prefix}.kv.weight"], p[f"{prefix}.kv.bias"]), 2)   # 2 x (B, Lt, D)
    o = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), txt.bias)   # (B, h, L, d)
    return linear(merge_heads(o), p[f"{prefix}.proj.weight"], p[f"{prefix}.proj.bias"])
