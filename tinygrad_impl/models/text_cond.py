"""Text conditioning in tinygrad: a line-by-line port of numpy_ref/models/text_cond.py (the shapes, the
initialisation and the null condition are shared from numpy_ref)."""
from collections import namedtuple

import numpy as np
from tinygrad import Tensor, dtypes

from numpy_ref.configs import null_condition, text_config
# the shared parameter contract
from numpy_ref.models.text_cond import cross_attention_shapes, init_text, text_shapes  # noqa: F401
from .. import text as T
from ..layers import attention, linear, merge_heads, split, split_heads

# the encoded prompt as the models read it: h (B, Lt, Dt), bias (B, 1, 1, Lt) (0 or MASK_BIAS per key), pooled (B, Dt)
Text = namedtuple("Text", "h bias pooled")

# ----------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------

def pad_ids(y, cfg, device=None):
    """token ids (B, L) (NumPy or Tensor), L <= text_len -> (B, text_len) int Tensor, PAD-padded at the end"""
    y = y if isinstance(y, Tensor) else Tensor(np.asarray(y, np.int32), device=device)
    return y.pad(((0, 0), (0, cfg.text_len - y.shape[1])), value=T.PAD_ID) if y.shape[1] < cfg.text_len else y


def encode(p, y, cfg, batch):
    """y (B, L) token ids, or None for the null condition (the empty prompt) of a batch of `batch` -> Text(h (B, Lt,
    Dt) float32 Tensor, bias (B, 1, 1, Lt), pooled (B, Dt)), Lt = cfg.text_len"""
    device = p["text.tok_embed.weight"].device
    ids = pad_ids(null_condition(cfg, batch) if y is None else y, cfg, device)     # (B, Lt)
    h, mask = T.text_encoder(p, ids, text_config(cfg))                              # (B, Lt, Dt), (B, Lt) bool
    bias = mask.where(0.0, T.MASK_BIAS).cast(dtypes.float32).reshape(batch, 1, 1, cfg.text_len)   # (B, 1, 1, Lt)
    m = mask.cast(h.dtype).unsqueeze(-1)                                            # (B, Lt, 1)
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
